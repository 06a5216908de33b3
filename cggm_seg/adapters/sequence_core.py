"""What the CMU-MOSI, IEMOCAP and Food-101 loaders share: validation, the dataset, batching.

Every sequence dataset yields samples ``{modality: FloatTensor[T_i, D], "label": Tensor}``
where ``T_i`` is that sample's number of valid steps (padding already removed). The
``pad_collate`` function pads each modality to the longest sample of the batch and adds
``"lengths": {modality: LongTensor[B]}``; ``prepare_sequence_batch`` hands MONAI's engines
``(inputs, targets)`` with ``inputs`` that dict minus the label. So fixed-length arrays and
variable-length h5 features reach the network in one form.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ignite.utils import convert_tensor
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

from cggm_seg.errors import UserError
from cggm_seg.io import safe_load_pickle

#: Modality order of the CMU-MOSI and IEMOCAP networks (MulT's L, A, V).
SPEECH_MODALITIES = ("text", "audio", "vision")
#: The split names every loader takes; each format maps them to its own file or key names.
SPLITS = ("train", "valid", "test")
LABEL_KEY = "label"
LENGTHS_KEY = "lengths"


def check_split(split: str) -> str:
    """Return ``split`` if it is one of :data:`SPLITS`, else raise a UserError."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return split


def require_keys(mapping: Any, keys: Sequence[str], where: str) -> None:
    """Raise a UserError naming ``where`` and the missing keys if ``mapping`` lacks any of ``keys``."""
    if not isinstance(mapping, Mapping):
        raise UserError(f"{where}: expected a dict with keys {list(keys)}, found {type(mapping).__name__}")
    missing = [key for key in keys if key not in mapping]
    if missing:
        raise UserError(f"{where}: missing key(s) {missing}; found {sorted(map(str, mapping))}")


def feature_array(value: Any, where: str, zero_neg_inf: bool = False) -> np.ndarray:
    """Validate a ``[N, T, D]`` numeric feature array and return it as float32.

    ``zero_neg_inf`` replaces ``-inf`` by 0 (the MulT CMU-MOSI audio features hold some);
    any other non-finite value is an error.
    """
    array = np.asarray(value)
    if array.ndim != 3 or not np.issubdtype(array.dtype, np.number):
        raise UserError(f"{where}: expected a numeric array [N, T, D], found {array.dtype} {array.shape}")
    array = array.astype(np.float32)
    if zero_neg_inf:
        array[array == -np.inf] = 0.0
    bad = ~np.isfinite(array)
    if bad.any():
        raise UserError(
            f"{where}: {int(bad.sum())} non-finite value(s), first at sample {np.argwhere(bad)[0][0]}"
        )
    return array


def check_sample_counts(counts: Mapping[str, int], where: str) -> int:
    """All arrays of a split must describe the same samples; return their number."""
    if len(set(counts.values())) != 1:
        raise UserError(f"{where}: arrays disagree on the number of samples: {dict(counts)}")
    count = next(iter(counts.values()))
    if count == 0:
        raise UserError(f"{where}: the split has no samples")
    return count


def lengths_array(value: Any, count: int, max_length: int, where: str) -> np.ndarray:
    """Validate per-sample valid lengths; clipped to [1, max_length] (a 0-length sample keeps one step)."""
    lengths = np.asarray(value).reshape(-1)
    if lengths.shape[0] != count or not np.issubdtype(lengths.dtype, np.number):
        raise UserError(f"{where}: expected {count} lengths, found {lengths.dtype} {lengths.shape}")
    return np.clip(lengths.astype(np.int64), 1, max_length)


def load_pickle_splits(path: str | os.PathLike, splits: Sequence[str]) -> Mapping[str, Any]:
    """Safely unpickle a ``{split: {...}}`` file (MulT / MMSA layouts) and check it has ``splits``."""
    for split in splits:
        check_split(split)
    data = safe_load_pickle(path)
    require_keys(data, list(splits), str(path))
    return data


