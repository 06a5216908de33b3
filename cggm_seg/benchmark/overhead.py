"""What CGGM costs per training step against joint training (``cggm-seg benchmark overhead``).

Both variants run in one process on the same ``MultiModalUNet3D``, the same initial
weights and the same batch, through MONAI's ``SupervisedTrainer``; only the
``CGGMHandler`` differs. Rounds alternate between the variants so drifting machine load
hits both, and the step times are medians. Peak memory is the CUDA allocator's peak on a
GPU and the process's peak resident set (Linux VmHWM, reset before each run) on a CPU,
each taken above the level just before the run.
"""

from __future__ import annotations

import copy
import statistics

import torch
from monai.engines import SupervisedTrainer
from monai.losses import DiceFocalLoss

from cggm_seg.benchmark.timing import WARMUP_STEPS, PeakMemory, StepTimer, cpu_model
from cggm_seg.errors import UserError
from cggm_seg.metrics.brats import batch_mean_dice
from cggm_seg.modulation.cggm import DIRECTIONS, CGGMHandler
from cggm_seg.networks import MultiModalUNet3D


def _run(
    network: MultiModalUNet3D,
    batch: dict,
    steps: int,
    device: torch.device,
    direction: str | None,
    lam: float = 0.1,
    head_level: int = 0,
) -> tuple[list[float], float]:
    """Train ``steps`` steps (with CGGM when ``direction`` is set); returns step times and peak MiB."""
    net = copy.deepcopy(network)
    handlers = []
    if direction is not None:
        heads = net.make_heads(level=head_level).to(device)
        handlers.append(
            CGGMHandler(
                net.encoder_names(),
                net.output_layer_name,
                heads,
                torch.optim.SGD(heads.parameters(), lr=1e-3),
                batch_mean_dice,
                rho=1.0,
                lam=lam,
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
    timer = StepTimer(device)
    timer.attach(trainer)
    with PeakMemory(device) as memory:
        trainer.run()
    return timer.steady, memory.mib


def measure_overhead(
    size: int,
    batch_size: int,
    steps: int,
    direction: str,
    rounds: int = 3,
    modalities: int = 4,
    channels: tuple[int, ...] = (16, 32, 64, 128),
    device: str = "cpu",
    lam: float = 0.1,
    head_level: int = 0,
) -> dict:
    """Median step time and peak memory with CGGM over without, with the raw numbers.

    ``lam`` is CGGM's ``lambda``: 0 measures magnitude modulation alone (the BraTS bundle's default);
    ``head_level`` is the encoder level the heads compute at (``ModalityHead``).
    """
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
            _run(network, batch, WARMUP_STEPS + 1, dev, mode, lam, head_level)
    for _ in range(rounds):
        for name, mode in (("joint", None), ("cggm", direction)):
            step_times, peak = _run(network, batch, steps, dev, mode, lam, head_level)
            times[name] += step_times
            memory[name].append(peak)
    joint_s, cggm_s = statistics.median(times["joint"]), statistics.median(times["cggm"])
    joint_mib, cggm_mib = statistics.median(memory["joint"]), statistics.median(memory["cggm"])
    return {
        "direction": direction,
        "lambda": lam,
        "head_level": head_level,
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
        "machine": cpu_model(),
    }
