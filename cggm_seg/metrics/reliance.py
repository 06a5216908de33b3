"""How much a trained multimodal model relies on each modality, and what its per-modality heads score.

Reliance is measured by ablation: the model is evaluated as it is, then once per modality with that
modality's input blanked (zeros or its mean, :mod:`cggm_seg.networks.masking`), and the drop of the
score is that modality's reliance. A balanced model loses something from every modality; a model
that leaned on one collapses without it and hardly notices the others. It needs nothing but the
network and a function that evaluates it, so it works for any trained model and any evaluator.

The heads' scores complement it: each training-only head reads one encoder's features, so its score
on held-out data says how much that encoder learned, whatever the fusion makes of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from ignite.engine import Engine
from torch import nn

from cggm_seg.networks.heads import on_grid
from cggm_seg.networks.masking import blanked, check_fill
from cggm_seg.networks.utils import submodule, unwrap


@dataclass(frozen=True)
class Reliance:
    """The score of the intact model and with each modality blanked."""

    full: float
    without: dict[str, float]

    @property
    def drop(self) -> dict[str, float]:
        """Score lost when each modality is blanked (positive: the model uses it)."""
        return {name: self.full - score for name, score in self.without.items()}

    def as_dict(self) -> dict[str, Any]:
        return {"full": self.full, "without": dict(self.without), "drop": self.drop}


def modality_reliance(
    network: nn.Module,
    encoders: Sequence[str],
    modality_names: Sequence[str],
    evaluate: Callable[[], float],
    fill: str = "zero",
) -> Reliance:
    """Evaluate ``network`` intact and with each modality blanked in turn.

    Args:
        network: the trained model; ``encoders`` name its modality encoders, in modality order.
        modality_names: one name per encoder, used as the keys of the result.
        evaluate: runs the evaluation of ``network`` and returns its score (higher is better).
        fill: ``"zero"`` or ``"mean"`` (see :data:`cggm_seg.networks.masking.FILLS`).
    """
    check_fill(fill)
    if len(encoders) != len(modality_names):
        raise ValueError(f"{len(encoders)} encoders but {len(modality_names)} modality names")
    full = float(evaluate())
    without = {}
    for name, encoder in zip(modality_names, encoders):
        with blanked(network, [encoder], fill):
            without[name] = float(evaluate())
    return Reliance(full, without)


def evaluator_metric(evaluator: Engine, key: str) -> Callable[[], float]:
    """An ``evaluate`` for :func:`modality_reliance`: run a MONAI evaluator, return ``state.metrics[key]``."""

    def evaluate() -> float:
        evaluator.run()
        return float(evaluator.state.metrics[key])

    return evaluate


@torch.no_grad()
def head_scores(
    network: nn.Module,
    heads: Sequence[nn.Module],
    encoders: Sequence[str],
    modality_names: Sequence[str],
    batches: Iterable[tuple[Any, torch.Tensor]],
    metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> dict[str, float]:
    """Each head's ``metric`` on held-out ``(inputs, target)`` batches, averaged over samples.

    The network runs in eval mode on whole inputs (no sliding window), the encoder outputs are
    captured by forward hooks and each head scores its own. Train/eval modes are restored after.
    """
    root = unwrap(network)
    captured: list[Any] = [None] * len(encoders)

    def capture(index: int) -> Callable:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            captured[index] = output

        return hook

    handles = [
        submodule(root, name, "encoders").register_forward_hook(capture(i)) for i, name in enumerate(encoders)
    ]
    modes = [m.training for m in (network, *heads)]
    network.eval()
    for head in heads:
        head.eval()
    totals = torch.zeros(len(encoders), dtype=torch.float64)
    count = 0
    try:
        for inputs, target in batches:
            network(inputs)
            size = int(target.shape[0])
            for i, head in enumerate(heads):
                prediction = head(captured[i])
                totals[i] += float(metric(prediction, on_grid(target, prediction))) * size
            count += size
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in zip((network, *heads), modes):
            module.train(mode)
    if count == 0:
        raise ValueError("head_scores: no batches to score")
    return {name: float(total / count) for name, total in zip(modality_names, totals)}
