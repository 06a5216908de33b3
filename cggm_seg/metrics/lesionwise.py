"""BraTS 2023 "lesion-wise" Dice and HD95, the scores that ranked the 2023 segmentation challenges.

Region Dice over the whole volume hardly notices a missed small lesion next to a large one, so BraTS
2023 scores each tumour lesion on its own and penalises every missed and every spurious lesion. This
module re-implements the official scoring (``rachitsaluja/BraTS-2023-Metrics``, ``eval.py`` and
``brats_2023_metrics/surface_distance/brats_metrics.py``) on numpy arrays, per region (WT, TC, ET):

1. Ground-truth lesions: the region mask is dilated ``dilation_factor`` times with SciPy's
   ``generate_binary_structure(3, 2)`` (the 18-neighbourhood, not the full 3x3x3 cube); every
   26-connected component of the dilated mask is one lesion, made of the original ground-truth voxels
   inside it, so islands closer than about twice the dilation count as one lesion.
2. Matching: the predicted mask is split into 26-connected components. A component "hits" a lesion
   when it overlaps the lesion's dilated component. The lesion is scored against the union of all the
   components that hit it, whole (also the parts outside the dilated area); one component may hit, and
   be scored with, several lesions.
3. Lesions of volume (voxels x voxel volume, mm^3) ``<= lesion_volume_thresh`` are dropped from the
   scores and the counts. Predicted components are never dropped for size: every component that hits
   no lesion (a dropped one included) is a false positive, and one that only hits dropped lesions is
   neither TP nor FP.
4. A hit lesion (TP) scores its Dice and HD95; a lesion nobody hit (FN) and every false-positive
   component score Dice 0 and HD95 ``hd95_penalty_mm`` (374 mm). The region's score is the mean over
   TP + FN + FP. With nothing to average (no kept lesion and no FP, e.g. both masks empty, or only
   lesions below the threshold) the official code divides 0 by 0 and turns the NaN into Dice 1 and
   HD95 0; so does this module.

HD95 is that of DeepMind's ``surface_distance`` package, which the official code vendors: surface
elements ("surfels") sit on the grid of voxel corners, where the 2x2x2 neighbourhood code is neither
empty nor full; each has the marching-cubes area of its code (MONAI's port of the same table is
used); distances are exact Euclidean distances in mm between surfels; each direction's 95th
percentile is area-weighted (first surfel, in order of distance, whose cumulative area reaches 95 %);
HD95 is the larger of the two directed values. This is not MONAI's ``compute_hausdorff_distance``
(surface voxels, unweighted, interpolated percentile), whose values differ slightly.

Spacing is the voxel size in mm along the array axes, in array order. The official code reads it
with nibabel (``header.get_zooms()``), which also follows the array axes, so values agree for
nibabel-loaded volumes. An array from SimpleITK's ``GetArrayFromImage`` has the axes reversed; pass
``image.GetSpacing()[::-1]`` with it.

Beyond the official lesion-wise scores, each region also gets the whole-volume ("legacy") ``dice`` and
``hd95`` the official code reports too, and ``nsd``: the normalised surface distance (surface Dice) at
``nsd_tolerance_mm`` over the whole region, with the same surfels (DeepMind's
``compute_surface_dice_at_tolerance``; empty in both -> 1, in one -> 0). Differences from the official
code: ``dilation_factor=0`` means no dilation (SciPy would dilate until nothing changes, merging
everything); all work is done on bounding boxes (the crop never changes a result: dilations,
components and surfels all stay inside the box of the masks plus the dilation margin); and nearest
surfels are found with a KD-tree instead of a distance transform of the box (the same exact
distances, at a cost that grows with the surface, not with the box, which far-apart lesions make
large).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from monai.metrics.utils import get_code_to_measure_table
from scipy import ndimage
from scipy.spatial import cKDTree

from cggm_seg.brats_labels import REGIONS, get_convention

try:
    from monai.metrics.utils import _get_neighbour_code_to_normals_table
except ImportError:  # pragma: no cover
    _get_neighbour_code_to_normals_table = None


@dataclass(frozen=True)
class LesionwiseSettings:
    """Per-challenge parameters of the lesion-wise scores."""

    dilation_factor: int = 3  # dilation iterations that merge nearby ground-truth islands into one lesion
    lesion_volume_thresh: float = 50.0  # mm^3; ground-truth lesions of at most this volume are ignored
    hd95_penalty_mm: float = 374.0  # HD95 of a missed or a false-positive lesion
    nsd_tolerance_mm: float = 1.0  # tolerance of the region-level normalised surface distance

    def __post_init__(self) -> None:
        if int(self.dilation_factor) != self.dilation_factor or self.dilation_factor < 0:
            raise ValueError(f"dilation_factor must be an integer >= 0, got {self.dilation_factor!r}")
        if self.lesion_volume_thresh < 0 or self.hd95_penalty_mm < 0 or self.nsd_tolerance_mm < 0:
            raise ValueError(f"thresholds, penalty and tolerance must be >= 0, got {self}")


# (dilation_factor, lesion_volume_thresh) of the BraTS 2023 challenges: get_challenge_parameters() in
# brats_2023_metrics/surface_distance/brats_metrics.py (the same values in eval.py's
# get_LesionWiseResults). BraTS 2024 GLI changed them (BraTS-2024-Metrics/metrics_GLI.py: threshold
# 20, 10 for ET, and other sub-regions), which this module does not implement.
CHALLENGE_SETTINGS: dict[str, LesionwiseSettings] = {
    "BraTS-GLI": LesionwiseSettings(dilation_factor=3, lesion_volume_thresh=50),
    "BraTS-SSA": LesionwiseSettings(dilation_factor=3, lesion_volume_thresh=50),
    "BraTS-MEN": LesionwiseSettings(dilation_factor=1, lesion_volume_thresh=50),
    "BraTS-PED": LesionwiseSettings(dilation_factor=3, lesion_volume_thresh=50),
    "BraTS-MET": LesionwiseSettings(dilation_factor=1, lesion_volume_thresh=2),
}
GLI = CHALLENGE_SETTINGS["BraTS-GLI"]

# Regions in the order BraTS reports them; keys of a case are f"{metric}_{region.lower()}".
CASE_REGIONS = ("WT", "TC", "ET")
REGION_METRICS = ("lesion_dice", "lesion_hd95", "tp", "fp", "fn", "dice", "hd95", "nsd")

_DILATION = ndimage.generate_binary_structure(3, 2)  # as the official code: 18-neighbourhood
_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)  # cc3d.connected_components(connectivity=26)


# ----------------------------------------------------------------------------- surface distances


@lru_cache(maxsize=32)
def _surfel_areas(spacing: tuple[float, float, float]) -> np.ndarray:
    """Area in mm^2 of the surfel of every neighbourhood code, in float64 like the official code.

    MONAI's port of DeepMind's marching-cubes normals (their lengths are areas) is exact in float32
    (multiples of 1/8), so scaling them here in float64 reproduces the official table; MONAI's public
    ``get_code_to_measure_table`` would round the areas to float32.
    """
    if _get_neighbour_code_to_normals_table is None:  # pragma: no cover - MONAI renamed its table
        return get_code_to_measure_table(spacing)[0].cpu().numpy().astype(np.float64)
    normals = _get_neighbour_code_to_normals_table(None).cpu().numpy().astype(np.float64)  # [256, 4, 3]
    s0, s1, s2 = spacing
    scaled = normals * np.array([s1 * s2, s0 * s2, s0 * s1])
    return np.sqrt((scaled**2).sum(-1)).sum(-1)


def _bbox(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """Slices of the bounding box of ``mask`` grown by ``margin`` voxels (clipped); None if empty."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        if hits.size == 0:
            return None
        box.append(slice(max(hits[0] - margin, 0), min(hits[-1] + 1 + margin, mask.shape[axis])))
    return tuple(box)


