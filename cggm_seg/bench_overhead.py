"""`cggm-seg bench overhead`: what CGGM costs per training step, against joint training.

Both variants run in one process on the same ``MultiModalUNet3D``, the same initial
weights and the same batch, through MONAI's ``SupervisedTrainer``; only the
``CGGMHandler`` differs. Rounds alternate between the variants so drifting machine load
hits both, and the step times are medians. Peak memory is the CUDA allocator's peak on a
GPU and the process's peak resident set (Linux VmHWM, reset before each run) on a CPU,
each taken above the level just before the run.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.losses import DiceFocalLoss

from cggm_seg.errors import UserError
from cggm_seg.handlers import DIRECTIONS, CGGMHandler
from cggm_seg.metrics.brats import batch_mean_dice
from cggm_seg.networks import MultiModalUNet3D

WARMUP_STEPS = 2
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


class PeakMemory:
    """Peak memory of a block of work, above the level at its start, in MiB."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

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


def _step_times(trainer: SupervisedTrainer, device: torch.device) -> list[float]:
    times: list[float] = []

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    @trainer.on(Events.ITERATION_STARTED)
    def started(engine: SupervisedTrainer) -> None:
        sync()
        engine.state.step_start = time.perf_counter()

    @trainer.on(Events.ITERATION_COMPLETED)
    def completed(engine: SupervisedTrainer) -> None:
        sync()
        times.append(time.perf_counter() - engine.state.step_start)

    return times


def _run(
    network: MultiModalUNet3D, batch: dict, steps: int, device: torch.device, direction: str | None
) -> tuple[list[float], float]:
    """Train ``steps`` steps (with CGGM when ``direction`` is set); returns step times and peak MiB."""
    net = copy.deepcopy(network)
    handlers = []
    if direction is not None:
        heads = net.make_heads().to(device)
        handlers.append(
            CGGMHandler(
                net.encoder_names(),
                net.output_layer_name,
                heads,
                torch.optim.SGD(heads.parameters(), lr=1e-3),
                batch_mean_dice,
                rho=1.0,
                lam=0.1,
                direction=direction,
            )
        )
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=1,
        epoch_length=steps,
        train_data_loader=[batch] * steps,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=1e-3),
        loss_function=DiceFocalLoss(sigmoid=True, gamma=0.0),
        train_handlers=handlers,
        decollate=False,
    )
    trainer.logger.setLevel("WARNING")
    times = _step_times(trainer, device)
    with PeakMemory(device) as memory:
        trainer.run()
    return times[WARMUP_STEPS:], memory.mib


def measure_overhead(
    size: int,
    batch_size: int,
    steps: int,
    direction: str,
    rounds: int = 3,
    modalities: int = 4,
    channels: tuple[int, ...] = (16, 32, 64, 128),
    device: str = "cpu",
) -> dict:
    """Median step time and peak memory with CGGM over without, with the raw numbers."""
    if direction not in DIRECTIONS:
        raise UserError(f"--direction: {direction!r} is not one of {DIRECTIONS}")
    if size % 8 or size < 16:
        raise UserError(f"--size: {size} must be a multiple of 8 and at least 16")
    if steps <= WARMUP_STEPS:
        raise UserError(f"--steps: {steps} must be more than the {WARMUP_STEPS} warm-up steps")
    dev = torch.device(device)
    torch.manual_seed(0)
    network = MultiModalUNet3D(in_modalities=modalities, channels=channels).to(dev)
    batch = {
        "image": torch.randn(batch_size, modalities, size, size, size, device=dev),
        "label": (torch.rand(batch_size, 3, size, size, size, device=dev) > 0.7).float(),
    }
    times: dict[str, list[float]] = {"joint": [], "cggm": []}
    memory: dict[str, list[float]] = {"joint": [], "cggm": []}
    for _ in range(2):  # one unrecorded round each: lazy initialisation and allocator caches
        for mode in (None, direction):
            _run(network, batch, WARMUP_STEPS + 1, dev, mode)
    for _ in range(rounds):
        for name, mode in (("joint", None), ("cggm", direction)):
            step_times, peak = _run(network, batch, steps, dev, mode)
            times[name] += step_times
            memory[name].append(peak)
    joint_s, cggm_s = statistics.median(times["joint"]), statistics.median(times["cggm"])
    joint_mib, cggm_mib = statistics.median(memory["joint"]), statistics.median(memory["cggm"])
    return {
        "direction": direction,
        "time_ratio": round(cggm_s / joint_s, 3),
        "memory_ratio": round(cggm_mib / joint_mib, 3) if joint_mib > 0 else None,
        "joint_step_s": round(joint_s, 4),
        "cggm_step_s": round(cggm_s, 4),
        "joint_peak_mib": round(joint_mib, 1),
        "cggm_peak_mib": round(cggm_mib, 1),
        "size": size,
        "batch": batch_size,
        "steps": steps,
        "rounds": rounds,
        "modalities": modalities,
        "channels": list(channels),
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=48, help="cubic input edge (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=2, help="batch size (default: %(default)s)")
    parser.add_argument(
        "--steps", type=int, default=8, help="steps per run, 2 of them warm-up (default: %(default)s)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating runs of each variant (default: %(default)s)"
    )
    parser.add_argument("--direction", choices=DIRECTIONS, default="weights", help="CGGM direction mode")
    parser.add_argument("--modalities", type=int, default=4, help="encoders (default: %(default)s)")
    parser.add_argument(
        "--channels",
        type=lambda s: tuple(int(c) for c in s.split(",")),
        default=(16, 32, 64, 128),
        help="U-Net channels per level (default: 16,32,64,128)",
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default: %(default)s)",
    )


def main(args: argparse.Namespace) -> int:
    result = measure_overhead(
        args.size,
        args.batch,
        args.steps,
        args.direction,
        args.rounds,
        args.modalities,
        args.channels,
        args.device,
    )
    print(json.dumps(result))
    return 0
