"""Benchmark statistics: paired bootstrap, summaries, collapse rules and the plateau check."""

import math
from dataclasses import replace

import numpy as np
import pytest

from cggm_seg.benchmark.stats import (
    classification_collapsed,
    paired_difference,
    plateaued,
    regression_collapsed,
    segmentation_collapsed,
    summary,
)

# baseline 0 keeps the differences exactly 0.1, 0.2, 0.3
METHOD = {0: 0.1, 1: 0.2, 2: 0.3}
ZEROS = {0: 0.0, 1: 0.0, 2: 0.0}
# five seeds with uneven differences, so intervals vary with the generator's seed
MIXED = {0: 0.71, 1: 0.64, 2: 0.80, 3: 0.69, 4: 0.75}
JOINT = {0: 0.70, 1: 0.66, 2: 0.74, 3: 0.69, 4: 0.71}


def _naive_interval(differences, resamples, confidence, seed):
    """The bootstrap written out by hand: one resampled mean per loop, the same generator draws."""
    rng = np.random.default_rng(seed)
    n = len(differences)
    indices = rng.integers(0, n, size=(resamples, n))
    means = []
    for row in indices:
        total = 0.0
        for i in row:
            total += differences[int(i)]
        means.append(total / n)
    tail = (1 - confidence) / 2
    return tuple(float(q) for q in np.percentile(means, [100 * tail, 100 * (1 - tail)]))


def test_paired_difference_positive():
    result = paired_difference(METHOD, ZEROS, resamples=2000)
    assert result.n == 3 and result.unpaired == 0 and result.wins == 3
    assert result.mean == pytest.approx(0.2) and result.median == pytest.approx(0.2)
    assert 0.1 - 1e-12 <= result.low <= 0.2 <= result.high <= 0.3 + 1e-12
    assert result.low < result.high
    assert result.verdict == "above"


def test_paired_difference_symmetric_is_inconclusive():
    result = paired_difference({0: 0.6, 1: 0.4}, {0: 0.5, 1: 0.5}, resamples=2000)
    assert result.mean == pytest.approx(0.0) and result.wins == 1
    assert result.low < 0 < result.high
    assert result.verdict == "inconclusive"


def test_paired_difference_negative_is_below():
    result = paired_difference(ZEROS, METHOD, resamples=2000)
    assert result.wins == 0 and result.high < 0
    assert result.verdict == "below"


def test_unpaired_seeds_are_counted_and_ignored():
    method = {**METHOD, 7: 100.0}
    baseline = {**ZEROS, 9: -100.0}
    result = paired_difference(method, baseline, resamples=500)
    assert result.n == 3 and result.unpaired == 2
    assert result == replace(paired_difference(METHOD, ZEROS, resamples=500), unpaired=2)


def test_single_pair_is_degenerate_and_inconclusive():
    result = paired_difference({3: 0.9}, {3: 0.4})
    assert result.n == 1 and result.wins == 1
    assert result.low == result.high == result.mean == pytest.approx(0.5)
    assert result.verdict == "inconclusive"


def test_no_common_seed_raises():
    with pytest.raises(ValueError, match="no seed is present in both"):
        paired_difference({0: 0.5}, {1: 0.5})
    with pytest.raises(ValueError, match="no seed"):
        paired_difference({}, {})


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="non-finite"):
        paired_difference({0: math.nan, 1: 0.2}, {0: 0.0, 1: 0.0})
    with pytest.raises(ValueError, match="confidence"):
        paired_difference(METHOD, ZEROS, confidence=1.0)
    with pytest.raises(ValueError, match="resamples"):
        paired_difference(METHOD, ZEROS, resamples=0)


def test_reproducible_and_order_independent():
    first = paired_difference(MIXED, JOINT, resamples=1000, seed=5)
    again = paired_difference(dict(reversed(MIXED.items())), JOINT, resamples=1000, seed=5)
    assert first == again
    other = paired_difference(MIXED, JOINT, resamples=1000, seed=6)
    assert (first.low, first.high) != (other.low, other.high)


@pytest.mark.parametrize("confidence", [0.95, 0.8])
def test_interval_matches_naive_bootstrap(confidence):
    differences = [MIXED[s] - JOINT[s] for s in sorted(MIXED)]
    result = paired_difference(MIXED, JOINT, resamples=3000, confidence=confidence, seed=11)
    assert (result.low, result.high) == _naive_interval(differences, 3000, confidence, 11)
    assert result.mean == pytest.approx(sum(differences) / 5)
    assert result.median == pytest.approx(sorted(differences)[2])
    assert result.wins == 3 and result.confidence == confidence


def test_summary_matches_numpy():
    values = [0.3, 0.9, 0.1, 0.5, 0.7, 0.2]
    result = summary(values)
    array = np.array(values)
    assert result.n == 6
    assert result.mean == pytest.approx(array.mean())
    assert result.std == pytest.approx(array.std(ddof=0))
    assert result.median == pytest.approx(np.median(array))
    assert result.q25 == pytest.approx(np.percentile(array, 25))
    assert result.q75 == pytest.approx(np.percentile(array, 75))
    assert (result.min, result.max) == (0.1, 0.9)
    assert summary([2.0]).std == 0.0
    with pytest.raises(ValueError, match="non-empty"):
        summary([])


def test_segmentation_collapse_boundary():
    assert segmentation_collapsed({"TC": 0.8, "WT": 0.9, "ET": 0.0})
    assert segmentation_collapsed({"TC": 0.8, "ET": math.nextafter(0.01, 0.0)})
    assert not segmentation_collapsed({"TC": 0.8, "ET": 0.01})
    assert not segmentation_collapsed({"ET": 0.05}, threshold=0.05)
    with pytest.raises(ValueError):
        segmentation_collapsed({})


def test_classification_collapse_boundary():
    edge = 1.0 / 4 + 0.05
    assert classification_collapsed(edge, num_classes=4)
    assert not classification_collapsed(math.nextafter(edge, 1.0), num_classes=4)
    assert classification_collapsed(0.55, num_classes=2, margin=0.05)
    assert not classification_collapsed(0.9, num_classes=101)
    with pytest.raises(ValueError, match="num_classes"):
        classification_collapsed(0.5, num_classes=1)


def test_regression_collapse_boundary():
    edge = 0.5 + 0.05
    assert regression_collapsed(edge)
    assert not regression_collapsed(math.nextafter(edge, 1.0))
    assert regression_collapsed(0.5)
    assert not regression_collapsed(0.6, margin=0.05)


def test_plateaued():
    rising = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    assert not plateaued(rising)
    assert plateaued([0.5, 0.6, 0.70, 0.70, 0.71, 0.70, 0.705, 0.71])
    assert plateaued([0.8] * 6)
    assert plateaued([0.9, 0.9, 0.9, 0.5, 0.5, 0.5])  # falling: no longer improving
    assert not plateaued([0.8] * 5)  # shorter than 2 * window
    assert plateaued([0.1, 0.2, 0.21], window=1, tolerance=0.02)
    assert not plateaued([0.0, 0.0, 0.5, 0.5], window=2, tolerance=0.5)  # improves exactly by tolerance
    with pytest.raises(ValueError, match="window"):
        plateaued([0.1, 0.2], window=0)