def speech_features(split_data: Any, where: str) -> dict[str, np.ndarray]:
    """The ``text``/``audio``/``vision`` arrays of one MulT/MMSA split, validated; audio ``-inf`` -> 0.

    MulT's COVAREP audio features hold ``-inf`` values; MulT and CGGM set them to 0.
    """
    require_keys(split_data, SPEECH_MODALITIES, where)
    return {
        name: feature_array(split_data[name], f"{where}['{name}']", zero_neg_inf=name == "audio")
        for name in SPEECH_MODALITIES
    }


@dataclass(frozen=True)
class _MappedFile:
    path: str


def _reopen(value: Any) -> Any:
    return np.load(value.path, mmap_mode="r") if isinstance(value, _MappedFile) else value


class SequenceDataset(Dataset):
    """Samples from per-modality arrays ``[N, T, D]`` (in memory or memory-mapped).

    Args:
        features: modality name -> array ``[N, T_m, D_m]``; the order is the modality order.
        labels: ``[N]`` int64 class indices or ``[N, 1]`` float32 regression targets.
        lengths: optional modality name -> ``[N]`` valid steps; steps after them are padding.
    """

    def __init__(
        self,
        features: Mapping[str, np.ndarray],
        labels: np.ndarray,
        lengths: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        self.features = dict(features)
        self.labels = labels
        self.lengths = dict(lengths or {})

    def feature_dims(self) -> dict[str, int]:
        """Modality -> feature size, in modality order (what the network's ``input_dims`` takes)."""
        return {name: int(array.shape[-1]) for name, array in self.features.items()}

    def __len__(self) -> int:
        return len(self.labels)

    def __getstate__(self) -> dict[str, Any]:
        # pickling a memory map copies all its data; DataLoader workers that are not forked
        # (spawn, forkserver) would each get the whole feature file: send the file name instead
        features = {
            name: _MappedFile(str(array.filename)) if isinstance(array, np.memmap) else array
            for name, array in self.features.items()
        }
        return {**self.__dict__, "features": features}

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["features"] = {name: _reopen(value) for name, value in state["features"].items()}
        self.__dict__.update(state)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = {}
        for name, array in self.features.items():
            steps = array[index]
            if name in self.lengths:
                steps = steps[: self.lengths[name][index]]
            sample[name] = torch.as_tensor(np.asarray(steps, dtype=np.float32))
        sample[LABEL_KEY] = torch.as_tensor(self.labels[index])
        return sample


def pad_collate(batch: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, Any]:
    """Pad each modality to the batch's longest sample (zeros) and record the valid lengths."""
    if not batch:
        raise ValueError("pad_collate got an empty batch")
    collated: dict[str, Any] = {}
    lengths: dict[str, torch.Tensor] = {}
    for name in batch[0]:
        if name == LABEL_KEY:
            continue
        steps = [sample[name] for sample in batch]
        lengths[name] = torch.tensor([s.shape[0] for s in steps], dtype=torch.long)
        collated[name] = pad_sequence(steps, batch_first=True)
    collated[LENGTHS_KEY] = lengths
    collated[LABEL_KEY] = torch.stack([sample[LABEL_KEY] for sample in batch])
    return collated


def prepare_sequence_batch(
    batchdata: Mapping[str, Any],
    device: str | torch.device | None = None,
    non_blocking: bool = False,
    **kwargs: Any,
) -> tuple[dict[str, Any], torch.Tensor]:
    """``prepare_batch`` for MONAI's SupervisedTrainer/Evaluator on :func:`pad_collate` batches.

    Returns ``(inputs, targets)``: ``inputs`` is ``{modality: [B, T, D], "lengths": {...}}``
    on ``device``, the dict :class:`~cggm_seg.networks.sequence.SequenceFusionNet` takes.
    """
    inputs = {key: value for key, value in batchdata.items() if key != LABEL_KEY}
    return (
        convert_tensor(inputs, device=device, non_blocking=non_blocking),
        convert_tensor(batchdata[LABEL_KEY], device=device, non_blocking=non_blocking),
    )
