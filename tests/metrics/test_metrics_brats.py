"""BraTS region scores and the segmentation utilisation metric, against hand-computed values."""

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy.ndimage import binary_erosion, distance_transform_edt

from cggm_seg.metrics.brats import HD95_EMPTY_PENALTY_MM, batch_mean_dice, case_scores, region_scores


def _hand_case() -> tuple[np.ndarray, np.ndarray]:
    """BraTS 2021 labels on one row of a 4x4x4 volume.

    GT:   [0,0,0:4]=2, [1,0,0:2]=1, [1,0,2:4]=4 -> WT 8 voxels, TC 4 ([1,0,0:4]), ET 2 ([1,0,2:4]).
    Pred: [0,0,0:4]=2, [1,0,0]=1, [1,0,1:4]=4, [2,0,0]=1 -> WT 9, TC 5, ET 3 ([1,0,1:4]).
    Dice WT = 2*8/(9+8) = 16/17, TC = 2*4/(5+4) = 8/9, ET = 2*2/(3+2) = 0.8.
    """
    gt = np.zeros((4, 4, 4), np.uint8)
    gt[0, 0, :] = 2
    gt[1, 0, :2] = 1
    gt[1, 0, 2:] = 4
    pred = np.zeros_like(gt)
    pred[0, 0, :] = 2
    pred[1, 0, 0] = 1
    pred[1, 0, 1:] = 4
    pred[2, 0, 0] = 1
    return pred, gt


def test_case_scores_dice_by_hand():
    pred, gt = _hand_case()
    scores = case_scores(pred, gt)
    assert list(scores) == ["dice_wt", "dice_tc", "dice_et", "hd95_wt", "hd95_tc", "hd95_et"]
    assert scores["dice_wt"] == pytest.approx(16 / 17)
    assert scores["dice_tc"] == pytest.approx(8 / 9)
    assert scores["dice_et"] == pytest.approx(0.8)
    # ET: pred surface [1,0,1] is 1 voxel from the GT's [1,0,2]; the rest coincide -> 95th pct of
    # the pred->GT distances (0,0,1) with linear interpolation = 0.9, GT->pred all 0 -> HD95 0.9.
    assert scores["hd95_et"] == pytest.approx(0.9)


# brats2021 label -> the same tissue in the other conventions
_RELABEL = {"brats2023": {1: 1, 2: 2, 4: 3}, "msd": {1: 2, 2: 1, 4: 3}}


def _relabel(labels: np.ndarray, convention: str) -> np.ndarray:
    out = np.zeros_like(labels)
    for old, new in _RELABEL[convention].items():
        out[labels == old] = new
    return out


@pytest.mark.parametrize("convention", ["brats2023", "msd"])
def test_other_conventions_give_the_same_scores(convention):
    pred, gt = _hand_case()
    scores = case_scores(_relabel(pred, convention), _relabel(gt, convention), convention)
    assert scores == pytest.approx(case_scores(pred, gt))
    assert scores["dice_tc"] == pytest.approx(8 / 9)
    # prediction written in brats2021 labels, ground truth in the dataset's own
    mixed = case_scores(pred, _relabel(gt, convention), convention, pred_convention="brats2021")
    assert mixed == pytest.approx(case_scores(pred, gt))


def test_convention_matters():
    pred, gt = _hand_case()
    # Read as MSD, label 1 (necrosis in 2021) is oedema: TC shrinks to the ET voxels.
    # GT TC = {label 2 or 3} = [0,0,0:4] (4 voxels); pred TC = [0,0,0:4] too -> Dice 1, not 8/9.
    assert case_scores(pred, gt, "msd")["dice_tc"] == pytest.approx(1.0)


@pytest.mark.parametrize("region", [0, 1, 2])
@pytest.mark.parametrize(
    ("pred_full", "gt_full", "dice", "hd95"),
    [
        (False, False, 1.0, 0.0),
        (True, False, 0.0, HD95_EMPTY_PENALTY_MM),
        (False, True, 0.0, HD95_EMPTY_PENALTY_MM),
        (True, True, 1.0, 0.0),
    ],
)
def test_empty_region_rules(region, pred_full, gt_full, dice, hd95):
    pred = np.zeros((3, 5, 5, 5), bool)
    pred[:, 1:4, 1:4, 1:4] = True
    gt = pred.copy()
    if not pred_full:
        pred[region] = False
    if not gt_full:
        gt[region] = False
    scores = region_scores(pred, gt)
    name = ("tc", "wt", "et")[region]
    assert scores[f"dice_{name}"] == dice
    assert scores[f"hd95_{name}"] == pytest.approx(hd95)
    others = [n for n in ("tc", "wt", "et") if n != name]
    assert all(scores[f"dice_{n}"] == 1.0 and scores[f"hd95_{n}"] == 0.0 for n in others)


def test_penalty_is_the_brats_volume_diagonal():
    assert HD95_EMPTY_PENALTY_MM == pytest.approx(math.sqrt(240**2 + 240**2 + 155**2), abs=0.005)


