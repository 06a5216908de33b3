"""BraTS label conventions and the region <-> label-map conversions that depend on them.

Regions are always ordered (TC, WT, ET), the order of MONAI's
``ConvertToMultiChannelBasedOnBratsClasses``. Each dataset layout labels the same
tissues differently, so every conversion takes the layout's convention by name.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cggm_seg.errors import UserError

REGIONS = ("TC", "WT", "ET")
# Fixed order of the four sequences in every datalist entry and every 4-channel image.
SEQUENCES = ("flair", "t1", "t1ce", "t2")
# File-name endings that follow the case id: label files and the BraTS 2021 / 2023 sequences.
_CASE_SUFFIX = re.compile(r"[_-](seg|flair|t1|t1ce|t2|t2f|t1n|t1c|t2w)$")


@dataclass(frozen=True)
class LabelConvention:
    """Which label values a layout uses and which of them make each region."""

    name: str
    labels: tuple[int, ...]  # every value allowed in a label file, background 0 included
    regions: dict[str, tuple[int, ...]]  # region -> label values inside it
    painting: tuple[tuple[str, int], ...]  # (region, label) painted in order: outer region first

    def region_masks(self, label_map: np.ndarray) -> np.ndarray:
        """Boolean array [3, *spatial] of (TC, WT, ET) for a label map."""
        return np.stack([np.isin(label_map, self.regions[r]) for r in REGIONS])

    def label_map(self, region_masks: np.ndarray) -> np.ndarray:
        """Label map from (TC, WT, ET) masks; nesting ET in TC in WT is enforced by painting order."""
        masks = np.asarray(region_masks).astype(bool)
        out = np.zeros(masks.shape[1:], dtype=np.uint8)
        for region, value in self.painting:
            out[masks[REGIONS.index(region)]] = value
        return out


CONVENTIONS: dict[str, LabelConvention] = {
    # BraTS 2017-2021: 1 necrotic/non-enhancing core, 2 oedema, 4 enhancing tumour.
    "brats2021": LabelConvention(
        "brats2021",
        (0, 1, 2, 4),
        {"TC": (1, 4), "WT": (1, 2, 4), "ET": (4,)},
        (("WT", 2), ("TC", 1), ("ET", 4)),
    ),
    # BraTS 2023 GLI: 1 necrotic core, 2 oedema, 3 enhancing tumour.
    "brats2023": LabelConvention(
        "brats2023",
        (0, 1, 2, 3),
        {"TC": (1, 3), "WT": (1, 2, 3), "ET": (3,)},
        (("WT", 2), ("TC", 1), ("ET", 3)),
    ),
    # MSD Task01_BrainTumour: 1 oedema, 2 non-enhancing tumour, 3 enhancing tumour.
    "msd": LabelConvention(
        "msd",
        (0, 1, 2, 3),
        {"TC": (2, 3), "WT": (1, 2, 3), "ET": (3,)},
        (("WT", 1), ("TC", 2), ("ET", 3)),
    ),
}


def get_convention(name: str) -> LabelConvention:
    """The convention called ``name``; a clear error names the valid ones."""
    try:
        return CONVENTIONS[name]
    except KeyError:
        raise UserError(f"unknown label convention {name!r}; expected one of {sorted(CONVENTIONS)}") from None


def case_id_from_filename(name: str | os.PathLike) -> str:
    """Case id of a BraTS file name: ``X_flair.nii.gz``, ``X-seg.nii.gz``, ``X.nii.gz`` ... -> ``X``."""
    base = re.sub(r"\.nii(\.gz)?$", "", Path(name).name)
    return _CASE_SUFFIX.sub("", base)
