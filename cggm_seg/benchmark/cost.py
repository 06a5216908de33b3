"""What one training step and one case's inference of a bundle cost, in counts (``cggm-seg benchmark cost``).

Network, heads, loss, optimizers, balancing handler, trainer and inferer come from the bundle config
(``train.json``, through :func:`cggm_seg.benchmark.run.bundle_parser`), and MONAI's
``SupervisedTrainer`` runs the step, so the counts are those of ``python -m monai.bundle run``. Each
variant of :data:`VARIANTS` (joint training, every balancing method, encoder checkpointing, MONAI
model-zoo's SegResNet) runs on fake tensors (:mod:`cggm_seg.benchmark.counting`): the numbers do not
depend on the machine or its load. Per variant:

* ``gflop``: FLOPs of one training step (the FLOPs do not depend on the precision);
* per precision (``fp32``; ``bf16``: CPU autocast to bfloat16 around the step, as AMP does on a GPU,
  the heads in fp32 as the handlers run them), all in bytes:
  ``saved_bytes`` — the most that autograd holds for backward at one moment, parameters excluded;
  ``saved_total_bytes`` — every storage saved during the step, each once, even those freed before
  others were saved (the balancing heads' graphs, one head after another);
  ``parameter_bytes``, ``gradient_bytes``, ``optimizer_state_bytes`` — network and heads;
  ``peak_bytes`` — the most live tensor bytes after any op of a steady-state step: parameters,
  gradients, optimizer state, the batch, saved activations and the temporaries alive then;
  ``gpu_memory_bytes`` — ``peak_bytes`` + :data:`CUDA_RESERVE`, the estimate of the GPU memory needed.

Inference: one ``volume``-sized case through the bundle's inferer (sliding window) in eval mode
without gradients: window count, FLOPs, and peak bytes per precision.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import monai
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser

from cggm_seg.benchmark.counting import FlopCount, MemoryCount, ShapeOnly, tensor_bytes
from cggm_seg.benchmark.run import bundle_parser
from cggm_seg.bundle import bundle_dir, config_label
from cggm_seg.errors import UserError
from cggm_seg.modulation import METHODS

DEFAULT_CONFIG = bundle_dir("brats_cggm") / "configs" / "train.json"
GIB = 2**30
#: what a GPU needs beyond the counted tensors: CUDA context, cuDNN workspaces, caching-allocator slack
#: (an allowance, not a measurement)
CUDA_RESERVE = GIB
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}
#: MONAI model-zoo ``brats_mri_segmentation``'s network, as its ``configs/train.json`` builds it
SEGRESNET = {
    "_target_": "SegResNet",
    "blocks_down": [1, 2, 2, 4],
    "blocks_up": [1, 1, 1],
    "init_filters": 16,
    "in_channels": 4,
    "out_channels": 3,
    "dropout_prob": 0.2,
}
_CHECKPOINT = {"network_def#checkpoint_encoders": True}
CHECKPOINTED = "joint, checkpoint_encoders"
#: variant -> config overrides; ``joint`` is ``modulation: none``, the reference of every ratio
VARIANTS: dict[str, dict[str, Any]] = {
    **{"joint" if m == "none" else m: {"modulation": m} for m in METHODS},
    CHECKPOINTED: {"modulation": "none", **_CHECKPOINT},
    "cggm, checkpoint_encoders": {"modulation": "cggm", **_CHECKPOINT},
    "segresnet": {"modulation": "none", "modulation_handler": None, "network_def": SEGRESNET},
}
TARGETS = {
    "cggm_extra_saved_max": 0.05,  # CGGM's saved bytes over joint training's, fp32
    "cggm_extra_flops_max": 0.02,
    "cggm_bf16_gpu_memory_max_bytes": 16 * GIB,
    "saved_vs_segresnet_max": 2.0,  # joint training's saved bytes over SegResNet's, fp32
}
#: iterations of a counted step: the first creates the optimizer state, the second is counted
_ITERATIONS = 2


def autocast(precision: str) -> torch.autocast:
    """CPU autocast for ``precision`` (:data:`PRECISIONS`): off for fp32."""
    dtype = PRECISIONS[precision]
    return torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def bundle_on_cpu(config: Path, overrides: dict[str, Any]) -> ConfigParser:
    """The bundle on the CPU, where fake tensors live; autocast is the caller's, not MONAI's (CUDA only)."""
    return bundle_parser([config], {**overrides, "device": "cpu", "amp": False})


class BundleStep:
    """The bundle's trainer fed one batch ``iterations`` times, with no handler but its balancing method's.

    The batch is fake (``shapes``) for counting, or random real tensors without.
    """

    def __init__(
        self,
        config: Path,
        overrides: dict[str, Any],
        roi: Sequence[int],
        batch: int,
        iterations: int,
        shapes: ShapeOnly | None,
    ) -> None:
        parser = bundle_on_cpu(config, {**overrides, "roi_size": list(roi), "batch_size": batch, "epochs": 1})
        parser["train_handlers"] = []
        self.shapes = shapes
        image = (batch, len(parser.get_parsed_content("modalities")), *roi)
        label = (batch, parser.get_parsed_content("network_def#out_channels"), *roi)
        if shapes is None:
            self.batch = {"image": torch.randn(image), "label": (torch.rand(label) > 0.5).float()}
        else:
            self.batch = {"image": shapes.empty(*image), "label": shapes.empty(*label)}
        parser["train#dataloader"] = [self.batch] * iterations
        self.trainer = parser.get_parsed_content("trainer")
        self.trainer.logger.setLevel("WARNING")
        handler = parser.get_parsed_content("modulation_handler")
        self.optimizers = [self.trainer.optimizer]
        if getattr(handler, "head_optimizer", None) is not None:
            self.optimizers.append(handler.head_optimizer)

    def run(self, precision: str = "fp32") -> None:
        with self.shapes or contextlib.nullcontext(), autocast(precision):
            self.trainer.run()

    def parameters(self) -> list[torch.Tensor]:
        return [p for opt in self.optimizers for group in opt.param_groups for p in group["params"]]

    def bytes(self) -> dict[str, int]:
        """Parameter, gradient and optimizer-state bytes after the step."""
        params = self.parameters()
        return {
            "parameter_bytes": tensor_bytes(params),
            "gradient_bytes": tensor_bytes([p.grad for p in params if p.grad is not None]),
            "optimizer_state_bytes": tensor_bytes([list(opt.state.values()) for opt in self.optimizers]),
        }


def step_cost(
    config: Path, overrides: dict[str, Any], roi: Sequence[int], batch: int, precision: str
) -> dict[str, int]:
    """FLOPs and bytes of a steady-state training step (the second of two; see the module docstring)."""
    step = BundleStep(config, overrides, roi, batch, _ITERATIONS, ShapeOnly())
    flops, memory = FlopCount(), MemoryCount()
    memory.hold(*step.batch.values(), *step.parameters())
    for counter in (flops, memory):
        step.trainer.add_event_handler(Events.ITERATION_COMPLETED(once=_ITERATIONS - 1), counter.restart)
    with flops, memory:
        step.run(precision)
    return {
        "flops": flops.flops,
        "saved_bytes": memory.saved_peak_bytes,
        "saved_total_bytes": memory.saved_total_bytes,
        **step.bytes(),
        "peak_bytes": memory.peak_bytes,
        "gpu_memory_bytes": memory.peak_bytes + CUDA_RESERVE,
    }


def inference_cost(config: Path, overrides: dict[str, Any], volume: Sequence[int]) -> dict[str, Any]:
    """Windows, FLOPs and peak bytes per precision of one case through the bundle's inferer."""
    parser = bundle_on_cpu(config, overrides)
    network, inferer = parser.get_parsed_content("network").eval(), parser.get_parsed_content("inferer")
    shapes = ShapeOnly()
    case = shapes.empty(1, len(parser.get_parsed_content("modalities")), *volume)
    windows: list[int] = []
    network.register_forward_pre_hook(lambda _module, args: windows.append(args[0].shape[0]))
    result: dict[str, Any] = {"volume": list(volume)}
    for precision in PRECISIONS:
        windows.clear()
        flops, memory = FlopCount(), MemoryCount()
        memory.hold(case, *network.parameters())
        with shapes, flops, memory, torch.no_grad(), autocast(precision):
            inferer(case, network)
        result.update(windows=sum(windows), gflop=flops.flops / 1e9)
        result[precision] = {"peak_bytes": memory.peak_bytes}
    return result


