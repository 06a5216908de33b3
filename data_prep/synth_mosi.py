"""``cggm-seg synth mosi``: a tiny synthetic CMU-MOSI pickle in the MulT or the MMSA layout.

The layouts are those :mod:`cggm_seg.adapters.mosi` reads: MulT (``labels [N, 1, 1]``, a few
``-inf`` audio values, an ``id`` object array) or MMSA (``regression_labels [N]``, padded
audio/vision with ``audio_lengths``/``vision_lengths``, ``raw_text``, ``text_bert``, ...).
Text carries the sentiment strongly, audio weakly, vision weakest (see
:mod:`data_prep.synth_sequences`).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from cggm_seg.io import write_atomic
from data_prep.synth_sequences import (
    ModalitySpec,
    label_codes,
    modality_features,
    projections,
    random_lengths,
    sentiment_labels,
    split_sizes,
)

SPECS = (
    ModalitySpec("text", 12, 16, 1.0),
    ModalitySpec("audio", 16, 8, 0.5),
    ModalitySpec("vision", 16, 8, 0.25),
)
FORMATS = ("mult", "mmsa")
PICKLE_PROTOCOL = 4


def _mult_split(
    n: int, split: str, weights: dict[str, np.ndarray], rng: np.random.Generator
) -> dict[str, Any]:
    labels = sentiment_labels(n, rng)
    data: dict[str, Any] = {
        spec.name: modality_features(label_codes(labels), spec, weights[spec.name], rng) for spec in SPECS
    }
    data["audio"][rng.random(data["audio"].shape) < 0.01] = -np.inf  # MulT's COVAREP quirk
    data["labels"] = labels.reshape(n, 1, 1)
    data["id"] = np.array([[f"synth_{split}_{i:04d}", "0", "1"] for i in range(n)], dtype=object)
    return data


def _mmsa_split(
    n: int, split: str, weights: dict[str, np.ndarray], rng: np.random.Generator
) -> dict[str, Any]:
    labels = sentiment_labels(n, rng)
    codes = label_codes(labels)
    data: dict[str, Any] = {"text": modality_features(codes, SPECS[0], weights["text"], rng)}
    for spec in SPECS[1:]:
        lengths = random_lengths(n, spec.length, rng)
        data[spec.name] = modality_features(codes, spec, weights[spec.name], rng, lengths)
        data[f"{spec.name}_lengths"] = [int(length) for length in lengths]
    text_steps = SPECS[0].length
    mask = (np.arange(text_steps)[None, :] < random_lengths(n, text_steps, rng)[:, None]).astype(np.float32)
    token_ids = mask * rng.integers(100, 2000, mask.shape)
    data["text_bert"] = np.stack([token_ids, mask, np.zeros_like(mask)], axis=1)  # ids, mask, segments
    data["regression_labels"] = labels
    data["classification_labels"] = np.sign(labels).astype(np.float32) + 1
    data["annotations"] = np.array(["Negative", "Neutral", "Positive"], dtype=object)[
        data["classification_labels"].astype(int)
    ]
    data["raw_text"] = np.array([f"synthetic utterance {i}" for i in range(n)], dtype=object)
    data["id"] = np.array([f"synth_{split}${i}" for i in range(n)], dtype=object)
    return data


def make_mosi(fmt: str, n: int, seed: int) -> dict[str, dict[str, Any]]:
    """The pickle's content: ``{"train"|"valid"|"test": split dict}`` in layout ``fmt``."""
    rng = np.random.default_rng(seed)
    weights = projections(SPECS, 1, rng)
    make_split = _mult_split if fmt == "mult" else _mmsa_split
    return {split: make_split(size, split, weights, rng) for split, size in split_sizes(n).items()}


def write_mosi(out: Path, fmt: str, n: int, seed: int, force: bool = False) -> dict[str, int]:
    """Write the MulT or MMSA pickle; samples per split."""
    data = make_mosi(fmt, n, seed)
    write_atomic(out, lambda tmp: tmp.write_bytes(pickle.dumps(data, protocol=PICKLE_PROTOCOL)), force)
    return {split: len(d["text"]) for split, d in data.items()}
