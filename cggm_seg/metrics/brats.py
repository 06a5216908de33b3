"""BraTS region scores (Dice and HD95 of WT/TC/ET) and the CGGM utilisation metric for segmentation.

The challenge rules fix what happens when a region is empty, and the paper reports per-case
scores, so the functions here score one case at a time (``case_scores``/``region_scores``) or
average per-sample Dice over a batch (``batch_mean_dice``) instead of pooling voxels.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from monai.utils import convert_to_tensor

from cggm_seg.brats_labels import REGIONS, get_convention

# HD95 given to a region that is empty in exactly one of prediction and truth. BraTS 2021 scored
# such cases with the diagonal of the 240x240x155 volume at 1 mm: sqrt(240^2 + 240^2 + 155^2) mm.
HD95_EMPTY_PENALTY_MM = 373.13

# Column names of one case's scores, in the order they are written; (TC, WT, ET) -> lower-case suffix.
DICE_KEYS = tuple(f"dice_{r.lower()}" for r in ("WT", "TC", "ET"))
HD95_KEYS = tuple(f"hd95_{r.lower()}" for r in ("WT", "TC", "ET"))
SCORE_KEYS = DICE_KEYS + HD95_KEYS


def region_scores(
    pred_masks: np.ndarray | torch.Tensor,
    gt_masks: np.ndarray | torch.Tensor,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> dict[str, float]:
    """Dice and HD95 (mm) of WT/TC/ET for one case given boolean (TC, WT, ET) masks [3, *spatial].

    Empty regions follow the BraTS rules: empty in both -> Dice 1, HD95 0; empty in exactly one
    -> Dice 0, HD95 ``HD95_EMPTY_PENALTY_MM``.

    HD95 is MONAI's ``compute_hausdorff_distance(percentile=95)``: surface voxels are the mask
    minus its erosion, distances are exact Euclidean distances in mm (``spacing`` is the voxel
    size along each array axis), the 95th percentile (linear interpolation) is taken of the
    pred->truth and of the truth->pred distances separately, and the larger of the two is
    returned. That is the "maximum of the two directed 95th percentiles" used by the BraTS
    toolkit (CaPTk), not the 95th percentile of the pooled distances.
    """
    pred = convert_to_tensor(pred_masks, dtype=torch.bool, track_meta=False).cpu()
    gt = convert_to_tensor(gt_masks, dtype=torch.bool, track_meta=False).cpu()
    if pred.shape != gt.shape or pred.shape[0] != len(REGIONS):
        raise ValueError(
            f"expected two [3, *spatial] masks of one shape, got {tuple(pred.shape)} and {tuple(gt.shape)}"
        )
    dice = compute_dice(pred[None], gt[None], include_background=True, ignore_empty=False)[0].numpy()
    pred_any, gt_any = pred.flatten(1).any(1).numpy(), gt.flatten(1).any(1).numpy()
    hd95 = np.where(pred_any | gt_any, HD95_EMPTY_PENALTY_MM, 0.0)
    both = np.flatnonzero(pred_any & gt_any)
    if both.size:
        with warnings.catch_warnings():  # MONAI 1.5+ warns about an argument its own code passes
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
            distances = compute_hausdorff_distance(
                pred[None, both],
                gt[None, both],
                include_background=True,
                percentile=95,
                spacing=[float(s) for s in spacing],
            )
        hd95[both] = distances[0].numpy()
    scores = {}
    for index, region in enumerate(REGIONS):
        scores[f"dice_{region.lower()}"] = float(dice[index])
        scores[f"hd95_{region.lower()}"] = float(hd95[index])
    return {key: scores[key] for key in SCORE_KEYS}  # WT, TC, ET order for tables and CSVs


def case_scores(
    pred_labels: np.ndarray,
    gt_labels: np.ndarray,
    convention: str = "brats2021",
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    pred_convention: str | None = None,
) -> dict[str, float]:
    """``region_scores`` of two label maps; ``pred_convention`` (default ``convention``) reads the prediction.

    Label values outside a convention are simply outside every region; callers that need to
    reject them check first (``cggm-seg evaluate`` does).
    """
    gt_masks = get_convention(convention).region_masks(np.asarray(gt_labels))
    pred_masks = get_convention(pred_convention or convention).region_masks(np.asarray(pred_labels))
    return region_scores(pred_masks, gt_masks, spacing)


@torch.no_grad()
def batch_mean_dice(logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Mean Dice over samples and channels of ``sigmoid(logits) > threshold`` against binary ``target``.

    This is CGGM's utilisation ``eps`` for segmentation: each sample's channel gets its own Dice
    (empty in both -> 1, empty in one -> 0, as in BraTS), so a batch that happens to hold little
    tumour is not dominated by the big cases. Returns a 0-d float tensor on the input's device.
    """
    logits = convert_to_tensor(logits, track_meta=False)
    target = convert_to_tensor(target, track_meta=False)
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must have one shape")
    pred = torch.sigmoid(logits.float()) > threshold
    return compute_dice(pred, target.bool(), include_background=True, ignore_empty=False).mean()


@torch.no_grad()
def soft_dice(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Mean soft Dice over samples and channels of ``sigmoid(logits)`` against binary ``target``.

    CGGM's "soft" utilisation for segmentation: unlike :func:`batch_mean_dice`, which is 0 until a
    head's probabilities cross 0.5 somewhere in the region, it rises as soon as a head puts more
    probability on the right voxels, so weak heads still give a signal. Empty in both -> 1.
    """
    logits = convert_to_tensor(logits, track_meta=False)
    target = convert_to_tensor(target, track_meta=False)
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must have one shape")
    prob = torch.sigmoid(logits.float()).flatten(2)
    truth = target.float().flatten(2)
    overlap = (prob * truth).sum(-1)
    total = prob.sum(-1) + truth.sum(-1)
    return ((2 * overlap + smooth) / (total + smooth)).mean()
