"""Deliberately simple reference for the BraTS 2023 lesion-wise scores, used only by the tests.

It follows the official ``get_LesionWiseScores``/``get_LesionWiseResults`` step by step on the full
volume (no cropping, no bounding boxes, one full-size array per step) and computes surface distances
by brute force: explicit surfel coordinates and all pairwise distances, instead of a distance
transform. Slow, but short enough to check by eye against the official code.
"""

from __future__ import annotations

import math

import numpy as np
from monai.metrics.utils import _get_neighbour_code_to_normals_table
from scipy import ndimage
from scipy.spatial.distance import cdist


def surfels(mask: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Corner-grid coordinates (mm) and areas (mm^2) of every surface element of ``mask``."""
    normals = _get_neighbour_code_to_normals_table(None).numpy().astype(np.float64)
    s0, s1, s2 = spacing
    table = np.zeros(256)
    for code in range(256):
        for normal in normals[code]:
            table[code] += math.sqrt(
                (normal[0] * s1 * s2) ** 2 + (normal[1] * s0 * s2) ** 2 + (normal[2] * s0 * s1) ** 2
            )
    padded = np.zeros(tuple(s + 2 for s in mask.shape), dtype=np.int64)
    padded[1:-1, 1:-1, 1:-1] = mask
    n0, n1, n2 = (s + 1 for s in mask.shape)

    def corner(a, b, c):  # value of block element (a, b, c) for every corner-grid point
        return padded[a : a + n0, b : b + n1, c : c + n2]

    codes = (
        128 * corner(0, 0, 0)
        + 64 * corner(0, 0, 1)
        + 32 * corner(0, 1, 0)
        + 16 * corner(0, 1, 1)
        + 8 * corner(1, 0, 0)
        + 4 * corner(1, 0, 1)
        + 2 * corner(1, 1, 0)
        + corner(1, 1, 1)
    )
    border = (codes != 0) & (codes != 255)
    points = np.argwhere(border) * np.asarray(spacing, dtype=float)
    return points.reshape(-1, 3), table[codes[border]]


def nearest_distances(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Distance from each source point to its nearest target point (inf if no target)."""
    if len(target) == 0:
        return np.full(len(source), np.inf)
    return cdist(source, target).min(axis=1)


def surface_distances(gt: np.ndarray, pred: np.ndarray, spacing):
    """(d_gt_to_pred, areas_gt, d_pred_to_gt, areas_pred), as DeepMind's compute_surface_distances."""
    points_gt, areas_gt = surfels(gt, spacing)
    points_pred, areas_pred = surfels(pred, spacing)
    return (
        nearest_distances(points_gt, points_pred),
        areas_gt,
        nearest_distances(points_pred, points_gt),
        areas_pred,
    )


def robust_hausdorff(distances, percent=95.0) -> float:
    """compute_robust_hausdorff: per direction, sort surfels by (distance, area) and take the first
    distance whose cumulative area fraction reaches ``percent``; the larger direction wins."""
    d_gt, a_gt, d_pred, a_pred = distances
    result = []
    for d, a in ((d_gt, a_gt), (d_pred, a_pred)):
        if len(d) == 0:
            result.append(np.inf)
            continue
        pairs = np.array(sorted(zip(d.tolist(), a.tolist())))
        fractions = np.cumsum(pairs[:, 1]) / np.sum(pairs[:, 1])
        reached = [i for i, f in enumerate(fractions) if f >= percent / 100.0]
        result.append(pairs[reached[0] if reached else -1, 0])
    return max(result)


def surface_dice(distances, tolerance) -> float:
    d_gt, a_gt, d_pred, a_pred = distances
    total = a_gt.sum() + a_pred.sum()
    if total == 0:
        return 1.0
    return float((a_gt[d_gt <= tolerance].sum() + a_pred[d_pred <= tolerance].sum()) / total)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def region_scores(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing,
    dilation_factor: int,
    volume_thresh: float,
    penalty: float = 374.0,
    tolerance: float = 1.0,
) -> dict[str, float]:
    """The official algorithm for one region mask pair, plus the whole-region dice/hd95/nsd."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    sx, sy, sz = spacing
    full = 1.0 if not gt.any() and not pred.any() else dice(pred, gt)
    whole = surface_distances(gt, pred, spacing)
    full_hd95 = 0.0 if not gt.any() and not pred.any() else robust_hausdorff(whole)
    full_nsd = surface_dice(whole, tolerance)

    struct = ndimage.generate_binary_structure(3, 2)
    cc26 = np.ones((3, 3, 3))
    gt_cc, _ = ndimage.label(gt, structure=cc26)
    pred_cc, _ = ndimage.label(pred, structure=cc26)
    gt_dilation = ndimage.binary_dilation(gt, structure=struct, iterations=dilation_factor)
    gt_dilation_cc, _ = ndimage.label(gt_dilation, structure=cc26)
    combined = np.zeros_like(gt_dilation_cc)  # get_GTseg_combinedByDilation
    for comp in range(1, gt_dilation_cc.max() + 1):
        tmp = (gt_dilation_cc == comp).astype(int) * gt_cc
        combined += np.where(tmp > 0, comp, 0)

    tp_components, metric_pairs = [], []
    for comp in range(1, combined.max() + 1):
        gt_tmp = combined == comp
        roi = ndimage.binary_dilation(gt_tmp, structure=struct, iterations=dilation_factor)
        volume = gt_tmp.sum() * sx * sy * sz
        intersecting = np.unique(pred_cc * roi)
        intersecting = intersecting[intersecting != 0]
        tp_components.extend(intersecting.tolist())
        pred_tmp = np.isin(pred_cc, intersecting)
        lesion_dice = dice(pred_tmp, gt_tmp)
        hd = robust_hausdorff(surface_distances(gt_tmp, pred_tmp, spacing))
        metric_pairs.append((len(intersecting), volume, lesion_dice, hd))
    fp = np.unique(pred_cc[np.isin(pred_cc, tp_components + [0], invert=True)])

    kept = [(n, d, penalty if np.isinf(h) else h) for n, v, d, h in metric_pairs if v > volume_thresh]
    denominator = len(kept) + len(fp)
    if denominator == 0:
        lesion_dice, lesion_hd95 = 1.0, 0.0
    else:
        lesion_dice = sum(d for _, d, _ in kept) / denominator
        lesion_hd95 = (sum(h for _, _, h in kept) + len(fp) * penalty) / denominator
    return {
        "lesion_dice": lesion_dice,
        "lesion_hd95": lesion_hd95,
        "tp": sum(1 for n, _, _ in kept if n > 0),
        "fp": len(fp),
        "fn": sum(1 for n, _, _ in kept if n == 0),
        "dice": full,
        "hd95": penalty if np.isinf(full_hd95) else full_hd95,
        "nsd": full_nsd,
    }
