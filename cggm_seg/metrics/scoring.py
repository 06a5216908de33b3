"""BraTS scores of a folder of predicted label maps against ground truth (``cggm-seg evaluate``).

Two schemes, named after the challenges whose rules they follow:

* ``brats2021`` (BraTS 2017-2021): Dice and HD95 of each region (WT/TC/ET) over the whole volume
  (:mod:`cggm_seg.metrics.brats`); a missing prediction is refused.
* ``brats2023`` (BraTS 2023 onwards): the lesion-wise Dice/HD95 the challenges rank by, lesion
  TP/FP/FN counts, surface Dice (NSD) and volume Dice/HD95 (:mod:`cggm_seg.metrics.lesionwise`); a
  missing prediction is scored as an empty one, as the challenges do, and listed.

Every case is scored in the ground truth's geometry and voxel spacing, in parallel over cases,
so the numbers compare with the leaderboards, and anything that would make them silently wrong is
refused with a one-line error naming the case: mismatched grids, label values outside the chosen
convention, non-integer labels, extra predictions.

This module holds the schemes and the scoring of one case and of a folder; the folders and the checks
of a label map pair are :mod:`cggm_seg.metrics.folders`, the worker processes
:mod:`cggm_seg.metrics.case_pool`, and the summary, CSV, JSON and plots :mod:`cggm_seg.metrics.summaries`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cggm_seg.brats_labels import LabelConvention, get_convention
from cggm_seg.errors import UserError
from cggm_seg.metrics.brats import DICE_KEYS, HD95_KEYS, case_scores
from cggm_seg.metrics.case_pool import map_cases
from cggm_seg.metrics.folders import (
    check_label_values,
    checked_pair,
    find_ground_truth,
    find_predictions,
    load_label_map,
)
from cggm_seg.metrics.lesionwise import (
    CASE_REGIONS,
    CHALLENGE_SETTINGS,
    REGION_METRICS,
    LesionwiseSettings,
    lesionwise_case_scores,
)

logger = logging.getLogger(__name__)

# One case's columns in the CSV and the summary: the three regions, then their per-case mean.
METRICS = (*DICE_KEYS, "dice_mean", *HD95_KEYS, "hd95_mean")
SCHEMES = ("brats2021", "brats2023")
CHALLENGES = tuple(name.removeprefix("BraTS-") for name in CHALLENGE_SETTINGS)  # GLI, SSA, MEN, PED, MET
# brats2023 columns: each metric per region (WT, TC, ET), the Dice-like ones and lesion HD95 also averaged.
_AVERAGED = ("lesion_dice", "lesion_hd95", "dice")
_SUFFIXES = tuple(r.lower() for r in CASE_REGIONS)
LESIONWISE_METRICS = tuple(
    f"{m}_{r}" for m in REGION_METRICS for r in (*_SUFFIXES, *(("mean",) if m in _AVERAGED else ()))
)
# brats2023 rows of cases without a prediction carry 1 here (0 otherwise); a flag, not a score.
MISSING_KEY = "pred_missing"


@dataclass(frozen=True)
class Scheme:
    """Which rules score a case: ``brats2021`` volume Dice/HD95 or ``brats2023`` lesion-wise scores.

    ``challenge`` (GLI, SSA, MEN, PED, MET) picks the BraTS 2023 dilation and lesion-size threshold,
    ``nsd_tolerance_mm`` the surface Dice tolerance; both only mean something for ``brats2023``.
    """

    name: str = "brats2021"
    challenge: str = "GLI"
    nsd_tolerance_mm: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in SCHEMES:
            raise UserError(f"unknown scoring scheme {self.name!r}; expected one of {list(SCHEMES)}")
        if self.challenge not in CHALLENGES:
            raise UserError(f"unknown challenge {self.challenge!r}; expected one of {list(CHALLENGES)}")
        if not self.nsd_tolerance_mm >= 0:  # also refuses NaN
            raise UserError(f"the NSD tolerance must be >= 0 mm, got {self.nsd_tolerance_mm}")

    @property
    def lesionwise(self) -> bool:
        return self.name == "brats2023"

    @property
    def settings(self) -> LesionwiseSettings:
        """The BraTS 2023 parameters of ``challenge`` with this scheme's NSD tolerance."""
        preset = CHALLENGE_SETTINGS[f"BraTS-{self.challenge}"]
        return replace(preset, nsd_tolerance_mm=float(self.nsd_tolerance_mm))

    @property
    def metrics(self) -> tuple[str, ...]:
        """The score columns of the CSV, in order; each gets its statistics in the summary."""
        return LESIONWISE_METRICS if self.lesionwise else METRICS

    @property
    def plot_metrics(self) -> tuple[str, ...]:
        """The metrics that get a box plot (one box per region)."""
        return REGION_METRICS if self.lesionwise else ("dice", "hd95")

    def info(self) -> dict:
        """What the brats2023 summary records about its rules, so a table can be reproduced; brats2021
        adds nothing (its summary keys stay those of earlier releases)."""
        if not self.lesionwise:
            return {}
        settings = self.settings
        return {
            "scheme": self.name,
            "challenge": self.challenge,
            "dilation_factor": settings.dilation_factor,
            "lesion_volume_thresh_mm3": settings.lesion_volume_thresh,
            "hd95_penalty_mm": settings.hd95_penalty_mm,
            "nsd_tolerance_mm": settings.nsd_tolerance_mm,
        }


def as_scheme(scheme: Scheme | str) -> Scheme:
    """``scheme`` itself, or the default ``Scheme`` of that name."""
    return scheme if isinstance(scheme, Scheme) else Scheme(scheme)


