"""CGGM maths as pure torch functions (Guo et al., NeurIPS 2024; see docs/METHOD.md).

Nothing here knows about engines, networks or devices: the handler in
``cggm_seg.modulation.cggm.CGGMHandler`` feeds these functions and applies their results.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: |sum_k d_k| below this makes the coefficients undefined; all coefficients are then 1.
DEFAULT_SUM_TOLERANCE = 1e-6


def balance_coefficients(
    improvements: torch.Tensor,
    clip: tuple[float, float] | None = None,
    sum_tolerance: float = DEFAULT_SUM_TOLERANCE,
) -> torch.Tensor:
    """Balancing coefficients ``B_i = (sum_k d_k - d_i) / sum_k d_k`` from improvements ``d`` [M].

    A modality that improved more than the others gets a small (possibly negative)
    coefficient, a lagging one a large coefficient. When ``|sum_k d_k| < sum_tolerance``
    the ratio is undefined and every coefficient is 1 (no modulation). ``clip=(lo, hi)``
    optionally bounds the result.
    """
    if improvements.dim() != 1 or improvements.numel() < 2:
        raise ValueError(
            f"improvements must be a 1-D tensor with one entry per modality (>= 2), "
            f"got shape {tuple(improvements.shape)}"
        )
    total = improvements.sum()
    if total.abs() < sum_tolerance:
        coefficients = torch.ones_like(improvements)
    else:
        coefficients = (total - improvements) / total
    if clip is not None:
        coefficients = coefficients.clamp(min=clip[0], max=clip[1])
    return coefficients


def balancing_term(coefficients: torch.Tensor, cosines: torch.Tensor) -> torch.Tensor:
    """Direction-modulation loss ``L_gm = (1/M) sum_i (|B_i| - B_i cos_i)``.

    Non-negative; zero when every cosine is +1 for a positive and -1 for a negative
    coefficient. Differentiable in ``cosines`` (the coefficients are constants).
    """
    if coefficients.shape != cosines.shape or coefficients.dim() != 1:
        raise ValueError(
            f"coefficients {tuple(coefficients.shape)} and cosines {tuple(cosines.shape)} "
            "must be 1-D tensors of the same length"
        )
    coefficients = coefficients.detach()
    return (coefficients.abs() - coefficients * cosines).mean()


def flat_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of two same-shaped tensors taken as flat vectors (0 if either is 0)."""
    return F.cosine_similarity(a.reshape(1, -1).float(), b.reshape(1, -1).float(), dim=1, eps=1e-12)[0]


def smoothed_utilisation(current: torch.Tensor, previous: torch.Tensor, momentum: float) -> torch.Tensor:
    """Exponential moving average of the utilisation; ``momentum=0`` returns ``current`` (the paper)."""
    return momentum * previous + (1.0 - momentum) * current


# --------------------------------------------------------------------------------------------------
# Estimators beyond the paper (docs/METHOD.md, "Estimators"): each is a documented handler setting;
# the paper's behaviour is the default of every one.

#: how the coefficients are formed from the heads' measurements
COEFFICIENT_RULES = ("paper", "share", "level")


def share_coefficients(improvements: torch.Tensor) -> torch.Tensor:
    """Bounded coefficients with mean 1: ``B_i = M/(M-1) * (1 - p_i)``, ``p_i = d_i^+ / sum_k d_k^+``.

    The paper's rule ``(S - d_i)/S = 1 - d_i/S`` divides by the summed improvement ``S``, which
    flips sign when ``S < 0`` and explodes near 0. Here only improvements count (``d^+ = max(d, 0)``):
    the modality that improved most gets the smallest coefficient, one that did not improve gets
    ``M/(M-1)``, every ``B_i`` lies in ``[0, M/(M-1)]`` and their mean is exactly 1 (the average
    encoder step keeps joint training's size). When no modality improved there is nothing to
    balance and every coefficient is 1.
    """
    if improvements.dim() != 1 or improvements.numel() < 2:
        raise ValueError(
            f"improvements must be a 1-D tensor with one entry per modality (>= 2), "
            f"got shape {tuple(improvements.shape)}"
        )
    positive = improvements.clamp(min=0)
    total = positive.sum()
    if total <= 0:
        return torch.ones_like(improvements)
    count = improvements.numel()
    return count / (count - 1) * (1 - positive / total)


def level_coefficients(head_losses: torch.Tensor, tolerance: float = DEFAULT_SUM_TOLERANCE) -> torch.Tensor:
    """Coefficients from how far each head still is from its target: ``B_i = M * l_i / sum_k l_k``.

    The paper's rule rewards the *rate* of improvement, so once the dominant modality has saturated
    the still-learning weak one is suppressed. This rule looks at the *level*: the modality whose
    head has the larger loss (learned less from its encoder) gets the larger coefficient. Mean 1,
    non-negative; all 1 when the losses sum to (almost) zero.
    """
    if head_losses.dim() != 1 or head_losses.numel() < 2:
        raise ValueError(
            f"head_losses must be a 1-D tensor with one entry per modality (>= 2), "
            f"got shape {tuple(head_losses.shape)}"
        )
    losses = head_losses.clamp(min=0)
    total = losses.sum()
    if total < tolerance:
        return torch.ones_like(head_losses)
    return head_losses.numel() * losses / total


def windowed_improvement(history: list[torch.Tensor], current: torch.Tensor, window: int) -> torch.Tensor:
    """``d_i = u_i^t - u_i^{t-K}`` over a window of ``K`` iterations; ``K = 1`` is the paper's step-to-step
    change. ``history`` holds the earlier utilisations, newest last; before ``K`` of them exist the
    reference is ``u^0 = 0``, as the paper's ``eps^0 = 0``. A longer window averages out batch noise:
    the change over K steps has the same noise as one step's but K times the signal."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if len(history) < window:
        return current.clone()
    return current - history[-window].to(current.device)
