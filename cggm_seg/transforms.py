"""MONAI dictionary transforms for BraTS cases: loading that names the case and file it cannot read, and
label maps <-> (TC, WT, ET) region channels.

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
from monai.transforms import LoadImaged, MapTransform
from monai.utils import convert_to_dst_type

from cggm_seg.brats_labels import case_id_from_filename, get_convention
from cggm_seg.errors import UserError


class LoadCaseImaged(LoadImaged):
    """MONAI's ``LoadImaged``; a file that cannot be read is one line naming the case and the file.

    Without it a file damaged after ``prepare`` (a truncated ``.nii.gz``) ends training in pages of
    loader tracebacks (``EOFError: Compressed file ended ...``) that name neither.
    """

    def __call__(self, data: Mapping[Hashable, object], reader: object = None) -> dict[Hashable, object]:
        try:
            return super().__call__(data, reader)
        except UserError:
            raise
        except Exception as err:
            path = self._unreadable_file(data)
            case = data.get("case_id") or case_id_from_filename(path)
            reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            raise UserError(f"case {case}: cannot read {path} (LoadImaged: {reason})") from err

    def _unreadable_file(self, data: Mapping[Hashable, object]) -> str:
        """The first of the keys' files that does not load on its own (else all of them: they load one by
        one, but not together, e.g. of different shapes)."""
        paths = [
            str(p)
            for key in self.key_iterator(dict(data))
            for p in (data[key] if isinstance(data[key], (list, tuple)) else [data[key]])
        ]
        for path in paths:
            try:
                self._loader(path)
            except Exception:
                return path
        return ", ".join(paths)


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
