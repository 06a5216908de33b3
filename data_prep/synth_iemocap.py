"""``cggm-seg synth iemocap``: tiny synthetic IEMOCAP data in the MulT pickle or the h5 folder layout.

``--format mult`` writes one pickle (``labels [N, 4, 2]``); ``--format h5`` writes the
authors' folder (``L/bert_large.h5``, ``A/comparE.h5``, ``V/denseface.h5`` with one
variable-length ``[T, D]`` dataset per utterance, and ``target/<cv>/{trn,val,tst}_{label,
int2name}.npy`` with one-hot labels ``[N, 4]`` and ``[N, 1]`` byte-string names), both as
:mod:`cggm_seg.adapters.iemocap` reads them. Text carries the emotion strongly, audio
weakly, vision weakest (see :mod:`data_prep.synth_sequences`).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from cggm_seg.adapters.iemocap import DEFAULT_FEATURE_TYPES, FEATURE_DIRS, H5_SPLIT_NAMES, NUM_CLASSES
from cggm_seg.io import write_atomic
from data_prep.synth_sequences import (
    ModalitySpec,
    check_output_dir,
    class_labels,
    label_codes,
    modality_features,
    projections,
    random_lengths,
    split_sizes,
)

SPECS = (ModalitySpec("text", 10, 16, 1.0), ModalitySpec("audio", 16, 8, 0.5),
         ModalitySpec("vision", 12, 8, 0.3))
FORMATS = ("mult", "h5")
PICKLE_PROTOCOL = 4


def _split(n: int, weights: dict[str, np.ndarray], rng: np.random.Generator,
           variable: bool) -> dict[str, Any]:
    """Labels and ``[N, T, D]`` features (zero after each sample's length when ``variable``)."""
    labels = class_labels(n, NUM_CLASSES, rng)
    codes = label_codes(labels, NUM_CLASSES)
    data: dict[str, Any] = {"labels": labels}
    for spec in SPECS:
        lengths = random_lengths(n, spec.length, rng) if variable else None
        data[spec.name] = modality_features(codes, spec, weights[spec.name], rng, lengths)
        data[f"{spec.name}_lengths"] = lengths
    return data


def make_splits(n: int, seed: int, variable: bool) -> dict[str, dict[str, Any]]:
    """``{"train"|"valid"|"test": {"labels": [N], modality: [N, T, D], modality_lengths: [N] | None}}``."""
    rng = np.random.default_rng(seed)
    weights = projections(SPECS, NUM_CLASSES, rng)
    return {split: _split(size, weights, rng, variable) for split, size in split_sizes(n).items()}


def _mult_pickle(splits: dict[str, dict[str, Any]]) -> dict[str, dict[str, np.ndarray]]:
    result = {}
    for split, data in splits.items():
        present = np.eye(NUM_CLASSES, dtype=np.float32)[data["labels"]]
        result[split] = {spec.name: data[spec.name] for spec in SPECS}
        result[split]["labels"] = np.stack([1.0 - present, present], axis=-1)  # [N, 4, (absent, present)]
    return result


def _utterance_names(split: str, n: int) -> list[str]:
    return [f"Ses0{1 + i % 5}{'FM'[i % 2]}_synth_{H5_SPLIT_NAMES[split]}_{i:04d}" for i in range(n)]


def _write_h5(path: Path, arrays: dict[str, np.ndarray], force: bool) -> None:
    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as h5:
            for utterance, steps in arrays.items():
                h5[utterance] = steps
    write_atomic(path, write, force)


def write_h5_folder(root: Path, splits: dict[str, dict[str, Any]], cv: int, force: bool) -> None:
    """Write the folder layout under ``root``."""
    names = {split: _utterance_names(split, len(data["labels"])) for split, data in splits.items()}
    for spec in SPECS:
        arrays = {utterance: data[spec.name][i, : data[f"{spec.name}_lengths"][i]]
                  for split, data in splits.items() for i, utterance in enumerate(names[split])}
        _write_h5(root / FEATURE_DIRS[spec.name] / f"{DEFAULT_FEATURE_TYPES[spec.name]}.h5", arrays, force)
    target = root / "target" / str(cv)
    for split, data in splits.items():
        prefix = H5_SPLIT_NAMES[split]
        one_hot = np.eye(NUM_CLASSES, dtype=np.float32)[data["labels"]]
        utterances = np.array(names[split], dtype="S").reshape(-1, 1)
        write_atomic(target / f"{prefix}_label.npy", lambda tmp, a=one_hot: np.save(tmp, a), force)
        write_atomic(target / f"{prefix}_int2name.npy", lambda tmp, a=utterances: np.save(tmp, a), force)


def write_iemocap(out: Path, fmt: str, n: int, seed: int, cv: int = 1, force: bool = False) -> dict[str, int]:
    """Write a MulT pickle (``fmt="mult"``) or the h5 feature folder (``"h5"``); samples per split."""
    splits = make_splits(n, seed, variable=fmt == "h5")
    if fmt == "mult":
        data = _mult_pickle(splits)
        write_atomic(out, lambda tmp: tmp.write_bytes(pickle.dumps(data, protocol=PICKLE_PROTOCOL)), force)
    else:
        check_output_dir(out, force)
        write_h5_folder(out, splits, cv, force=True)
    return {split: len(data["labels"]) for split, data in splits.items()}
