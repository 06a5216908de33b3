"""GPU bench of the BraTS CGGM bundle (``cggm-seg benchmark gpu``): what training and inference cost.

On BraTS-sized synthetic cases (240x240x155, four sequences, written as BraTS 2021 NIfTI folders
by ``data_prep``'s phantom generator) it measures

* ``loader``: cases/s through the bundle's train transforms and loader, without caching, with
  MONAI ``CacheDataset`` (memory) and with ``PersistentDataset`` (disk);
* ``train``: time of a training step of the bundle's own ``SupervisedTrainer`` (AMP, crops of
  ``roi``^3, ``batch`` cases) with the bundle's modulation handler (CGGM) and without it
  (joint training, same network), and the peak GPU memory of each;
* ``inference``: full-volume sliding-window inference latency per case with the bundle's inferer.

Network, loss, optimizer, transforms, datasets, loader, inferer and trainer all come from the
bundle config (``train.json``), so the bench measures what ``python -m monai.bundle run`` runs.
It prints one JSON document (see docs/PERFORMANCE.md) and writes it to ``--out``. On a CPU at
tiny sizes it checks the bench itself, e.g. ``--device cpu --size 32,32,24 --roi 16 --steps 3
--cases 2``.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser

from cggm_seg.benchmark.run import bundle_parser
from cggm_seg.benchmark.timing import WARMUP_STEPS, StepTimer, cpu_model, synchronize
from cggm_seg.brats_labels import SEQUENCES
from cggm_seg.bundle import bundle_dir
from data_prep.brats_datalist import FOLDER_LAYOUTS, LABEL_KEY
from data_prep.synth_brats import brats_affine, case_id, synth_case, write_case

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = bundle_dir("brats_cggm") / "configs" / "train.json"
LAYOUT = "brats2021"
# Targets: CGGM may cost at most 25% per step; a BraTS volume infers in under 1 s (H100, AMP).
TARGETS = {"step_time_ratio_max": 1.25, "inference_s_per_case_max": 1.0}
MIB = 2**20


# ------------------------------------------------------------------------------------------- data
def _write_synthetic_case(out: Path, index: int, shape: tuple[int, int, int], seed: int) -> dict[str, Any]:
    """One phantom drawn as a cube of the largest edge, centre-cropped to ``shape``; its datalist entry."""
    edge = max(shape)
    images, label = synth_case(np.random.default_rng([seed, index]), edge)
    crop = tuple(slice((edge - s) // 2, (edge - s) // 2 + s) for s in shape)
    images = {name: np.ascontiguousarray(image[crop]) for name, image in images.items()}
    folder = write_case(out, LAYOUT, index, images, np.ascontiguousarray(label[crop]), brats_affine(edge))
    name, layout = case_id(LAYOUT, index), FOLDER_LAYOUTS[LAYOUT]
    return {
        "image": [str(folder / layout.file_name(name, s)) for s in SEQUENCES],
        "label": str(folder / layout.file_name(name, LABEL_KEY)),
        "case_id": name,
    }


def synthesize(out: Path, cases: int, shape: tuple[int, int, int], seed: int) -> list[dict[str, Any]]:
    """Write ``cases`` phantoms in parallel (a 240^3 phantom takes seconds of one core)."""
    out.mkdir(parents=True)
    with ProcessPoolExecutor(max_workers=min(cases, os.cpu_count() or 1)) as pool:
        futures = [pool.submit(_write_synthetic_case, out, i, shape, seed) for i in range(cases)]
        return [f.result() for f in futures]


# ----------------------------------------------------------------------------------------- bundle
def common_overrides(args: argparse.Namespace, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The bench's sizes and data in place of the bundle's datalist; everything else stays the config's."""
    overrides = {
        "device": args.device,
        "roi_size": [args.roi] * 3,
        "batch_size": args.batch,
        "label_convention": LAYOUT,
        "split": [entries, entries],
        "cache_rate": 0.0,
        "epochs": 1,
    }
    if args.workers is not None:
        overrides["num_workers"] = args.workers
    if args.device == "cpu":
        overrides["amp"] = False  # MONAI's AMP is CUDA autocast
    return {**overrides, **dict(args.set)}


def configure_cudnn(parser: ConfigParser, device: str) -> bool:
    """Apply the config's ``cudnn_benchmark`` (default: on for CUDA); deterministic kernels when off."""
    benchmark = bool(parser.get_parsed_content("cudnn_benchmark", default=device == "cuda"))
    torch.backends.cudnn.benchmark = benchmark
    torch.backends.cudnn.deterministic = not benchmark
    return benchmark


def release(device: str) -> None:
    """Free what the last measurement held, so each peak-memory reading starts clean."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / MIB if device == "cuda" else None


# ----------------------------------------------------------------------------------------- loader
def _timed_epochs(loader: Iterable, epochs: int) -> tuple[float, int, dict]:
    """Seconds for ``epochs`` full passes (worker start-up included, as in training), batches, the first."""
    start, count, first = time.perf_counter(), 0, None
    for _ in range(epochs):
        for batch in loader:
            first = batch if first is None else first
            count += 1
    return time.perf_counter() - start, count, first


def loader_throughput(
    args: argparse.Namespace, overrides: dict[str, Any], cache_dir: Path
) -> tuple[dict[str, Any], dict]:
    """Cases/s of the bundle's train loader per caching variant, and one training batch."""
    variants = {
        "none": {},
        "memory": {"cache_rate": 1.0},
        "disk": {
            "train#dataset": {
                "_target_": "PersistentDataset",
                "data": "$@split[0]",
                "transform": "@train#preprocessing",
                "cache_dir": str(cache_dir),
            }
        },
    }
    results: dict[str, Any] = {}
    for name, extra in variants.items():
        parser = bundle_parser([args.config], {**overrides, **extra})
        start = time.perf_counter()
        loader = parser.get_parsed_content("train#dataloader")  # CacheDataset fills its cache here
        fill = time.perf_counter() - start
        if name == "disk":  # PersistentDataset writes its cache during the first pass
            fill = _timed_epochs(loader, 1)[0]
        seconds, batches, batch = _timed_epochs(loader, args.loader_epochs)
        results[name] = {
            "cases_per_s": batches * loader.batch_size / seconds,
            "cache_fill_s": None if name == "none" else fill,
        }
        logger.info("loader %s: %.2f cases/s", name, results[name]["cases_per_s"])
    results["workers"] = loader.num_workers
    return results, batch


