"""Where the label maps of ``cggm-seg evaluate`` are, and whether a pair of them can be scored.

Finds the ground truth of a BraTS 2021, BraTS 2023 or MSD Task01 root (or a flat folder) and the
predicted ``<case_id>.nii.gz`` maps, tells the label convention a root's layout implies, and loads a
case's label maps, refusing with a one-line error naming the case anything that cannot be scored
right: an unreadable file, another shape or affine, label values outside the convention.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from cggm_seg.brats_labels import LabelConvention, case_id_from_filename
from cggm_seg.errors import UserError

NIFTI = ".nii.gz"
# Prediction and ground truth count as one grid when their affines agree to this many mm
# (float32 headers written by different tools differ in the last digits, never by 1e-3 mm).
AFFINE_ATOL_MM = 1e-3
_MAX_LISTED_VALUES = 10


def _listed(values: np.ndarray) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:_MAX_LISTED_VALUES])
    more = f" and {values.size - _MAX_LISTED_VALUES} more" if values.size > _MAX_LISTED_VALUES else ""
    return f"[{shown}{more}]"


def check_label_values(labels: np.ndarray, convention: LabelConvention, where: str) -> None:
    """Raise a ``UserError`` naming ``where`` if ``labels`` holds values outside ``convention``.

    Non-integer values (probabilities, resampling with linear interpolation) get their own message:
    the fix is a different one from choosing another convention. Integer values stored as floats
    (common in NIfTI label maps) are fine.
    """
    values = np.unique(labels)
    if values.dtype.kind == "f":
        fractional = values[~(np.isfinite(values) & (np.round(values) == values))]
        if fractional.size:
            raise UserError(
                f"{where} has non-integer label values {_listed(fractional)}; expected a label "
                f"map of {convention.name} labels {list(convention.labels)} (threshold or argmax "
                "probabilities, resample with nearest neighbour)"
            )
    bad = values[~np.isin(values, convention.labels)]
    if bad.size:
        raise UserError(
            f"{where} has label values {_listed(bad)} outside the {convention.name} set "
            f"{list(convention.labels)}; is --convention right?"
        )


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.name.endswith(NIFTI) and not p.name.startswith(".")
    )


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
        raise UserError(
            f"no ground-truth label files in {gt_dir}: expected <case>/<case>_seg{NIFTI} "
            f"(BraTS 2021), <case>/<case>-seg{NIFTI} (BraTS 2023), labelsTr/<case>{NIFTI} (MSD) "
            f"or <case>{NIFTI} / <case>_seg{NIFTI} files"
        )
    return found


def find_predictions(pred_dir: Path) -> dict[str, Path]:
    """Case id -> predicted label map ``<case_id>.nii.gz`` directly inside ``pred_dir``."""
    _require_dir(pred_dir, "--pred")
    found = {p.name[: -len(NIFTI)]: p for p in _nifti_files(pred_dir)}
    if not found:
        raise UserError(f"no predictions in {pred_dir}: expected <case_id>{NIFTI} label maps")
    return found


def layout_convention(gt_dir: Path) -> str:
    """The label convention a ground-truth root's layout implies: ``msd`` for ``labelsTr``,
    ``brats2023`` when every case folder holds ``<case>-seg.nii.gz`` (the 2023 names), else ``brats2021``.

    A flat folder of label maps says nothing about its labels, so it gets the historical default.
    """
    if (Path(gt_dir) / "labelsTr").is_dir():
        return "msd"
    labels = find_ground_truth(Path(gt_dir)).values()
    in_folders = [p for p in labels if p.parent != Path(gt_dir)]
    if in_folders and len(in_folders) == len(labels) and all(p.name.endswith(f"-seg{NIFTI}") for p in labels):
        return "brats2023"
    return "brats2021"


def load_label_map(path: Path, case_id: str, what: str) -> tuple[np.ndarray, np.ndarray, list[float]]:
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


def checked_pair(
    case_id: str,
    pred_path: Path,
    gt_path: Path,
    gt: np.ndarray,
    gt_affine: np.ndarray,
    gt_convention: LabelConvention,
    pred_convention: LabelConvention,
) -> np.ndarray:
    """The prediction's labels once both maps are known to share a grid and hold their conventions' labels.

    The checks run in the order of earlier releases, so a case with several problems reports the same one.
    """
    pred, pred_affine, _ = load_label_map(pred_path, case_id, "prediction")
    if pred.shape != gt.shape:
        raise UserError(
            f"case {case_id}: prediction {pred_path.name} has shape {pred.shape} but the ground "
            f"truth {gt_path.name} has {gt.shape}"
        )
    affine_gap = float(np.abs(pred_affine - gt_affine).max())
    if affine_gap > AFFINE_ATOL_MM:
        raise UserError(
            f"case {case_id}: prediction {pred_path.name} has an affine that differs from the "
            f"ground truth's by {affine_gap:.4g} (tolerance {AFFINE_ATOL_MM}); write it in the "
            "ground truth's geometry"
        )
    check_label_values(gt, gt_convention, f"case {case_id}: ground truth {gt_path.name}")
    check_label_values(pred, pred_convention, f"case {case_id}: prediction {pred_path.name}")
    return pred
