"""The full-size CPU path, run for real (``cggm-seg benchmark cost --cpu``): what a CPU-only user waits for.

One training step of the bundle's own trainer (random batch of ``roi``, fp32, the balancing method of
the config) and one random ``volume``-sized case through the bundle's sliding-window inferer, each
timed once and with the rise of the process's peak resident set over the level before it
(:class:`cggm_seg.benchmark.timing.PeakMemory`). A first step includes the one-time set-up of the
CPU kernels, as a user's first step does. The 1-minute load average before and after is kept: on a
shared machine it says how much of the CPU the run had.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cggm_seg.benchmark.cost import BundleStep, bundle_on_cpu
from cggm_seg.benchmark.timing import PeakMemory, cpu_model


def _timed(work: Any) -> dict[str, float]:
    with PeakMemory("cpu") as memory:
        start = time.perf_counter()
        work()
        seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 1), "peak_rss_rise_mib": round(memory.mib)}


def cpu_path(
    config: Path, overrides: dict[str, Any], roi: Sequence[int], batch: int, volume: Sequence[int]
) -> dict[str, Any]:
    """Seconds and peak-RSS rise of one training step and of one case's inference, on this CPU."""
    load_before = os.getloadavg()[0]
    step = BundleStep(config, overrides, roi, batch, 1, shapes=None)
    train = _timed(step.run)
    del step
    gc.collect()
    parser = bundle_on_cpu(config, {**overrides, "roi_size": list(roi)})
    network, inferer = parser.get_parsed_content("network").eval(), parser.get_parsed_content("inferer")
    case = torch.randn(1, len(parser.get_parsed_content("modalities")), *volume)

    def infer() -> None:
        with torch.no_grad():
            inferer(case, network)

    return {
        "train_step": train,
        "inference": _timed(infer),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
        "cpu": cpu_model(),
        "nproc": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }


def summary(result: dict[str, Any]) -> str:
    """One line per measurement, for the console."""
    lines = [
        f"on {result['cpu']} ({result['threads']} threads, load {result['load_average_before']:.1f} before):"
    ]
    for name in ("train_step", "inference"):
        seconds, rise = result[name]["seconds"], result[name]["peak_rss_rise_mib"]
        lines.append(f"  {name.replace('_', ' ')}: {seconds:.0f} s, peak RSS +{rise / 1024:.1f} GiB")
    return "\n".join(lines)
