"""Scores of the sequence tasks (docs/METHOD.md) and the utilisation metrics CGGM uses for them.

Every function takes ``(pred, target)`` tensors as a MONAI evaluator produces them:
MOSI predictions and labels are ``[N]`` or ``[N, 1]`` sentiment values in [-3, 3];
classification predictions are logits ``[N, C]`` and labels class indices ``[N]``.
Evaluation scores are Python floats (``nan`` where undefined, e.g. the correlation of
constant predictions); the utilisation metrics return 0-d tensors, as the CGGM handler expects.
Weighted F1 is written here rather than taken from scikit-learn, which the project does not need.
"""

from __future__ import annotations

import torch


def _values(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().reshape(-1).double()


def _classes(logits: torch.Tensor) -> torch.Tensor:
    if logits.dim() != 2:
        raise ValueError(f"expected logits [N, C], got shape {tuple(logits.shape)}")
    return logits.detach().argmax(dim=1)


def weighted_f1(pred_labels: torch.Tensor, true_labels: torch.Tensor) -> float:
    """F1 per class averaged with weights equal to each class's share of ``true_labels``.

    Matches scikit-learn's ``average='weighted'`` (a class never predicted scores 0).
    """
    pred_labels, true_labels = pred_labels.reshape(-1), true_labels.reshape(-1)
    if true_labels.numel() == 0:
        return float("nan")
    total = 0.0
    for label in torch.unique(true_labels):
        predicted, actual = pred_labels == label, true_labels == label
        tp = (predicted & actual).sum().item()
        fp = (predicted & ~actual).sum().item()
        fn = (~predicted & actual).sum().item()
        total += actual.sum().item() * 2 * tp / (2 * tp + fp + fn)
    return total / true_labels.numel()


# ---- CMU-MOSI (regression in [-3, 3]) ----


def _non_zero(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pred, target = _values(pred), _values(target)
    keep = target != 0
    return pred[keep] > 0, target[keep] > 0


def acc2(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Binary accuracy of the sentiment sign over samples whose label is not 0."""
    pred_pos, target_pos = _non_zero(pred, target)
    return (pred_pos == target_pos).double().mean().item() if target_pos.numel() else float("nan")


def acc7(pred: torch.Tensor, target: torch.Tensor) -> float:
    """7-class accuracy: prediction and label clipped to [-3, 3] and rounded (half to even, as numpy)."""
    pred, target = _values(pred).clamp(-3, 3).round(), _values(target).clamp(-3, 3).round()
    return (pred == target).double().mean().item()


def sign_f1(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Weighted F1 of the sentiment sign over samples whose label is not 0."""
    pred_pos, target_pos = _non_zero(pred, target)
    return weighted_f1(pred_pos, target_pos)


def mae(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean absolute error."""
    return (_values(pred) - _values(target)).abs().mean().item()


def pearson(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Pearson correlation; ``nan`` when either side is constant."""
    pred, target = _values(pred), _values(target)
    pred, target = pred - pred.mean(), target - target.mean()
    denominator = pred.norm() * target.norm()
    return (pred @ target / denominator).item() if denominator > 0 else float("nan")


def mosi_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """The paper's CMU-MOSI scores: Acc-2, Acc-7, weighted F1 of the sign, MAE, correlation."""
    return {
        "acc2": acc2(pred, target),
        "acc7": acc7(pred, target),
        "f1_weighted": sign_f1(pred, target),
        "mae": mae(pred, target),
        "corr": pearson(pred, target),
    }


# ---- IEMOCAP and UPMC-Food-101 (classification) ----


def accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Top-1 accuracy of logits ``[N, C]`` against class indices ``[N]``."""
    return (_classes(logits) == target.reshape(-1)).double().mean().item()


def classification_f1(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Weighted F1 of the arg-max class."""
    return weighted_f1(_classes(logits), target.reshape(-1))


def classification_metrics(logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """The paper's IEMOCAP / Food-101 scores: accuracy and weighted F1."""
    return {"accuracy": accuracy(logits, target), "f1_weighted": classification_f1(logits, target)}


# ---- utilisation metrics eps_i for CGGM (0-d tensors, higher is better) ----


def sign_accuracy(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Share of samples whose predicted sentiment is positive exactly when the label is (> 0).

    Unlike Acc-2 it keeps zero labels (as negatives), as the authors' training code does,
    so it is defined for every batch, including one with only zero labels.
    """
    return ((pred.detach().reshape(-1) > 0) == (target.detach().reshape(-1) > 0)).float().mean()


def batch_accuracy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy of one batch as a 0-d tensor."""
    return (_classes(logits) == target.detach().reshape(-1)).float().mean()


@torch.no_grad()
def true_class_probability(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean softmax probability of the true class: CGGM's "soft" utilisation for classification.

    Accuracy moves only when an argmax flips; this moves with every step a head takes towards the
    right class, so a weak head's progress is visible from the first iterations.
    """
    probabilities = torch.softmax(logits.detach().float(), dim=1)
    return probabilities.gather(1, target.detach().reshape(-1, 1).long()).mean()