def _neighbour_codes(mask: np.ndarray) -> np.ndarray:
    """uint8 code of each 2x2x2 block of the zero-padded mask (one per voxel corner, shape + 1).

    Bit weights follow MONAI's/DeepMind's kernel: 128 for the block's lowest corner ... 1 for its
    highest, which is what the area table is indexed by.
    """
    padded = np.pad(mask, 1)
    n0, n1, n2 = (s + 1 for s in mask.shape)
    codes = np.zeros((n0, n1, n2), dtype=np.uint8)
    for a in (0, 1):
        for b in (0, 1):
            for c in (0, 1):
                weight = np.uint8(128 >> (4 * a + 2 * b + c))
                np.bitwise_or(codes, weight, out=codes, where=padded[a : a + n0, b : b + n1, c : c + n2])
    return codes


def _surface_distances(gt: np.ndarray, pred: np.ndarray, spacing: tuple[float, float, float]):
    """Surfel distances and areas: ``(d_gt_to_pred, area_gt, d_pred_to_gt, area_pred)``.

    Each pair is sorted by (distance, area), as the official code sorts it; distances to an empty
    mask are inf.
    """
    box = _bbox(gt | pred)
    if box is None:
        empty = np.zeros(0)
        return empty, empty, empty, empty
    codes_gt, codes_pred = _neighbour_codes(gt[box]), _neighbour_codes(pred[box])
    border_gt = (codes_gt != 0) & (codes_gt != 255)
    border_pred = (codes_pred != 0) & (codes_pred != 255)
    areas = _surfel_areas(spacing)

    scale = np.asarray(spacing)
    points_gt, points_pred = np.argwhere(border_gt) * scale, np.argwhere(border_pred) * scale

    def directed(points_from, codes_from, border_from, points_to):
        if len(points_from) == 0:
            return np.zeros(0), np.zeros(0)
        if len(points_to):
            distances = cKDTree(points_to).query(points_from)[0]
        else:
            distances = np.full(len(points_from), np.inf)
        surfel_areas = areas[codes_from[border_from]]  # argwhere and boolean indexing share C order
        order = np.lexsort((surfel_areas, distances))
        return distances[order], surfel_areas[order]

    d_gt, a_gt = directed(points_gt, codes_gt, border_gt, points_pred)
    d_pred, a_pred = directed(points_pred, codes_pred, border_pred, points_gt)
    return d_gt, a_gt, d_pred, a_pred


