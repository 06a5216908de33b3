"""The one way every benchmark times a training step, drops its warm-up and measures peak memory.

All three benchmarks (``cggm-seg benchmark balance|overhead|gpu``) use :class:`StepTimer` and
:func:`steady_state`, so their step times mean the same thing: wall time from Ignite's
ITERATION_STARTED to ITERATION_COMPLETED, device-synchronised, of every iteration after the first
:data:`WARMUP_STEPS`. Handlers attached to the trainer before the timer (the bundle's own, the
balancing method's included) are counted; handlers attached after it (a ``HeadMonitor`` that only
records curves) are not.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import monai
import torch
from ignite.engine import Engine, Events

from cggm_seg.errors import UserError

#: first iterations of a run left out of every step-time statistic (lazy initialisation, allocator
#: growth, cuDNN's algorithm search)
WARMUP_STEPS = 2
#: cost-only runs of each method per task when a benchmark's scored runs shared the machine
COST_REPEATS = 3
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work, so a wall-clock interval covers it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """Wall time of every trainer iteration; attach it after the handlers that are part of the step."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.times: list[float] = []
        self._start = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._completed)

    def _started(self, engine: Engine) -> None:
        synchronize(self.device)
        self._start = time.perf_counter()

    def _completed(self, engine: Engine) -> None:
        synchronize(self.device)
        self.times.append(time.perf_counter() - self._start)

    @property
    def steady(self) -> list[float]:
        """The step times after the warm-up (:func:`steady_state`)."""
        return steady_state(self.times)


def steady_state(times: list[float]) -> list[float]:
    """``times`` without the first :data:`WARMUP_STEPS`."""
    return times[WARMUP_STEPS:]


class PeakMemory:
    """Peak memory of a block of work, above the level at its start, in MiB.

    The CUDA allocator's peak on a GPU; the process's peak resident set (Linux VmHWM, reset at the
    start) on a CPU.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)

    def _rss_kib(self, field: str) -> int:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise UserError(f"cannot read {field} from {_STATUS}: CPU peak memory needs Linux")

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            _CLEAR_REFS.write_text("5")  # resets VmHWM to the current resident set
            self.start = self._rss_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = self._rss_kib("VmHWM") * 1024
        self.mib = max(peak - self.start, 0) / 2**20


def cpu_model() -> str:
    """The CPU's marketing name (Linux), else whatever the platform reports."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else (platform.processor() or platform.machine())


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    info = {
        "cpu": cpu_model(),
        "nproc": os.cpu_count(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
        "gpu": None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
