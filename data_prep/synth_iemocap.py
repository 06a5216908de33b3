"""``cggm-seg synth iemocap``: tiny synthetic IEMOCAP data in the MulT pickle or the h5 folder layout.

``--format mult`` writes one pickle (``labels [N, 4, 2]``); ``--format h5`` writes every file
the CGGM authors' loader opens, in MMIN's layout: ``L/bert_large.h5``, ``A/comparE.h5``,
``V/denseface.h5`` with one variable-length ``[T, D]`` dataset per utterance,
``A/comparE_mean_std.h5`` with the fold's ``<cv>/mean`` and ``<cv>/std`` (the training
utterances' per-feature audio statistics, which their loader always opens for comparE
features), and ``target/<cv>/{trn,val,tst}_{label,int2name}.npy`` with one-hot labels
``[N, 4]`` and ``[N, 1]`` byte-string names. Both read as :mod:`cggm_seg.adapters.iemocap`
reads them. Feature sizes are small by default so tests stay fast; ``--dims 1024,130,342``
gives the real features' sizes (BERT-large text, ComParE audio, DenseFace vision), which the
authors' model hard-codes and the bundle reads from the data. Text carries the emotion
strongly, audio weakly, vision weakest (see :mod:`data_prep.synth_sequences`).
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from cggm_seg.adapters.iemocap import (
    DEFAULT_FEATURE_TYPES,
    FEATURE_DIRS,
    H5_SPLIT_NAMES,
    MODALITIES,
    NUM_CLASSES,
    stats_path,
)
from cggm_seg.errors import UserError
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

SPECS = (
    ModalitySpec("text", 10, 16, 1.0),
    ModalitySpec("audio", 16, 8, 0.5),
    ModalitySpec("vision", 12, 8, 0.3),
)
#: feature sizes of the features the authors train on (text, audio, vision)
REAL_DIMS = (1024, 130, 342)
FORMATS = ("mult", "h5")
PICKLE_PROTOCOL = 4


def parse_dims(text: str | None) -> tuple[ModalitySpec, ...]:
    """:data:`SPECS` with the feature sizes of ``--dims`` ("TEXT,AUDIO,VISION"); the defaults when empty."""
    if not text:
        return SPECS
    try:
        dims = [int(value) for value in text.split(",")]
    except ValueError:
        dims = []
    if len(dims) != len(SPECS) or min(dims) < 1:
        raise UserError(
            f"--dims {text!r}: expected {len(SPECS)} positive sizes for "
            f"{','.join(MODALITIES)}, e.g. {','.join(map(str, REAL_DIMS))}"
        )
    return tuple(dataclasses.replace(spec, dim=dim) for spec, dim in zip(SPECS, dims, strict=True))


def _split(
    n: int,
    specs: Sequence[ModalitySpec],
    weights: dict[str, np.ndarray],
    rng: np.random.Generator,
    variable: bool,
) -> dict[str, Any]:
    """Labels and ``[N, T, D]`` features (zero after each sample's length when ``variable``)."""
    labels = class_labels(n, NUM_CLASSES, rng)
    codes = label_codes(labels, NUM_CLASSES)
    data: dict[str, Any] = {"labels": labels}
    for spec in specs:
        lengths = random_lengths(n, spec.length, rng) if variable else None
        data[spec.name] = modality_features(codes, spec, weights[spec.name], rng, lengths)
        data[f"{spec.name}_lengths"] = lengths
    return data


def make_splits(
    n: int, seed: int, variable: bool, specs: Sequence[ModalitySpec] = SPECS
) -> dict[str, dict[str, Any]]:
    """``{"train"|"valid"|"test": {"labels": [N], modality: [N, T, D], modality_lengths: [N] | None}}``."""
    rng = np.random.default_rng(seed)
    weights = projections(tuple(specs), NUM_CLASSES, rng)
    return {split: _split(size, specs, weights, rng, variable) for split, size in split_sizes(n).items()}


def _mult_pickle(splits: dict[str, dict[str, Any]]) -> dict[str, dict[str, np.ndarray]]:
    result = {}
    for split, data in splits.items():
        present = np.eye(NUM_CLASSES, dtype=np.float32)[data["labels"]]
        result[split] = {name: data[name] for name in MODALITIES}
        result[split]["labels"] = np.stack([1.0 - present, present], axis=-1)  # [N, 4, (absent, present)]
    return result


def _utterance_names(split: str, n: int) -> list[str]:
    return [f"Ses0{1 + i % 5}{'FM'[i % 2]}_synth_{H5_SPLIT_NAMES[split]}_{i:04d}" for i in range(n)]


def _valid_steps(data: dict[str, Any], name: str) -> list[np.ndarray]:
    """Each utterance's ``[T_i, D]`` steps of modality ``name``, padding removed."""
    return [steps[:length] for steps, length in zip(data[name], data[f"{name}_lengths"], strict=True)]


def _write_h5(path: Path, arrays: dict[str, np.ndarray], force: bool) -> None:
    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as h5:
            for key, values in arrays.items():
                h5[key] = values

    write_atomic(path, write, force)


def write_h5_folder(root: Path, splits: dict[str, dict[str, Any]], cv: int, force: bool) -> None:
    """Write the folder layout under ``root``; the statistics are those of fold ``cv``'s training split."""
    names = {split: _utterance_names(split, len(data["labels"])) for split, data in splits.items()}
    for name in MODALITIES:
        arrays = {
            utterance: steps
            for split, data in splits.items()
            for utterance, steps in zip(names[split], _valid_steps(data, name), strict=True)
        }
        _write_h5(root / FEATURE_DIRS[name] / f"{DEFAULT_FEATURE_TYPES[name]}.h5", arrays, force)
    frames = np.concatenate(_valid_steps(splits["train"], "audio"))
    audio = root / FEATURE_DIRS["audio"] / f"{DEFAULT_FEATURE_TYPES['audio']}.h5"
    _write_h5(stats_path(audio), {f"{cv}/mean": frames.mean(axis=0), f"{cv}/std": frames.std(axis=0)}, force)
    target = root / "target" / str(cv)
    for split, data in splits.items():
        prefix = H5_SPLIT_NAMES[split]
        one_hot = np.eye(NUM_CLASSES, dtype=np.float32)[data["labels"]]
        utterances = np.array(names[split], dtype="S").reshape(-1, 1)
        write_atomic(target / f"{prefix}_label.npy", lambda tmp, a=one_hot: np.save(tmp, a), force)
        write_atomic(target / f"{prefix}_int2name.npy", lambda tmp, a=utterances: np.save(tmp, a), force)


def write_iemocap(
    out: Path,
    fmt: str,
    n: int,
    seed: int,
    cv: int = 1,
    force: bool = False,
    specs: Sequence[ModalitySpec] = SPECS,
) -> dict[str, int]:
    """Write a MulT pickle (``fmt="mult"``) or the h5 feature folder (``"h5"``); samples per split."""
    splits = make_splits(n, seed, variable=fmt == "h5", specs=specs)
    if fmt == "mult":
        data = _mult_pickle(splits)
        write_atomic(out, lambda tmp: tmp.write_bytes(pickle.dumps(data, protocol=PICKLE_PROTOCOL)), force)
    else:
        check_output_dir(out, force)
        write_h5_folder(out, splits, cv, force=True)
    return {split: len(data["labels"]) for split, data in splits.items()}