def _directed_percentile(distances: np.ndarray, areas: np.ndarray, percent: float) -> float:
    """Area-weighted percentile: the first distance whose cumulative area fraction reaches it."""
    if distances.size == 0:
        return math.inf
    cumulative = np.cumsum(areas) / np.sum(areas)
    index = int(np.searchsorted(cumulative, percent / 100.0))
    return float(distances[min(index, distances.size - 1)])


def _hd95(surface: tuple[np.ndarray, ...]) -> float:
    """Max of the two directed area-weighted 95th percentiles (inf if a mask is empty)."""
    d_gt, a_gt, d_pred, a_pred = surface
    return max(_directed_percentile(d_gt, a_gt, 95), _directed_percentile(d_pred, a_pred, 95))


def _surface_dice(surface: tuple[np.ndarray, ...], tolerance_mm: float) -> float:
    """Share of both surfaces' area within ``tolerance_mm`` of the other surface (1 if both empty)."""
    d_gt, a_gt, d_pred, a_pred = surface
    total = a_gt.sum() + a_pred.sum()
    if total == 0:
        return 1.0
    return float((a_gt[d_gt <= tolerance_mm].sum() + a_pred[d_pred <= tolerance_mm].sum()) / total)


def _as_spacing(spacing: Sequence[float] | float) -> tuple[float, float, float]:
    values = (float(spacing),) * 3 if np.isscalar(spacing) else tuple(float(s) for s in spacing)
    if len(values) != 3 or min(values) <= 0:
        raise ValueError(f"spacing must be 3 positive voxel sizes in mm, got {spacing!r}")
    return values  # type: ignore[return-value]


# ----------------------------------------------------------------------------- scores


