"""BraTS Dice/HD95 of a folder of predicted label maps against ground truth (``cggm-seg evaluate``).

Scores every case on its whole volume, in the ground truth's geometry and voxel spacing, so the
numbers compare with the BraTS leaderboards (per-case WT/TC/ET, then mean/std/median), and
refuses anything that would make them silently wrong: missing or extra cases, mismatched grids,
label values outside the chosen convention.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm

from cggm_seg.brats_labels import LabelConvention, case_id_from_filename, get_convention
from cggm_seg.errors import UserError
from cggm_seg.io import check_new_outputs, write_atomic, write_json
from cggm_seg.metrics.brats import DICE_KEYS, HD95_KEYS, case_scores

logger = logging.getLogger(__name__)

NIFTI = ".nii.gz"
# Prediction and ground truth count as one grid when their affines agree to this many mm
# (float32 headers written by different tools differ in the last digits, never by 1e-3 mm).
AFFINE_ATOL_MM = 1e-3
# One case's columns in the CSV and the summary: the three regions, then their per-case mean.
METRICS = (*DICE_KEYS, "dice_mean", *HD95_KEYS, "hd95_mean")
_MAX_LISTED_VALUES = 10


def check_label_values(labels: np.ndarray, convention: LabelConvention, where: str) -> None:
    """Raise a ``UserError`` naming ``where`` if ``labels`` holds values outside ``convention``."""
    values = np.unique(labels)
    bad = values[~np.isin(values, convention.labels)]
    if bad.size:
        shown = ", ".join(f"{v:g}" for v in bad[:_MAX_LISTED_VALUES])
        more = f" and {bad.size - _MAX_LISTED_VALUES} more" if bad.size > _MAX_LISTED_VALUES else ""
        raise UserError(f"{where} has label values [{shown}{more}] outside the {convention.name} set "
                        f"{list(convention.labels)}; is --convention right?")


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.name.endswith(NIFTI) and not p.name.startswith("."))


def _require_dir(folder: Path, option: str) -> None:
    if not folder.is_dir():
        raise UserError(f"{option} {folder} is not a folder")


def find_ground_truth(gt_dir: Path) -> dict[str, Path]:
    """Case id -> label file in a BraTS 2021/2023 root, an MSD root (``labelsTr``) or a flat folder."""
    _require_dir(gt_dir, "--gt")
    if (gt_dir / "labelsTr").is_dir():
        candidates = [(case_id_from_filename(p), p) for p in _nifti_files(gt_dir / "labelsTr")]
    else:
        candidates = [(case_id_from_filename(p), p) for p in _nifti_files(gt_dir)]
        for folder in sorted(p for p in gt_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            segs = [folder / f"{folder.name}{sep}seg{NIFTI}" for sep in "_-"]
            seg = next((p for p in segs if p.is_file()), None)
            if seg is not None:
                candidates.append((folder.name, seg))
            elif _nifti_files(folder):
                raise UserError(f"case folder {folder} has no {segs[0].name} or {segs[1].name}")
    found: dict[str, Path] = {}
    for case_id, path in candidates:
        if case_id in found:
            raise UserError(f"case {case_id} has two ground-truth files: {found[case_id]} and {path}")
        found[case_id] = path
    if not found:
        raise UserError(f"no ground-truth label files in {gt_dir}: expected <case>/<case>_seg{NIFTI} "
                        f"(BraTS 2021), <case>/<case>-seg{NIFTI} (BraTS 2023), labelsTr/<case>{NIFTI} (MSD) "
                        f"or <case>{NIFTI} / <case>_seg{NIFTI} files")
    return found


def find_predictions(pred_dir: Path) -> dict[str, Path]:
    """Case id -> predicted label map ``<case_id>.nii.gz`` directly inside ``pred_dir``."""
    _require_dir(pred_dir, "--pred")
    found = {p.name[: -len(NIFTI)]: p for p in _nifti_files(pred_dir)}
    if not found:
        raise UserError(f"no predictions in {pred_dir}: expected <case_id>{NIFTI} label maps")
    return found


def _load_label_map(path: Path, case_id: str, what: str) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """(3D labels, affine, voxel spacing in mm) of a NIfTI file; every failure names the case and file."""
    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
    except Exception as err:  # nibabel raises many types (ImageFileError, OSError, EOFError, zlib.error)
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"case {case_id}: cannot read {what} {path}: {reason}") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise UserError(f"case {case_id}: {what} {path} has shape {data.shape}; expected a 3D label map")
    return data, image.affine, [float(z) for z in image.header.get_zooms()[:3]]


def _score_case(case_id: str, pred_path: Path, gt_path: Path, gt_convention: LabelConvention,
                pred_convention: LabelConvention) -> dict[str, float]:
    gt, gt_affine, spacing = _load_label_map(gt_path, case_id, "ground truth")
    pred, pred_affine, _ = _load_label_map(pred_path, case_id, "prediction")
    if pred.shape != gt.shape:
        raise UserError(f"case {case_id}: prediction {pred_path.name} has shape {pred.shape} but the ground "
                        f"truth {gt_path.name} has {gt.shape}")
    affine_gap = float(np.abs(pred_affine - gt_affine).max())
    if affine_gap > AFFINE_ATOL_MM:
        raise UserError(f"case {case_id}: prediction {pred_path.name} has an affine that differs from the "
                        f"ground truth's by {affine_gap:.4g} (tolerance {AFFINE_ATOL_MM}); write it in the "
                        "ground truth's geometry")
    check_label_values(gt, gt_convention, f"case {case_id}: ground truth {gt_path.name}")
    check_label_values(pred, pred_convention, f"case {case_id}: prediction {pred_path.name}")
    return case_scores(pred, gt, gt_convention.name, spacing, pred_convention.name)


def score_folders(pred_dir: Path, gt_dir: Path, convention: str = "brats2021",
                  pred_convention: str | None = None) -> list[dict]:
    """Per-case rows ``{"case_id", dice_wt, ..., hd95_et}`` for every ground-truth case, sorted by id.

    Every ground-truth case needs a prediction and every prediction a ground truth, so a partial
    inference run cannot pass for a full one.
    """
    gt_conv = get_convention(convention)
    pred_conv = get_convention(pred_convention or convention)
    gt_files, pred_files = find_ground_truth(Path(gt_dir)), find_predictions(Path(pred_dir))
    missing = sorted(gt_files.keys() - pred_files.keys())
    if missing:
        raise UserError(f"no prediction in {pred_dir} for {len(missing)} ground-truth case(s): "
                        f"{', '.join(missing)}")
    extra = sorted(pred_files.keys() - gt_files.keys())
    if extra:
        raise UserError(f"prediction(s) without ground truth in {gt_dir}: {', '.join(extra)}")
    rows = []
    for case_id in tqdm(sorted(gt_files), desc="scoring", unit="case", disable=None):
        scores = _score_case(case_id, pred_files[case_id], gt_files[case_id], gt_conv, pred_conv)
        logger.debug("%s: %s", case_id, scores)
        rows.append({"case_id": case_id, **scores})
    return rows


def _with_means(row: dict) -> dict:
    """The row plus the per-case means over the three regions (what the paper reports as mean Dice)."""
    return {**row, "dice_mean": float(np.mean([row[k] for k in DICE_KEYS])),
            "hd95_mean": float(np.mean([row[k] for k in HD95_KEYS]))}


def summarise(rows: list[dict]) -> dict:
    """Mean, population std and median of every metric over the cases, and ``n_cases``."""
    if not rows:
        raise ValueError("no cases to summarise")
    table = np.array([[r[m] for m in METRICS] for r in map(_with_means, rows)], dtype=np.float64)
    summary: dict = {m: float(v) for m, v in zip(METRICS, table.mean(0), strict=True)}
    summary["n_cases"] = len(rows)
    summary.update({f"{m}_std": float(v) for m, v in zip(METRICS, table.std(0), strict=True)})
    summary.update({f"{m}_median": float(v) for m, v in zip(METRICS, np.median(table, 0), strict=True)})
    return summary


def format_summary(summary: dict) -> str:
    """The summary as a small text table: one metric a line, Dice to 4 decimals, HD95 in mm to 2."""
    lines = [f"{'metric':<10}{'mean':>10}{'std':>10}{'median':>10}"]
    for m in METRICS:
        digits = 4 if m.startswith("dice") else 2
        lines.append(f"{m:<10}" + "".join(f"{summary[m + s]:>10.{digits}f}" for s in ("", "_std", "_median")))
    lines.append(f"n cases: {summary['n_cases']}")
    return "\n".join(lines)


def write_scores(rows: Sequence[dict], csv_path: Path, summary_path: Path, force: bool = False) -> dict:
    """Write the per-case CSV and the summary JSON; returns the summary."""
    check_new_outputs((csv_path, summary_path), force)  # both, before writing either
    summary = summarise(list(rows))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case_id", *METRICS])
    for row in map(_with_means, rows):
        writer.writerow([row["case_id"], *(f"{row[m]:.6f}" for m in METRICS)])
    write_atomic(csv_path, lambda tmp: tmp.write_text(buffer.getvalue()), overwrite=force)
    write_json(summary_path, summary, overwrite=force)
    return summary
