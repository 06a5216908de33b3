"""Statistics for the benchmark: is a method better than joint training, or is the gap noise?

Each seed sets both the training seed and the data seed, so a method's run and joint training's run with
the same seed share their data and are compared as a pair: the per-seed differences cancel the
seed-to-seed spread that both runs share. The interval is a percentile bootstrap of the mean
difference, which assumes nothing about its distribution but is only as good as the few seeds behind it.

The collapse rules and :func:`plateaued` flag runs whose numbers should not be averaged in unremarked:
a run that learned nothing, and a baseline that had not finished learning.

Pure numpy, so the report can use it without torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Verdict = Literal["above", "below", "inconclusive"]


@dataclass(frozen=True)
class PairedDifference:
    """Per-seed differences ``method - baseline`` over the seeds both have, and a bootstrap interval.

    ``low``/``high`` bound the mean difference at ``confidence``; ``wins`` counts seeds where the method
    scored strictly higher; ``unpaired`` counts seeds present in only one of the two mappings (ignored).
    """

    n: int
    mean: float
    median: float
    low: float
    high: float
    wins: int
    unpaired: int
    confidence: float

    @property
    def verdict(self) -> Verdict:
        """``"above"``/``"below"`` when the whole interval is on one side of 0, else ``"inconclusive"``.

        A single pair is always inconclusive: its degenerate interval says nothing about seed noise.
        """
        if self.n < 2:
            return "inconclusive"
        if self.low > 0:
            return "above"
        if self.high < 0:
            return "below"
        return "inconclusive"


def _check_finite(scores: Mapping[int, float], name: str) -> None:
    bad = sorted(seed for seed, value in scores.items() if not math.isfinite(value))
    if bad:
        raise ValueError(f"{name} has non-finite scores for seeds {bad}; fix or drop those runs first")


def paired_difference(
    method: Mapping[int, float],
    baseline: Mapping[int, float],
    resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedDifference:
    """Compare ``method`` with ``baseline`` (both ``{seed: score}``) seed by seed.

    Only seeds present in both are paired (in ascending seed order, so the result does not depend on
    the mappings' order); the rest are counted in ``unpaired``. The interval resamples the seed pairs
    with replacement ``resamples`` times (``numpy.random.default_rng(seed)``) and takes the
    ``(1 - confidence) / 2`` and ``1 - (1 - confidence) / 2`` percentiles of the resampled means.

    With one pair the interval is ``(d, d)`` and the verdict ``"inconclusive"``: one pair is no evidence.
    Raises ``ValueError`` when no seed is in both.
    """
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    seeds = sorted(set(method) & set(baseline))
    unpaired = len(set(method) ^ set(baseline))
    if not seeds:
        raise ValueError(
            f"no seed is present in both method (seeds {sorted(method)}) and baseline "
            f"(seeds {sorted(baseline)}); nothing to compare"
        )
    _check_finite({s: method[s] for s in seeds}, "method")
    _check_finite({s: baseline[s] for s in seeds}, "baseline")
    differences = np.array([method[s] - baseline[s] for s in seeds], dtype=np.float64)
    n = len(differences)
    mean = float(differences.mean())
    if n == 1:
        low = high = mean
    else:
        rng = np.random.default_rng(seed)
        indices = rng.integers(0, n, size=(resamples, n))
        means = differences[indices].mean(axis=1)
        tail = (1.0 - confidence) / 2.0
        low, high = (float(q) for q in np.percentile(means, [100.0 * tail, 100.0 * (1.0 - tail)]))
    return PairedDifference(
        n=n,
        mean=mean,
        median=float(np.median(differences)),
        low=low,
        high=high,
        wins=int((differences > 0).sum()),
        unpaired=unpaired,
        confidence=confidence,
    )


@dataclass(frozen=True)
class Summary:
    """Spread of one score over seeds; ``std`` is the population one (ddof=0), as in the report's ± std."""

    n: int
    mean: float
    std: float
    median: float
    q25: float
    q75: float
    min: float
    max: float


def summary(values: Sequence[float]) -> Summary:
    """Describe ``values`` (e.g. one method's score over seeds); raises ``ValueError`` when empty."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"summary needs a non-empty 1-D sequence of numbers, got shape {array.shape}")
    q25, median, q75 = (float(q) for q in np.percentile(array, [25.0, 50.0, 75.0]))
    return Summary(
        n=int(array.size),
        mean=float(array.mean()),
        std=float(array.std()),
        median=median,
        q25=q25,
        q75=q75,
        min=float(array.min()),
        max=float(array.max()),
    )


def segmentation_collapsed(region_dice: Mapping[str, float], threshold: float = 0.01) -> bool:
    """A segmentation run collapsed when any region's mean Dice is below ``threshold``.

    A region at Dice ~0 means the network never predicts it, so its average over regions hides a failure.
    """
    if not region_dice:
        raise ValueError("region_dice is empty; expected {region: mean Dice}")
    return any(dice < threshold for dice in region_dice.values())


def classification_collapsed(accuracy: float, num_classes: int, margin: float = 0.05) -> bool:
    """A classifier collapsed when its accuracy is at or below chance (``1 / num_classes``) + ``margin``.

    Uniform chance is the floor of a guesser that ignores its inputs (e.g. always the same class on
    balanced data).
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return accuracy <= 1.0 / num_classes + margin


def regression_collapsed(acc2: float, margin: float = 0.05) -> bool:
    """A sentiment regressor collapsed when its binary accuracy (Acc-2) is at or below 0.5 + ``margin``.

    Acc-2 near 0.5 means the sign of the prediction is a coin flip, whatever its MAE.
    """
    return acc2 <= 0.5 + margin


def plateaued(curve: Sequence[float], window: int = 3, tolerance: float = 0.01) -> bool:
    """True when the mean of the last ``window`` points beats the ``window`` before them by < ``tolerance``.

    Checks that the joint baseline trained long enough for its validation score (higher is better; negate
    a loss) to plateau, so that a method is not credited for the baseline's unfinished training. A curve
    shorter than ``2 * window`` has no evidence of a plateau: False.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if len(curve) < 2 * window:
        return False
    points = np.asarray(curve, dtype=np.float64)
    recent = points[-window:].mean()
    before = points[-2 * window : -window].mean()
    return bool(recent - before < tolerance)
