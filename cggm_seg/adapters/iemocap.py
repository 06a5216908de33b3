"""IEMOCAP 4-class emotion recognition from its two public layouts.

- MulT pickle (``iemocap_data.pkl``, ``iemocap_data_noalign.pkl``): ``{split: {"text", "audio",
  "vision": [N, T, D], "labels": [N, 4, 2]}}``; ``labels[n, e]`` is the one-hot (absent,
  present) pair of emotion ``e`` (MulT's order: neutral, happy, sad, angry). The class is
  the emotion marked present; exactly one per sample is required.
- The feature folder the CGGM authors use (MMIN's layout)::

      ROOT/L/<text_type>.h5   ROOT/A/<audio_type>.h5   ROOT/V/<vision_type>.h5
      ROOT/A/comparE_mean_std.h5                    <cv>/mean, <cv>/std: [D] training statistics
      ROOT/target/<cv>/{trn,val,tst}_label.npy      [N, 4] one-hot (or [N] class indices)
      ROOT/target/<cv>/{trn,val,tst}_int2name.npy   [N] or [N, 1] utterance names (bytes or str)

  Assumption (as the authors' loader reads them): each h5 file holds one dataset per
  utterance at its top level, named by the utterance, of shape ``[T, D]`` with ``T``
  varying; sample ``i`` of a split is utterance ``int2name[i]``. Feature types default to
  the authors' (``bert_large``, ``comparE``, ``denseface``); feature sizes come from the
  files (the real ones are 1024, 130 and 342). ComParE features are raw openSMILE values,
  so, as the authors' loader does, ``comparE`` audio is always normalised with the fold's
  ``<cv>/mean`` and ``<cv>/std`` from ``A/comparE_mean_std.h5`` and a folder without that
  file is refused; any other modality is normalised the same way when its
  ``<dir>/<type>_mean_std.h5`` exists. Files are opened lazily in each DataLoader worker.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from cggm_seg.adapters.sequence_core import (
    LABEL_KEY,
    SPEECH_MODALITIES,
    SPLITS,
    SequenceDataset,
    check_sample_counts,
    check_split,
    load_pickle_splits,
    require_keys,
    speech_features,
)
from cggm_seg.errors import UserError
from cggm_seg.io import safe_load_npy

MODALITIES = SPEECH_MODALITIES
NUM_CLASSES = 4
FEATURE_DIRS = {"text": "L", "audio": "A", "vision": "V"}
DEFAULT_FEATURE_TYPES = {"text": "bert_large", "audio": "comparE", "vision": "denseface"}
H5_SPLIT_NAMES = {"train": "trn", "valid": "val", "test": "tst"}
#: feature types the authors' loader always normalises with their statistics file (raw openSMILE values)
NORMALISED_TYPES = ("comparE",)


def stats_path(feature_path: Path) -> Path:
    """The per-fold normalisation statistics beside a feature file: ``<dir>/<type>_mean_std.h5``."""
    return feature_path.with_name(f"{feature_path.stem}_mean_std.h5")


def _one_hot_classes(one_hot: np.ndarray, where: str) -> np.ndarray:
    """Class index of each one-hot row; rows must hold one 1 and otherwise 0."""
    valid_values = np.isin(one_hot, (0, 1)).all(axis=1)
    bad = ~valid_values | (one_hot.sum(axis=1) != 1)
    if bad.any():
        raise UserError(
            f"{where}: each sample needs exactly one of the {NUM_CLASSES} emotions marked 1; "
            f"{int(bad.sum())} sample(s) do not, first at {int(np.argwhere(bad)[0][0])}"
        )
    return one_hot.argmax(axis=1).astype(np.int64)


def _mult_labels(value: Any, where: str) -> np.ndarray:
    labels = np.asarray(value)
    if labels.ndim != 3 or labels.shape[1:] != (NUM_CLASSES, 2) or not np.issubdtype(labels.dtype, np.number):
        raise UserError(
            f"{where}: expected labels [N, {NUM_CLASSES}, 2], found {labels.dtype} {labels.shape}"
        )
    return _one_hot_classes(labels[:, :, 1], where)


def _target_labels(value: np.ndarray, where: str) -> np.ndarray:
    if value.ndim == 2 and value.shape[1] == NUM_CLASSES and np.issubdtype(value.dtype, np.number):
        return _one_hot_classes(value, where)
    if (
        value.ndim == 1
        and np.issubdtype(value.dtype, np.integer)
        and value.size
        and value.min() >= 0
        and value.max() < NUM_CLASSES
    ):
        return value.astype(np.int64)
    raise UserError(
        f"{where}: expected one-hot labels [N, {NUM_CLASSES}] or class indices [N] in "
        f"0..{NUM_CLASSES - 1}, found {value.dtype} {value.shape}"
    )


def _utterance_names(value: np.ndarray, where: str) -> list[str]:
    if value.ndim == 2 and value.shape[1] == 1:
        value = value[:, 0]
    if value.ndim != 1 or not all(isinstance(v, (bytes, str, np.bytes_, np.str_)) for v in value):
        raise UserError(f"{where}: expected [N] or [N, 1] utterance names, found {value.dtype} {value.shape}")
    return [v.decode() if isinstance(v, bytes) else str(v) for v in value]


def _open_h5(path: Path) -> h5py.File:
    if not path.is_file():
        raise UserError(f"{path}: feature file not found")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise UserError(f"{path}: not a readable HDF5 file ({err})") from err


class IEMOCAPFeatureDataset(Dataset):
    """One split of the h5 feature folder; samples as :class:`SequenceDataset` yields them.

    Validation (every utterance present in every file as ``[T, D]`` with one ``D`` per
    modality) reads only h5 metadata, so it is cheap even for the full corpus.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        cv: int | str = 1,
        feature_types: Mapping[str, str] | None = None,
    ) -> None:
        root = Path(root)
        unknown = sorted(set(feature_types or {}) - set(MODALITIES))
        if unknown:
            raise UserError(f"feature_types: unknown modalities {unknown}; expected {list(MODALITIES)}")
        types = {**DEFAULT_FEATURE_TYPES, **(feature_types or {})}
        target = root / "target" / str(cv)
        prefix = H5_SPLIT_NAMES[check_split(split)]
        label_path, names_path = target / f"{prefix}_label.npy", target / f"{prefix}_int2name.npy"
        self.labels = _target_labels(safe_load_npy(label_path), str(label_path))
        self.names = _utterance_names(safe_load_npy(names_path), str(names_path))
        check_sample_counts(
            {label_path.name: len(self.labels), names_path.name: len(self.names)}, str(target)
        )
        self.paths = {name: root / FEATURE_DIRS[name] / f"{types[name]}.h5" for name in MODALITIES}
        self.dims = {name: self._check_file(path) for name, path in self.paths.items()}
        self.stats = {
            name: self._stats(
                stats_path(path), str(cv), self.dims[name], required=types[name] in NORMALISED_TYPES
            )
            for name, path in self.paths.items()
        }
        self._files: dict[str, h5py.File] | None = None

    def _check_file(self, path: Path) -> int:
        dims = set()
        with _open_h5(path) as h5:
            for utterance in self.names:
                item = h5.get(utterance)
                if not isinstance(item, h5py.Dataset) or item.ndim != 2:
                    found = "nothing" if item is None else f"a {type(item).__name__}"
                    if isinstance(item, h5py.Dataset):
                        found += f" of shape {item.shape}"
                    raise UserError(
                        f"{path}: utterance '{utterance}' should be a [T, D] dataset, found {found}"
                    )
                dims.add(item.shape[1])
        if len(dims) != 1:
            raise UserError(f"{path}: utterances have different feature sizes {sorted(dims)}")
        return dims.pop()

    @staticmethod
    def _stats(path: Path, cv: str, dim: int, required: bool) -> tuple[np.ndarray, np.ndarray] | None:
        if not path.is_file():
            if required:
                raise UserError(
                    f"{path}: not found; {path.stem.removesuffix('_mean_std')} features are "
                    f"normalised with fold {cv}'s training statistics '{cv}/mean' and "
                    f"'{cv}/std' from this file, which MMIN ships with the features"
                )
            return None
        with _open_h5(path) as h5:
            require_keys(h5.get(cv), ["mean", "std"], f"{path}['{cv}']")
            mean, std = (np.asarray(h5[cv][key][()], dtype=np.float32).reshape(-1) for key in ("mean", "std"))
        if mean.shape != (dim,) or std.shape != (dim,):
            raise UserError(
                f"{path}: mean and std must have {dim} values, found {mean.shape} and {std.shape}"
            )
        return mean, np.where(std == 0, 1.0, std).astype(np.float32)

    def feature_dims(self) -> dict[str, int]:
        """Modality -> feature size, in modality order."""
        return dict(self.dims)

    def __len__(self) -> int:
        return len(self.labels)

    def __getstate__(self) -> dict[str, Any]:
        # h5py handles cannot cross process boundaries; each DataLoader worker reopens them.
        return {**self.__dict__, "_files": None}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self._files is None:
            self._files = {name: _open_h5(path) for name, path in self.paths.items()}
        sample = {}
        for name, h5 in self._files.items():
            steps = np.asarray(h5[self.names[index]][()], dtype=np.float32)
            if not np.isfinite(steps).all():
                raise UserError(f"{self.paths[name]}: utterance '{self.names[index]}' has non-finite values")
            if self.stats[name] is not None:
                mean, std = self.stats[name]
                steps = (steps - mean) / std
            if len(steps) == 0:  # keep one zero step so a batch never has an empty sequence
                steps = np.zeros((1, self.dims[name]), np.float32)
            sample[name] = torch.from_numpy(steps)
        sample[LABEL_KEY] = torch.tensor(self.labels[index])
        return sample


def _mult_split(split_data: Any, where: str) -> SequenceDataset:
    features = speech_features(split_data, where)
    require_keys(split_data, ["labels"], where)
    labels = _mult_labels(split_data["labels"], f"{where}['labels']")
    counts = {name: len(array) for name, array in features.items()}
    check_sample_counts(counts | {"labels": len(labels)}, where)
    return SequenceDataset(features, labels)


def load_iemocap(
    path: str | os.PathLike,
    splits: Sequence[str] = SPLITS,
    cv: int | str = 1,
    feature_types: Mapping[str, str] | None = None,
) -> dict[str, Dataset]:
    """Load IEMOCAP splits: a MulT pickle when ``path`` is a file, the h5 feature folder when a directory.

    ``cv`` (the fold under ``target/``) and ``feature_types`` apply to the folder layout only.
    """
    path = Path(path)
    if path.is_dir():
        return {split: IEMOCAPFeatureDataset(path, split, cv, feature_types) for split in splits}
    data = load_pickle_splits(path, splits)
    return {split: _mult_split(data[split], f"{path}['{split}']") for split in splits}
