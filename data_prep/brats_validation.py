"""Checks on one BraTS case's files, run before any datalist names them.

Training fails late and obscurely on a truncated volume, a label map with a stray value or a
sequence registered to another grid, so every case is checked up front: each file opens as
NIfTI and holds all its data, every file of the case has the same shape and affine, the image
has the dimensions its layout implies and only finite values (one NaN makes the normalised volume,
the loss and then every weight NaN), and the label map holds integers of the layout's label
convention. Each problem is returned as one line ``<case id>: <file name>: <what is wrong>``.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from cggm_seg.brats_labels import SEQUENCES, get_convention

# Largest difference allowed between two files' affines (mm, and direction-cosine units):
# covers float32 header rounding, far below anything that would misalign voxels.
AFFINE_ATOL = 1e-3
_READ_ERRORS = (OSError, ValueError, zlib.error, ImageFileError, HeaderDataError)
_CHUNK = 1 << 22


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case: four 3-D sequences in ``SEQUENCES`` order, or one 4-D image (MSD).

    A file that is missing, or ambiguous because it is duplicated, is None: the scan has reported it,
    and the case's other files are still checked so that one run lists every problem.
    """

    case_id: str
    images: tuple[Path | None, ...]
    label: Path | None

    @property
    def files(self) -> tuple[Path, ...]:
        """The files that are there, images first."""
        return tuple(p for p in (*self.images, self.label) if p is not None)


class _Unreadable(Exception):
    """A file that cannot serve as NIfTI; the message says why."""


def _stored_bytes(path: Path) -> int:
    """Bytes the file holds once decompressed; reading a gzip stream to its end verifies its checksum."""
    if not path.name.endswith(".gz"):
        return path.stat().st_size
    total = 0
    with gzip.open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            total += len(chunk)
    return total


def _open_complete(path: Path) -> nib.Nifti1Image:
    """Open ``path`` and make sure its data are all there (a header alone reads fine from a cut file)."""
    try:
        image = nib.load(path)
        stored = _stored_bytes(path)
    except EOFError:
        raise _Unreadable("truncated: the compressed stream ends early") from None
    except _READ_ERRORS as err:
        raise _Unreadable(f"not a readable NIfTI file ({err})") from None
    needed = int(image.header.get_data_offset()) + int(np.prod(image.shape)) * image.get_data_dtype().itemsize
    if stored < needed:
        raise _Unreadable(f"truncated: holds {stored} of the {needed} bytes its header announces")
    return image


def _dimension_problem(shape: tuple[int, ...], four_d: bool) -> str | None:
    if four_d and (len(shape) != 4 or shape[3] != len(SEQUENCES)):
        return (
            f"expected a 4-D image with {len(SEQUENCES)} channels (FLAIR, T1w, T1gd, T2w), "
            f"found shape {shape}"
        )
    if not four_d and len(shape) != 3:
        return f"expected a 3-D volume, found shape {shape}"
    return None


def _non_finite_problem(image: nib.Nifti1Image) -> str | None:
    try:
        data = np.asanyarray(image.dataobj)
    except _READ_ERRORS as err:
        return f"image data unreadable ({err})"
    if data.dtype.kind not in "fc":
        return None
    nan, infinite = int(np.isnan(data).sum()), int(np.isinf(data).sum())
    if nan or infinite:
        return f"{nan} NaN and {infinite} infinite voxel(s); training on them would make every weight NaN"
    return None


def _label_problem(image: nib.Nifti1Image, layout: str) -> str | None:
    allowed = get_convention(layout).labels
    try:
        values = np.unique(np.asanyarray(image.dataobj))
    except _READ_ERRORS as err:
        return f"label data unreadable ({err})"
    fractional = values[values != np.round(values)]
    if fractional.size:
        return f"non-integer label values (e.g. {fractional[0]}); expected integers in {set(allowed)}"
    unexpected = sorted(set(values.astype(np.int64).tolist()) - set(allowed))
    if unexpected:
        return f"label values {unexpected} outside the {layout} set {set(allowed)}"
    return None


def check_case(case: CaseFiles, layout: str) -> list[str]:
    """Every problem of ``case`` read as ``layout`` (brats2021, brats2023 or msd), one line each."""
    problems: list[str] = []

    def report(path: Path, text: str) -> None:
        problems.append(f"{case.case_id}: {path.name}: {text}")

    usable: dict[Path, nib.Nifti1Image] = {}
    for path in case.files:
        try:
            image = _open_complete(path)
        except _Unreadable as err:
            report(path, str(err))
            continue
        wrong = _dimension_problem(image.shape, four_d=layout == "msd" and path != case.label)
        if wrong:
            report(path, wrong)
        else:
            usable[path] = image
    for path, image in usable.items():
        wrong = _label_problem(image, layout) if path == case.label else _non_finite_problem(image)
        if wrong:
            report(path, wrong)
    if len(usable) < 2:
        return problems
    ref_path, ref = next(iter(usable.items()))
    for path, image in list(usable.items())[1:]:
        if image.shape[:3] != ref.shape[:3]:
            report(path, f"shape {image.shape[:3]} differs from {ref_path.name}'s {ref.shape[:3]}")
        gap = float(np.max(np.abs(image.affine - ref.affine)))
        if gap > AFFINE_ATOL:
            report(
                path, f"affine differs from {ref_path.name}'s by up to {gap:.4g} (tolerance {AFFINE_ATOL})"
            )
    return problems