# ------------------------------------------------------------------------------------------ train
def time_training(
    args: argparse.Namespace, overrides: dict[str, Any], batch: dict, modulation: str
) -> dict[str, Any]:
    """Median step time and peak memory of the bundle's trainer with ``modulation`` ("none" or "cggm").

    One batch, already on the device, is fed again and again: the step time leaves the loader out
    and the peak memory holds one batch, as in training.
    """
    feed = [batch] * (WARMUP_STEPS + args.steps)
    # no validation, checkpoints or logs in the loop; the modulation settings stay the config's
    extra = {"train#dataloader": feed, "train_handlers": [], "modulation": modulation}
    parser = bundle_parser([args.config], {**overrides, **extra})
    trainer = parser.get_parsed_content("trainer")
    timer = StepTimer(args.device)
    timer.attach(trainer)
    release(args.device)
    trainer.run()
    step = statistics.median(timer.steady)
    result = {
        "modulation": modulation,
        "step_time_s": step,
        "iterations_per_s": 1.0 / step,
        "peak_memory_mib": peak_memory_mib(args.device),
        "amp": bool(trainer.amp),
        "amp_dtype": str(trainer.amp_kwargs.get("dtype", torch.float16)) if trainer.amp else None,
    }
    logger.info("train %s: %.3f s/step", result["modulation"], step)
    return result


# -------------------------------------------------------------------------------------- inference
def time_inference(args: argparse.Namespace, overrides: dict[str, Any]) -> dict[str, Any]:
    """Per-case latency of the bundle's sliding-window inferer on whole volumes already on the device.

    Mirrors the bundle's validation evaluator: ``no_grad`` and, with AMP, CUDA autocast with its
    ``amp_kwargs``. One untimed warm-up case lets cuDNN pick its kernels. File reading and writing
    are not included.
    """
    parser = bundle_parser([args.config], overrides)
    amp = bool(parser.get_parsed_content("amp"))
    amp_kwargs = parser.get_parsed_content("validate#evaluator#amp_kwargs", default={}) if amp else {}
    network = parser.get_parsed_content("network").eval()
    inferer = parser.get_parsed_content("inferer")
    volumes = [batch["image"].to(args.device) for batch in parser.get_parsed_content("validate#dataloader")]
    seconds = []
    with torch.no_grad(), torch.autocast(args.device, enabled=amp, **amp_kwargs):
        for volume in volumes[:1] + volumes:
            synchronize(args.device)
            start = time.perf_counter()
            inferer(volume, network)
            synchronize(args.device)
            seconds.append(time.perf_counter() - start)
    result = {
        "latency_s_median": statistics.median(seconds[1:]),
        "latency_s": seconds[1:],
        "volume_shape": list(volumes[0].shape[2:]),
        "amp": amp,
        "amp_dtype": str(amp_kwargs.get("dtype", torch.float16)) if amp else None,
    }
    logger.info("inference: %.3f s/case", result["latency_s_median"])
    return result


# ------------------------------------------------------------------------------------------- main
def environment(args: argparse.Namespace, cudnn_benchmark: bool) -> dict[str, Any]:
    """What the numbers were measured on, so a reader can compare like with like."""
    env = {
        "device": args.device,
        "cpu": cpu_model(),
        "nproc": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cudnn_benchmark": cudnn_benchmark,
    }
    if args.device == "cuda":
        env.update(
            gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version()
        )
    return env


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gpu_bench_") as tmp:
        start = time.perf_counter()
        entries = synthesize(Path(tmp) / "brats", args.cases, args.size, args.seed)
        synthesis = time.perf_counter() - start
        logger.info("synthesised %d cases of %s in %.1f s", args.cases, args.size, synthesis)
        overrides = common_overrides(args, entries)
        cudnn_benchmark = configure_cudnn(bundle_parser([args.config], overrides), args.device)
        torch.manual_seed(args.seed)
        loader, batch = loader_throughput(args, overrides, Path(tmp) / "persistent")
        batch = {k: v.to(args.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        joint = time_training(args, overrides, batch, "none")
        cggm = time_training(args, overrides, batch, "cggm")
        del batch
        release(args.device)
        inference = time_inference(args, overrides)
    ratio = cggm["step_time_s"] / joint["step_time_s"]
    return {
        "environment": environment(args, cudnn_benchmark),
        "settings": {
            "size": list(args.size),
            "roi": args.roi,
            "batch": args.batch,
            "steps": args.steps,
            "warmup": WARMUP_STEPS,
            "cases": args.cases,
            "loader_epochs": args.loader_epochs,
            "config": str(args.config),
            "set": dict(args.set),
        },
        "synthesis_s": synthesis,
        "loader": loader,
        "train": {"joint": joint, "cggm": cggm, "step_time_ratio": ratio},
        "inference": inference,
        "targets": {
            **TARGETS,
            "step_time_ratio_met": ratio <= TARGETS["step_time_ratio_max"],
            "inference_met": inference["latency_s_median"] <= TARGETS["inference_s_per_case_max"],
        },
    }
