"""MONAI dictionary transforms between BraTS label maps and the (TC, WT, ET) region channels.

MONAI's ``ConvertToMultiChannelBasedOnBratsClassesd`` knows only the 2017-2021 labels;
these take the layout's convention (``cggm_seg.brats_labels``) so BraTS 2023 and MSD
data train and export correctly too.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type

from cggm_seg.brats_labels import get_convention


class _ConventionTransform(MapTransform):
    """A dictionary transform that needs the dataset layout's label convention."""

    def __init__(self, keys: KeysCollection, convention: str = "brats2021", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.convention = get_convention(convention)


class LabelsToRegionsd(_ConventionTransform):
    """Label map ``[1, *spatial]`` -> float region channels ``[3, *spatial]`` (TC, WT, ET)."""

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            labels = np.asarray(label.detach().cpu() if isinstance(label, torch.Tensor) else label)
            masks = self.convention.region_masks(np.rint(labels[0]).astype(np.int64))
            d[key] = convert_to_dst_type(masks.astype(np.float32), label, dtype=torch.float32)[0]
        return d


class RegionsToLabelsd(_ConventionTransform):
    """Binary region channels ``[3, *spatial]`` -> label map ``[1, *spatial]`` in the convention's values."""

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            regions = d[key]
            masks = np.asarray(regions.detach().cpu() if isinstance(regions, torch.Tensor) else regions) > 0.5
            label = self.convention.label_map(masks)[None]
            out = convert_to_dst_type(label, regions, dtype=torch.uint8)[0]
            if isinstance(out, MetaTensor):
                out.meta = dict(regions.meta) if isinstance(regions, MetaTensor) else out.meta
            d[key] = out
        return d
