"""CGGM maths as pure torch functions (Guo et al., NeurIPS 2024; see CGGM_SPEC.md).

Nothing here knows about engines, networks or devices: the handler in
``cggm_seg.handlers`` feeds these functions and applies their results.
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
        raise ValueError(f"improvements must be a 1-D tensor with one entry per modality (>= 2), "
                         f"got shape {tuple(improvements.shape)}")
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
        raise ValueError(f"coefficients {tuple(coefficients.shape)} and cosines {tuple(cosines.shape)} "
                         "must be 1-D tensors of the same length")
    coefficients = coefficients.detach()
    return (coefficients.abs() - coefficients * cosines).mean()


def flat_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of two same-shaped tensors taken as flat vectors (0 if either is 0)."""
    return F.cosine_similarity(a.reshape(1, -1).float(), b.reshape(1, -1).float(), dim=1, eps=1e-12)[0]


def smoothed_utilisation(current: torch.Tensor, previous: torch.Tensor, momentum: float) -> torch.Tensor:
    """Exponential moving average of the utilisation; ``momentum=0`` returns ``current`` (the paper)."""
    return momentum * previous + (1.0 - momentum) * current