def lesionwise_region_scores(
    pred_mask: np.ndarray,
    gt_mask: np.ndarray,
    spacing: Sequence[float] | float = (1.0, 1.0, 1.0),
    settings: LesionwiseSettings = GLI,
) -> dict[str, float]:
    """Lesion-wise and whole-region scores of one boolean 3-D region mask pair.

    Keys: ``lesion_dice``, ``lesion_hd95`` (the official ranking scores), ``tp``, ``fp``, ``fn``
    (lesion counts after the volume threshold), ``dice``, ``hd95`` (whole-region "legacy" scores),
    ``nsd`` (whole-region surface Dice at ``settings.nsd_tolerance_mm``). Distances are in mm.
    """
    pred, gt = np.asarray(pred_mask, dtype=bool), np.asarray(gt_mask, dtype=bool)
    if pred.shape != gt.shape or gt.ndim != 3:
        raise ValueError(f"expected two 3-D masks of one shape, got {pred.shape} and {gt.shape}")
    spacing = _as_spacing(spacing)
    penalty = float(settings.hd95_penalty_mm)
    box = _bbox(gt | pred, margin=int(settings.dilation_factor))
    if box is None:
        return {
            "lesion_dice": 1.0,
            "lesion_hd95": 0.0,
            "tp": 0,
            "fp": 0,
            "fn": 0,
            "dice": 1.0,
            "hd95": 0.0,
            "nsd": 1.0,
        }
    gt, pred = gt[box], pred[box]

    # whole-region scores
    gt_sum, pred_sum = int(gt.sum()), int(pred.sum())
    dice = 2.0 * np.count_nonzero(gt & pred) / (gt_sum + pred_sum)
    surface = _surface_distances(gt, pred, spacing)
    hd95 = _hd95(surface)

    # lesions: components of the dilated truth; predicted components
    pred_cc, n_pred = ndimage.label(pred, structure=_CONNECTIVITY_26)
    dilated = gt
    if settings.dilation_factor > 0 and gt_sum:
        dilated = ndimage.binary_dilation(gt, structure=_DILATION, iterations=int(settings.dilation_factor))
    lesion_cc, _ = ndimage.label(dilated, structure=_CONNECTIVITY_26)
    pred_boxes = ndimage.find_objects(pred_cc)
    voxel_volume = spacing[0] * spacing[1] * spacing[2]

    hit = np.zeros(n_pred + 1, dtype=bool)  # predicted components that hit any lesion, dropped ones too
    lesion_scores: list[tuple[float, float]] = []
    tp = fn = 0
    for label, lesion_box in enumerate(ndimage.find_objects(lesion_cc), start=1):
        area = lesion_cc[lesion_box] == label  # the lesion's dilated component
        lesion_voxels = np.count_nonzero(gt[lesion_box] & area)
        hits = np.unique(pred_cc[lesion_box][area])
        hits = hits[hits > 0]
        hit[hits] = True
        if lesion_voxels * voxel_volume <= settings.lesion_volume_thresh:
            continue
        if hits.size == 0:
            fn += 1
            lesion_scores.append((0.0, penalty))
            continue
        tp += 1
        # the lesion and all components that hit it, whole: union of their boxes
        boxes = [lesion_box] + [pred_boxes[h - 1] for h in hits]
        joint = tuple(slice(min(b[d].start for b in boxes), max(b[d].stop for b in boxes)) for d in range(3))
        lesion = gt[joint] & (lesion_cc[joint] == label)
        matched = np.isin(pred_cc[joint], hits)
        lesion_dice = 2.0 * np.count_nonzero(lesion & matched) / (lesion_voxels + np.count_nonzero(matched))
        lesion_scores.append((lesion_dice, _hd95(_surface_distances(lesion, matched, spacing))))
    fp = int(n_pred - np.count_nonzero(hit[1:]))

    count = len(lesion_scores) + fp
    if count == 0:  # the official 0/0 -> NaN -> 1 (Dice) and 0 (HD95)
        lesion_dice_mean, lesion_hd95_mean = 1.0, 0.0
    else:
        lesion_dice_mean = sum(d for d, _ in lesion_scores) / count
        lesion_hd95_mean = (sum(h for _, h in lesion_scores) + fp * penalty) / count
    return {
        "lesion_dice": float(lesion_dice_mean),
        "lesion_hd95": float(lesion_hd95_mean),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "dice": float(dice),
        "hd95": penalty if math.isinf(hd95) else hd95,
        "nsd": _surface_dice(surface, settings.nsd_tolerance_mm),
    }


def _label_volume(labels: np.ndarray | object) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim == 4 and array.shape[0] == 1:  # channel-first [1, *spatial] as MONAI loads it
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"expected a 3-D label map (or [1, *spatial]), got shape {array.shape}")
    return array


def lesionwise_case_scores(
    pred_labels: np.ndarray,
    gt_labels: np.ndarray,
    convention: str = "brats2021",
    spacing: Sequence[float] | float = (1.0, 1.0, 1.0),
    settings: LesionwiseSettings = GLI,
    pred_convention: str | None = None,
) -> dict[str, float]:
    """Lesion-wise scores of one case from two label maps, as flat ``{metric}_{region}`` keys.

    Regions come from the label convention (``cggm_seg.brats_labels``); ``pred_convention`` is the
    prediction's when it differs from the ground truth's. Keys: every ``REGION_METRICS`` name with
    ``_wt``, ``_tc``, ``_et``, plus ``lesion_dice_mean`` and ``lesion_hd95_mean`` over the regions.
    """
    gt, pred = _label_volume(gt_labels), _label_volume(pred_labels)
    if gt.shape != pred.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    gt_masks = get_convention(convention).region_masks(gt)
    pred_masks = get_convention(pred_convention or convention).region_masks(pred)
    return lesionwise_mask_scores(pred_masks, gt_masks, spacing, settings)


def lesionwise_mask_scores(
    pred_masks: np.ndarray,
    gt_masks: np.ndarray,
    spacing: Sequence[float] | float = (1.0, 1.0, 1.0),
    settings: LesionwiseSettings = GLI,
) -> dict[str, float]:
    """``lesionwise_case_scores`` of boolean (TC, WT, ET) masks [3, *spatial], as a network's
    post-processing produces them (``BratsScoreHandler``), so no label map is needed."""
    scores: dict[str, float] = {}
    for region in CASE_REGIONS:
        index = REGIONS.index(region)
        region_scores = lesionwise_region_scores(pred_masks[index], gt_masks[index], spacing, settings)
        scores.update({f"{metric}_{region.lower()}": value for metric, value in region_scores.items()})
    for metric in ("lesion_dice", "lesion_hd95"):
        scores[f"{metric}_mean"] = float(np.mean([scores[f"{metric}_{r.lower()}"] for r in CASE_REGIONS]))
    return scores