def default_scheme(convention: str) -> str:
    """``brats2023`` for data labelled the BraTS 2023 way (the challenges that rank lesion-wise), else
    ``brats2021``."""
    return "brats2023" if convention == "brats2023" else "brats2021"


def _score_case(
    case_id: str,
    pred_path: Path | None,
    gt_path: Path,
    gt_convention: LabelConvention,
    pred_convention: LabelConvention,
    scheme: Scheme = Scheme(),
) -> dict[str, float]:
    """One case's row: checked, then scored by ``scheme``; ``pred_path`` None scores an empty prediction."""
    gt, gt_affine, spacing = load_label_map(gt_path, case_id, "ground truth")
    if pred_path is None:
        check_label_values(gt, gt_convention, f"case {case_id}: ground truth {gt_path.name}")
        pred, pred_convention = np.zeros(gt.shape, np.uint8), gt_convention
    else:
        pred = checked_pair(case_id, pred_path, gt_path, gt, gt_affine, gt_convention, pred_convention)
    pred, gt = crop_to_labels(pred, gt, crop_margin(scheme))
    if not scheme.lesionwise:
        scores = case_scores(pred, gt, gt_convention.name, spacing, pred_convention.name)
        return {"case_id": case_id, **scores}
    scores = lesionwise_case_scores(
        pred, gt, gt_convention.name, spacing, scheme.settings, pred_convention.name
    )
    return {"case_id": case_id, **lesionwise_columns(scores, missing=pred_path is None)}


def lesionwise_columns(scores: dict[str, float], missing: bool = False) -> dict[str, float]:
    """A brats2023 row from ``lesionwise`` scores: ``LESIONWISE_METRICS`` (``dice_mean`` added) and the
    missing-prediction flag, so the command and the bundle handler write the same columns."""
    scores = {**scores, "dice_mean": float(np.mean([scores[f"dice_{r}"] for r in _SUFFIXES]))}
    return {**{m: scores[m] for m in LESIONWISE_METRICS}, MISSING_KEY: int(missing)}


def crop_to_labels(pred: np.ndarray, gt: np.ndarray, margin: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Both maps cut to the box around every nonzero voxel of either, grown by ``margin`` voxels.

    The box is over the last three (spatial) axes; leading axes (the region channels of [3, *spatial]
    masks) are kept whole. A BraTS tumour fills about 1 % of the 240x240x155 volume, so scoring the
    box is several times faster, and it gives the same numbers: Dice counts voxels that all lie in
    the box; MONAI's HD95 crops to the same masks' box itself (padding with zeros where the box meets
    the volume's edge, as the margin does here); the lesion-wise scores crop likewise, and a dilation
    of the truth by ``margin - 1`` voxels stays inside. Maps without any label are returned whole.
    """
    foreground = (pred != 0) | (gt != 0)
    foreground = foreground.reshape(-1, *foreground.shape[-3:]).any(0)
    box = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(foreground.any(axis=others))
        if hits.size == 0:
            return pred, gt
        box.append(slice(max(hits[0] - margin, 0), min(hits[-1] + 1 + margin, foreground.shape[axis])))
    return pred[(..., *box)], gt[(..., *box)]


def crop_margin(scheme: Scheme) -> int:
    """The ``crop_to_labels`` margin that leaves ``scheme``'s scores unchanged."""
    return 1 + (scheme.settings.dilation_factor if scheme.lesionwise else 0)


def score_folders(
    pred_dir: Path,
    gt_dir: Path,
    convention: str = "brats2021",
    pred_convention: str | None = None,
    scheme: Scheme | str = "brats2021",
    workers: int = 1,
    cases: Collection[str] | None = None,
) -> list[dict]:
    """Per-case rows ``{"case_id", <scheme.metrics>...}`` for every ground-truth case (or only
    ``cases``, e.g. one fold's), sorted by id.

    Every prediction needs a ground truth. A ground-truth case without a prediction is refused by
    ``brats2021`` (a partial inference run cannot pass for a full one); ``brats2023`` scores it as an
    empty prediction, as the challenges do (every lesion a false negative), flags it in its row
    (``pred_missing``) and logs one warning line listing such cases. ``workers`` processes score the
    cases; the rows are the same for any number.
    """
    scheme = as_scheme(scheme)
    gt_conv = get_convention(convention)
    pred_conv = get_convention(pred_convention or convention)
    gt_files, pred_files = find_ground_truth(Path(gt_dir)), find_predictions(Path(pred_dir))
    if cases is not None:
        unknown = sorted(set(cases) - gt_files.keys())
        if unknown:
            raise UserError(f"case(s) without ground truth in {gt_dir}: {', '.join(unknown)}")
        gt_files = {case_id: gt_files[case_id] for case_id in cases}
    extra = sorted(pred_files.keys() - gt_files.keys())
    missing = sorted(gt_files.keys() - pred_files.keys())
    if missing and not scheme.lesionwise:
        raise UserError(
            f"no prediction in {pred_dir} for {len(missing)} ground-truth case(s): {', '.join(missing)}"
        )
    if extra:
        raise UserError(f"prediction(s) without ground truth in {gt_dir}: {', '.join(extra)}")
    if missing:
        logger.warning(
            "no prediction in %s for %d ground-truth case(s), scored as empty predictions "
            "(every lesion a false negative): %s",
            pred_dir,
            len(missing),
            ", ".join(missing),
        )
    jobs = [
        (case_id, pred_files.get(case_id), gt_files[case_id], gt_conv, pred_conv, scheme)
        for case_id in sorted(gt_files)
    ]
    rows = map_cases(_score_case, jobs, workers)
    for row in rows:
        logger.debug("%s", row)
    return rows
