"""CMU-MOSI sentiment regression (labels in [-3, 3]) from its two public pickle layouts.

- MulT (``mosi_data.pkl``, ``mosi_data_noalign.pkl``): ``{split: {"text", "audio", "vision":
  [N, T, D], "labels": [N, 1, 1], ...}}`` with splits ``train``/``valid``/``test``. Some audio
  values are ``-inf``; they are set to 0 as in the MulT and CGGM code. Sequences are used at
  their full padded length (the format carries no lengths).
- MMSA (``unaligned_50.pkl``, ``aligned_50.pkl``): the same splits, each with ``text``,
  ``audio``, ``vision`` and ``regression_labels`` ``[N]``; ``audio_lengths`` /
  ``vision_lengths``, when present, mark the padding after each audio/vision sequence.
  Text is used at full length: its token mask (``text_bert``) does not describe GloVe text.
  Other keys (``id``, ``raw_text``, ``classification_labels``, ...) are ignored.

Pickles are read with :func:`cggm_seg.io.safe_load_pickle`, never ``pickle.load``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from cggm_seg.adapters.sequence_core import (
    SPEECH_MODALITIES,
    SPLITS,
    SequenceDataset,
    check_sample_counts,
    lengths_array,
    load_pickle_splits,
    require_keys,
    speech_features,
)
from cggm_seg.errors import UserError

MODALITIES = SPEECH_MODALITIES
LABEL_RANGE = (-3.0, 3.0)
NUM_OUTPUTS = 1
_MULT_LABELS, _MMSA_LABELS = "labels", "regression_labels"


def _labels(value: object, count: int, where: str) -> np.ndarray:
    labels = np.asarray(value)
    if not np.issubdtype(labels.dtype, np.number) or labels.size != count:
        raise UserError(
            f"{where}: expected {count} sentiment values ([N], [N, 1] or [N, 1, 1]), "
            f"found {labels.dtype} {labels.shape}"
        )
    labels = labels.reshape(count, 1).astype(np.float32)
    low, high = LABEL_RANGE
    bad = ~np.isfinite(labels) | (labels < low - 1e-4) | (labels > high + 1e-4)
    if bad.any():
        index = int(np.argwhere(bad)[0][0])
        raise UserError(
            f"{where}: sentiment labels must lie in [{low:g}, {high:g}], "
            f"sample {index} has {labels[index, 0]}"
        )
    return labels


def _split_dataset(split_data: Mapping, where: str) -> SequenceDataset:
    features = speech_features(split_data, where)
    label_key = _MMSA_LABELS if _MMSA_LABELS in split_data else _MULT_LABELS
    require_keys(
        split_data, [label_key], f"{where} (labels: '{_MULT_LABELS}' for MulT or '{_MMSA_LABELS}' for MMSA)"
    )
    count = check_sample_counts(
        {name: len(array) for name, array in features.items()}
        | {label_key: len(np.atleast_1d(split_data[label_key]))},
        where,
    )
    lengths = {}
    for name in ("audio", "vision") if label_key == _MMSA_LABELS else ():
        key = f"{name}_lengths"
        if key in split_data:
            steps = features[name].shape[1]
            lengths[name] = lengths_array(split_data[key], count, steps, f"{where}['{key}']")
    labels = _labels(split_data[label_key], count, f"{where}['{label_key}']")
    return SequenceDataset(features, labels, lengths)


def load_mosi(path: str | os.PathLike, splits: Sequence[str] = SPLITS) -> dict[str, SequenceDataset]:
    """Load the requested splits of a MulT or MMSA CMU-MOSI pickle (the layout is detected per split)."""
    data = load_pickle_splits(path, splits)
    return {split: _split_dataset(data[split], f"{path}['{split}']") for split in splits}
