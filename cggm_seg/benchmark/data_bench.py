"""What each ``data_cache`` setting of the BraTS bundle costs per case (``cggm-seg benchmark data``).

On BraTS-sized synthetic cases (240x240x155, four sequences and a label as BraTS 2021 ``.nii.gz``
folders) and with the bundle's own ``train#prepare`` and ``train#augment`` transforms it measures

* seconds of one core per training case for each data path: ``none`` prepares and augments every
  draw, ``memory`` only augments, ``disk`` reads a prepared case (memory-mapped, the file just
  written, so from the page cache) and augments;
* the bytes one prepared case takes in memory and in the disk cache;
* cases per second out of the bundle's ``train#dataloader`` with its workers, for each data path,
  and the training steps per second that rate can feed (cases/s / ``batch_size``).

The phantom is drawn in a cube of :data:`BRAIN_EDGE` voxels and centred in the volume, so its brain
spans about 141 x 162 x 130 voxels, an adult brain's extent at 1 mm, and the rest is background, as in
BraTS; the bounding-box crop and the cache size depend on that extent.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cggm_seg.benchmark.run import bundle_parser
from cggm_seg.benchmark.timing import cpu_model
from cggm_seg.brats_labels import SEQUENCES
from cggm_seg.bundle import config_label
from cggm_seg.data_cache import DATA_CACHES, PreparedCaseDataset
from data_prep.brats_datalist import FOLDER_LAYOUTS, LABEL_KEY
from data_prep.synth_brats import brats_affine, case_id, synth_case, write_case

logger = logging.getLogger(__name__)

LAYOUT = "brats2021"
#: edge of the cube the phantom is drawn in (its brain's semi-axes are 0.80, 0.92, 0.74 of half of it)
BRAIN_EDGE = 176
#: the random part of a training case in at most this many seconds of one core (4 workers: 40 cases/s),
#: and a prepared case in at most this many MiB (1,251 BraTS 2021 cases in 50 GiB)
TARGETS = {"augment_s_per_case_max": 0.1, "stored_case_mib_max": 40.0}
MIB = 2**20


# ------------------------------------------------------------------------------------------- data
def _fit(volume: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``volume`` centre-cropped or zero-padded to ``shape``, axis by axis."""
    out = np.zeros(shape, dtype=volume.dtype)
    src, dst = [], []
    for have, want in zip(volume.shape, shape, strict=True):
        offset = abs(have - want) // 2
        n = min(have, want)
        src.append(slice(offset, offset + n) if have > want else slice(0, n))
        dst.append(slice(offset, offset + n) if want > have else slice(0, n))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def _write_synthetic_case(out: Path, index: int, shape: tuple[int, int, int], seed: int) -> dict[str, Any]:
    """One phantom in a cube of ``min(BRAIN_EDGE, largest edge)``, fitted to ``shape``; its datalist entry."""
    images, label = synth_case(np.random.default_rng([seed, index]), min(BRAIN_EDGE, max(shape)))
    images = {name: _fit(image, shape) for name, image in images.items()}
    folder = write_case(out, LAYOUT, index, images, _fit(label, shape), brats_affine(max(shape)))
    name, layout = case_id(LAYOUT, index), FOLDER_LAYOUTS[LAYOUT]
    return {
        "image": [str(folder / layout.file_name(name, s)) for s in SEQUENCES],
        "label": str(folder / layout.file_name(name, LABEL_KEY)),
        "case_id": name,
    }


def synthesize(out: Path, cases: int, shape: tuple[int, int, int], seed: int) -> list[dict[str, Any]]:
    """Write ``cases`` phantoms in parallel (a full-size phantom takes seconds of one core)."""
    out.mkdir(parents=True)
    with ProcessPoolExecutor(max_workers=min(cases, os.cpu_count() or 1)) as pool:
        futures = [pool.submit(_write_synthetic_case, out, i, shape, seed) for i in range(cases)]
        return [f.result() for f in futures]