def test_case_without_enhancing_tumour():
    gt = np.zeros((6, 6, 6), np.uint8)
    gt[2:4, 2:4, 2:4] = 1  # core, no label 4
    assert case_scores(gt, gt)["dice_et"] == 1.0
    pred = gt.copy()
    pred[2, 2, 2] = 4
    scores = case_scores(pred, gt)
    assert (scores["dice_et"], scores["hd95_et"]) == (0.0, HD95_EMPTY_PENALTY_MM)
    assert scores["dice_tc"] == 1.0  # 4 is inside TC, so TC is unchanged


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask ^ binary_erosion(mask)


def _directed(a: np.ndarray, b: np.ndarray, spacing) -> np.ndarray:
    """Distances (mm) from each surface voxel of a to the nearest surface voxel of b."""
    return distance_transform_edt(~_surface(b), sampling=spacing)[_surface(a)]


def _ellipsoid(shape, centre, radii) -> np.ndarray:
    grid = np.indices(shape, dtype=float)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1.0


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 1.2, 2.5)])
def test_hd95_matches_scipy_reference(spacing):
    gt = _ellipsoid((24, 22, 14), (11, 10, 7), (6, 5, 4))
    pred = _ellipsoid((24, 22, 14), (13, 9, 6), (7, 4, 3))
    expected = max(
        np.percentile(_directed(pred, gt, spacing), 95), np.percentile(_directed(gt, pred, spacing), 95)
    )
    masks = lambda m: np.stack([m, m, m])  # noqa: E731
    scores = region_scores(masks(pred), masks(gt), spacing)
    assert scores["hd95_wt"] == pytest.approx(expected, rel=1e-5)
    assert scores["hd95_wt"] > 1.0


def test_hd95_is_max_of_directed_percentiles_not_pooled():
    # GT: a 6^3 cube; pred: the same cube plus a far 2x2x3 blob, so only pred->GT has large distances.
    gt = np.zeros((30, 12, 12), bool)
    gt[3:9, 3:9, 3:9] = True
    pred = gt.copy()
    pred[22:24, 4:6, 4:7] = True
    d_pred, d_gt = _directed(pred, gt, (1, 1, 1)), _directed(gt, pred, (1, 1, 1))
    directed = max(np.percentile(d_pred, 95), np.percentile(d_gt, 95))
    pooled = np.percentile(np.concatenate([d_pred, d_gt]), 95)
    assert directed > pooled + 5  # the example tells the two definitions apart
    hd95 = region_scores(np.stack([pred] * 3), np.stack([gt] * 3))["hd95_wt"]
    assert hd95 == pytest.approx(directed, rel=1e-5)


@pytest.mark.parametrize(("axis", "expected"), [(0, 3.0), (2, 7.5)])
def test_hd95_uses_spacing_of_the_right_axis(axis, expected):
    # one voxel each, 3 voxels apart along `axis`; voxels are 1 x 1 x 2.5 mm
    pred = np.zeros((3, 8, 8, 8), bool)
    gt = np.zeros_like(pred)
    pred[:, 2, 2, 2] = True
    index = [slice(None), 2, 2, 2]
    index[1 + axis] = 5
    gt[tuple(index)] = True
    assert region_scores(pred, gt, (1.0, 1.0, 2.5))["hd95_tc"] == pytest.approx(expected)


def _hand_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two samples, 3 channels, 2x2 voxels (flattened a,b,c,d); logits +5 where predicted.

    sample 0: ch0 pred {a,b} vs {a} -> 2/3; ch1 empty vs empty -> 1; ch2 {a} vs empty -> 0
    sample 1: ch0 all vs all -> 1; ch1 empty vs {a} -> 0; ch2 {a,b} vs {b,c} -> 2*1/4 = 0.5
    mean = (2/3 + 1 + 0 + 1 + 0 + 0.5) / 6
    """
    pred = torch.tensor(
        [[[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]], [[1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 0, 0]]],
        dtype=torch.float,
    )
    target = torch.tensor(
        [[[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], [[1, 1, 1, 1], [1, 0, 0, 0], [0, 1, 1, 0]]],
        dtype=torch.float,
    )
    return (pred * 10 - 5).reshape(2, 3, 2, 2), target.reshape(2, 3, 2, 2)


def test_batch_mean_dice_by_hand():
    logits, target = _hand_batch()
    logits.requires_grad_(True)
    value = batch_mean_dice(logits, target)
    assert value.shape == () and value.dtype == torch.float32 and not value.requires_grad
    assert value.item() == pytest.approx((2 / 3 + 1 + 0 + 1 + 0 + 0.5) / 6)
    assert type(value) is torch.Tensor


def test_batch_mean_dice_accepts_meta_tensors_and_threshold():
    logits, target = _hand_batch()
    expected = batch_mean_dice(logits, target)
    assert batch_mean_dice(MetaTensor(logits), MetaTensor(target)).item() == pytest.approx(expected.item())
    # logit 0.3 -> sigmoid 0.574: predicted at threshold 0.5, not at 0.6
    one = torch.full((1, 3, 2, 2), 0.3)
    ones = torch.ones(1, 3, 2, 2)
    assert batch_mean_dice(one, ones).item() == 1.0
    assert batch_mean_dice(one, ones, threshold=0.6).item() == 0.0


def test_batch_mean_dice_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="one shape"):
        batch_mean_dice(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 3))
