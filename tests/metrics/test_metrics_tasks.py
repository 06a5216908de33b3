"""Sequence-task scores and CGGM utilisation metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from cggm_seg.metrics.tasks import (
    acc2,
    acc7,
    accuracy,
    batch_accuracy,
    classification_f1,
    classification_metrics,
    mae,
    mosi_metrics,
    pearson,
    sign_accuracy,
    sign_f1,
    weighted_f1,
)

# six MOSI samples; the label 0.0 is excluded from Acc-2 and F1
PRED = torch.tensor([[2.6], [-0.4], [0.2], [-3.4], [1.4], [0.5]])
TRUE = torch.tensor([[3.0], [0.5], [0.0], [-2.6], [1.6], [-1.0]])


def test_acc2_uses_non_zero_labels_only():
    # non-zero labels: (2.6,3) ok, (-0.4,0.5) wrong, (-3.4,-2.6) ok, (1.4,1.6) ok, (0.5,-1) wrong -> 3/5
    assert acc2(PRED, TRUE) == pytest.approx(0.6)


def test_acc7_rounds_after_clipping():
    # clip+round: pred 3,-0,0,-3,1,0 (0.5 rounds to even 0); true 3,0,0,-3,2,-1 -> matches 1,2,3,4 -> 4/6
    assert acc7(PRED, TRUE) == pytest.approx(4 / 6)


def test_sign_f1_weighted_by_support():
    # non-zero: true pos = [T,T,F,T,F], pred pos = [T,F,F,T,T]
    # class True (support 3): tp=2 fp=1 fn=1 -> f1 = 4/6; class False (support 2): tp=1 fp=1 fn=1 -> 2/4
    assert sign_f1(PRED, TRUE) == pytest.approx((3 * 4 / 6 + 2 * 0.5) / 5)


def test_mae_and_pearson():
    assert mae(PRED, TRUE) == pytest.approx((0.4 + 0.9 + 0.2 + 0.8 + 0.2 + 1.5) / 6)
    # centred x = (-1, 0, 1), y = (-7/3, -1/3, 8/3): r = 5 / (sqrt(2) * sqrt(114) / 3) = 15 / sqrt(228)
    x = torch.tensor([1.0, 2.0, 3.0])
    assert pearson(x, torch.tensor([2.0, 4.0, 7.0])) == pytest.approx(15 / math.sqrt(228))
    assert pearson(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([-1.0, -2.0, -3.0])) == pytest.approx(-1.0)
    assert math.isnan(pearson(torch.ones(3), torch.tensor([1.0, 2.0, 3.0])))


def test_mosi_metrics_keys_and_all_zero_labels():
    scores = mosi_metrics(PRED, TRUE)
    assert set(scores) == {"acc2", "acc7", "f1_weighted", "mae", "corr"}
    assert scores["acc2"] == pytest.approx(0.6)
    assert math.isnan(acc2(torch.ones(2), torch.zeros(2)))


def test_weighted_f1_by_hand():
    pred = torch.tensor([0, 0, 1, 2, 2, 2])
    true = torch.tensor([0, 1, 1, 2, 2, 0])
    # class 0 (support 2): tp1 fp1 fn1 -> 0.5; class 1 (2): tp1 fp0 fn1 -> 2/3;
    # class 2 (2): tp2 fp1 fn0 -> 0.8
    assert weighted_f1(pred, true) == pytest.approx((0.5 + 2 / 3 + 0.8) / 3)
    # a class that is predicted but never true has no weight; one never predicted scores 0
    assert weighted_f1(torch.tensor([3, 3]), torch.tensor([1, 1])) == 0.0


def test_classification_metrics():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    target = torch.tensor([0, 1, 1, 0])
    assert accuracy(logits, target) == pytest.approx(0.75)
    # pred [0,1,2,0]: class 0 (2): f1 1; class 1 (2): tp1 fn1 -> 2/3
    assert classification_f1(logits, target) == pytest.approx((2 * 1 + 2 * 2 / 3) / 4)
    assert classification_metrics(logits, target) == {
        "accuracy": pytest.approx(0.75),
        "f1_weighted": pytest.approx(5 / 6),
    }
    with pytest.raises(ValueError, match="logits"):
        accuracy(torch.zeros(4), target)


def test_utilisation_metrics_are_0d_tensors():
    pred, target = torch.tensor([[0.3], [-0.2], [0.1], [-1.0]]), torch.tensor([[1.0], [0.0], [-2.0], [-1.0]])
    value = sign_accuracy(pred, target)
    assert value.dim() == 0 and value.item() == pytest.approx(0.75)  # zero label counts as "not positive"
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], requires_grad=True)
    value = batch_accuracy(logits, torch.tensor([1, 1, 1]))
    assert value.dim() == 0 and not value.requires_grad and value.item() == pytest.approx(2 / 3)