def targets(step: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The targets (:data:`TARGETS`), read from the counts: fp32 unless the name says otherwise."""
    joint, cggm, reference = step["joint"], step["cggm"], step["segresnet"]

    def saved(variant: dict[str, Any], precision: str = "fp32") -> int:
        return variant[precision]["saved_bytes"]

    measured = {
        "cggm_extra_saved": saved(cggm) / saved(joint) - 1,
        "cggm_extra_saved_bf16": saved(cggm, "bf16") / saved(joint, "bf16") - 1,
        "cggm_extra_flops": cggm["gflop"] / joint["gflop"] - 1,
        "saved_vs_segresnet": saved(joint) / saved(reference),
        "saved_vs_segresnet_checkpoint_encoders": saved(step[CHECKPOINTED]) / saved(reference),
    }
    gpu = cggm["bf16"]["gpu_memory_bytes"]
    bounds = {
        "cggm_extra_saved": "cggm_extra_saved_max",
        "cggm_extra_flops": "cggm_extra_flops_max",
        "saved_vs_segresnet": "saved_vs_segresnet_max",
        "saved_vs_segresnet_checkpoint_encoders": "saved_vs_segresnet_max",
    }
    return {
        **TARGETS,
        **{name: round(value, 4) for name, value in measured.items()},
        "cggm_bf16_gpu_memory_bytes": gpu,
        **{f"{name}_met": measured[name] <= TARGETS[bound] for name, bound in bounds.items()},
        "cggm_bf16_gpu_memory_met": gpu <= TARGETS["cggm_bf16_gpu_memory_max_bytes"],
    }


def variant_cost(config: Path, overrides: dict[str, Any], roi: Sequence[int], batch: int) -> dict[str, Any]:
    """One variant's step: GFLOP and the byte counts per precision."""
    counts = {precision: step_cost(config, overrides, roi, batch, precision) for precision in PRECISIONS}
    flops = {c.pop("flops") for c in counts.values()}
    if len(flops) != 1:  # autocast changes dtypes, never the shapes the FLOPs are counted from
        raise RuntimeError(f"the FLOPs differ between precisions: {sorted(flops)}")
    return {"gflop": flops.pop() / 1e9, **counts}


def measure(
    config: Path,
    overrides: dict[str, Any],
    roi: Sequence[int] | None,
    batch: int | None,
    volume: Sequence[int],
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Every variant's step cost, the inference cost and the targets, as one JSON-able document."""
    defaults = bundle_parser([config], overrides)
    roi = list(roi or defaults.get_parsed_content("roi_size"))
    batch = int(defaults.get_parsed_content("batch_size")) if batch is None else batch
    if len(roi) != 3 or min(roi) < 1:
        raise UserError(f"roi_size: expected three positive sizes, got {roi}")
    if batch < 1:
        raise UserError(f"batch_size: expected at least 1, got {batch}")
    step = {}
    for name, variant in VARIANTS.items():
        progress(name)
        step[name] = {"overrides": variant, **variant_cost(config, {**overrides, **variant}, roi, batch)}
    progress("inference")
    return {
        "settings": {"config": config_label(config), "roi": roi, "batch": batch, "set": overrides},
        "environment": {
            "torch": torch.__version__,
            "monai": monai.__version__,
            "python": platform.python_version(),
        },
        "cuda_reserve_bytes": CUDA_RESERVE,
        "step": step,
        "inference": inference_cost(config, {**overrides, "roi_size": roi}, volume),
        "targets": targets(step),
    }


def _gib(value: int) -> str:
    return f"{value / GIB:.2f}"


def table(document: dict[str, Any]) -> str:
    """The step counts as a markdown table (GiB), then the inference counts."""
    joint = document["step"]["joint"]
    rows = [
        "| step | GFLOP | saved fp32 | saved total fp32 | peak fp32 | GPU est. fp32 | saved bf16 | peak bf16 "
        "| GPU est. bf16 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, counts in document["step"].items():
        fp32, bf16 = counts["fp32"], counts["bf16"]
        extra = f" ({counts['gflop'] / joint['gflop'] - 1:+.1%})" if name != "joint" else ""
        fp32_keys = ("saved_bytes", "saved_total_bytes", "peak_bytes", "gpu_memory_bytes")
        cells = [
            *(_gib(fp32[key]) for key in fp32_keys),
            *(_gib(bf16[key]) for key in ("saved_bytes", "peak_bytes", "gpu_memory_bytes")),
        ]
        rows.append(f"| {name} | {counts['gflop']:,.0f}{extra} | {' | '.join(cells)} |")
    inference = document["inference"]
    rows.append("")
    rows.append(
        f"inference, one {'x'.join(map(str, inference['volume']))} case: {inference['windows']} windows, "
        f"{inference['gflop']:,.0f} GFLOP, peak {_gib(inference['fp32']['peak_bytes'])} GiB fp32, "
        f"{_gib(inference['bf16']['peak_bytes'])} GiB bf16"
    )
    return "\n".join(rows)
