"""GPU bench of the BraTS CGGM bundle (``cggm-seg benchmark gpu``): what training and inference cost.

On BraTS-sized synthetic cases (240x240x155, four sequences, written as BraTS 2021 NIfTI folders
by ``data_prep``'s phantom generator) it measures

* ``loader``: cases/s out of the bundle's train loader for each ``data_cache`` setting (none, memory, disk;
  :mod:`cggm_seg.benchmark.data_bench`, which also measures each path's cost per case on one core);
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
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

from cggm_seg.benchmark.data_bench import loader_throughput, synthesize
from cggm_seg.benchmark.run import bundle_parser
from cggm_seg.benchmark.timing import WARMUP_STEPS, StepTimer, cpu_model, synchronize
from cggm_seg.bundle import bundle_dir, config_label

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = bundle_dir("brats_cggm") / "configs" / "train.json"
LAYOUT = "brats2021"
# Targets: CGGM may cost at most 25% per step; a BraTS volume infers in under 1 s (H100, AMP).
TARGETS = {"step_time_ratio_max": 1.25, "inference_s_per_case_max": 1.0}
MIB = 2**20
#: validation cases as ``evaluate.json`` reads them: whole volumes from the NIfTI files, not the prepared
#: cases cut to the brain that validation during training reads
WHOLE_VOLUMES = {
    "validate#prepare": {"_target_": "Compose", "transforms": "@train#prepare_transforms"},
    "validate#dataset#data_cache": "none",
}


# ----------------------------------------------------------------------------------------- bundle
def common_overrides(args: argparse.Namespace, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The bench's sizes and data in place of the bundle's datalist; everything else stays the config's."""
    overrides = {
        "device": args.device,
        "roi_size": [args.roi] * 3,
        "batch_size": args.batch,
        "label_convention": LAYOUT,
        "split": [entries, entries],
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
    parser = bundle_parser([args.config], {**overrides, **WHOLE_VOLUMES})
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
        loader, batch = loader_throughput(args.config, overrides, Path(tmp) / "cache", args.loader_epochs)
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
            "config": config_label(args.config),
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