# -------------------------------------------------------------------------------- one core, per case
def _seconds(call: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def _tensor_bytes(item: dict[str, Any]) -> int:
    return sum(v.numel() * v.element_size() for v in item.values() if isinstance(v, torch.Tensor))


def one_core_costs(
    config: Path, overrides: dict[str, Any], entries: list[dict[str, Any]], cache_dir: Path, repeats: int
) -> dict[str, Any]:
    """Seconds of one core per case for each data path, and the bytes a prepared case takes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        parser = bundle_parser([config], overrides)
        prepare = parser.get_parsed_content("train#prepare")
        augment = parser.get_parsed_content("train#augment")
        cache = PreparedCaseDataset(entries, prepare, cache_dir)
        prepared_s, augment_s, read_s, memory_bytes, disk_bytes, shapes = [], [], [], [], [], []
        for index, entry in enumerate(entries):
            seconds, prepared = _seconds(lambda entry=entry: prepare(dict(entry)))
            prepared_s.append(seconds)
            memory_bytes.append(_tensor_bytes(prepared))
            shapes.append(list(prepared["image"].shape[1:]))
            cache[index]  # writes the case
            disk_bytes.append(cache.cache_file(entry).stat().st_size)
            # read back memory-mapped: the crop's page faults are part of the augmentation's time
            read_s.append(_seconds(lambda index=index: augment(dict(cache[index])))[0])
            for _ in range(repeats):
                augment_s.append(_seconds(lambda prepared=prepared: augment(dict(prepared)))[0])
    finally:
        torch.set_num_threads(threads)
    augment_median = statistics.median(augment_s)
    return {
        "prepared_shape": shapes,
        "seconds_of_one_core_per_case": {
            "none": statistics.median(prepared_s) + augment_median,
            "memory": augment_median,
            "disk": statistics.median(read_s),
        },
        "prepare_s": prepared_s,
        "augment_s_median": augment_median,
        "disk_read_and_augment_s": read_s,
        "bytes_per_case": {"memory": statistics.median(memory_bytes), "disk": statistics.median(disk_bytes)},
    }


# ------------------------------------------------------------------------------------------ loader
def _timed_epochs(loader: Iterable, epochs: int) -> tuple[float, int, dict]:
    """Seconds for ``epochs`` full passes (worker start-up included, as in training), batches, the first."""
    start, count, first = time.perf_counter(), 0, None
    for _ in range(epochs):
        for batch in loader:
            first = batch if first is None else first
            count += 1
    return time.perf_counter() - start, count, first


def loader_throughput(
    config: Path, overrides: dict[str, Any], cache_dir: Path, epochs: int
) -> tuple[dict[str, Any], dict]:
    """Cases/s out of the bundle's ``train#dataloader`` for each data path, and one training batch.

    ``memory`` fills its cache when the loader is built and ``disk`` during its first pass; that one-off
    cost is ``cache_fill_s``, and the timed passes follow it.
    """
    results: dict[str, Any] = {}
    for setting in DATA_CACHES:
        parser = bundle_parser([config], {**overrides, "data_cache": setting, "cache_dir": str(cache_dir)})
        fill, loader = _seconds(lambda parser=parser: parser.get_parsed_content("train#dataloader"))
        if setting == "disk":
            fill = _timed_epochs(loader, 1)[0]
        seconds, batches, batch = _timed_epochs(loader, epochs)
        cases_per_s = batches * loader.batch_size / seconds
        results[setting] = {
            "cases_per_s": cases_per_s,
            "steps_per_s_fed": cases_per_s / loader.batch_size,
            "cache_fill_s": None if setting == "none" else fill,
        }
        logger.info("loader %s: %.2f cases/s", setting, cases_per_s)
    results["workers"] = loader.num_workers
    results["batch_size"] = loader.batch_size
    return results, batch


# -------------------------------------------------------------------------------------------- main
def data_overrides(args: argparse.Namespace, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The synthetic cases in place of the bundle's datalist, the CPU, and the user's ``--set``."""
    overrides = {
        "device": "cpu",
        "amp": False,
        "roi_size": [args.roi] * 3,
        "batch_size": args.batch,
        "label_convention": LAYOUT,
        "split": [entries, entries],
        "epochs": 1,
    }
    if args.workers is not None:
        overrides["num_workers"] = args.workers
    return {**overrides, **dict(args.set)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="data_bench_") as tmp:
        entries = synthesize(Path(tmp) / "brats", args.cases, args.size, args.seed)
        overrides = data_overrides(args, entries)
        torch.manual_seed(args.seed)
        costs = one_core_costs(args.config, overrides, entries, Path(tmp) / "one_core", args.repeats)
        loader = loader_throughput(args.config, overrides, Path(tmp) / "loader", args.loader_epochs)[0]
    augment = costs["augment_s_median"]
    stored_mib = costs["bytes_per_case"]["disk"] / MIB
    return {
        "environment": {"cpu": cpu_model(), "nproc": os.cpu_count(), "torch": torch.__version__},
        "settings": {
            "size": list(args.size),
            "roi": args.roi,
            "batch": args.batch,
            "cases": args.cases,
            "repeats": args.repeats,
            "loader_epochs": args.loader_epochs,
            "brain_edge": min(BRAIN_EDGE, max(args.size)),
            "config": config_label(args.config),
            "set": dict(args.set),
        },
        "float32_case_mib": (len(SEQUENCES) + 3) * 4 * int(np.prod(args.size)) / MIB,
        **costs,
        "loader": loader,
        "targets": {
            **TARGETS,
            "augment_met": augment <= TARGETS["augment_s_per_case_max"],
            "stored_case_met": stored_mib <= TARGETS["stored_case_mib_max"],
        },
    }
