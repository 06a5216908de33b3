"""Synthetic multimodal sequences whose label signal is spread unevenly over the modalities.

Shared by ``cggm-seg synth mosi|iemocap|food101``. Each sample has a label code ``z``
(``y / 3`` for a sentiment ``y`` in [-3, 3]; the one-hot class for classification). At every
valid step, modality ``m`` holds ``noise + strength_m * z @ W_m`` with unit Gaussian noise and a
fixed random projection ``W_m``. ``strength`` is the knob: the defaults make text the easy
modality and audio/vision (or image) weaker ones, the imbalance CGGM is meant to correct.
Sizes are tiny so that a bundle trains on CPU in seconds.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cggm_seg.errors import UserError

#: valid / test sizes relative to the training split
HELD_OUT_FRACTION = 1 / 3


@dataclass(frozen=True)
class ModalitySpec:
    """One synthetic modality: padded length, feature size and signal strength (the knob)."""

    name: str
    length: int
    dim: int
    strength: float


def add_common_arguments(parser: argparse.ArgumentParser, default_n: int) -> None:
    """The options every ``synth`` subcommand shares."""
    parser.add_argument(
        "--n",
        type=int,
        default=default_n,
        help=f"training samples; valid and test get a third as many (default {default_n})",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--force", action="store_true", help="replace existing outputs")


def split_sizes(n: int) -> dict[str, int]:
    """Samples per split (train, valid, test) for ``n`` training samples."""
    if n < 3:
        raise UserError(f"--n must be at least 3, got {n}")
    held_out = max(2, round(n * HELD_OUT_FRACTION))
    return {"train": n, "valid": held_out, "test": held_out}


def check_output_dir(path: Path, force: bool) -> None:
    """Refuse to write into a non-empty folder unless ``force``; a file in the way is always an error."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise UserError(f"{path} is not empty; choose another --out or pass --force")


def sentiment_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    """Sentiment scores in [-3, 3] on a 1/3 grid, like averaged MOSI ratings (some exactly 0)."""
    return np.clip(np.round(rng.normal(0.0, 1.5, n) * 3) / 3, -3, 3).astype(np.float32)


def class_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Class indices with every class present when ``n >= num_classes``."""
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    return labels.astype(np.int64)


def label_codes(labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """``[N, K]`` codes the features are built from: ``y / 3`` for sentiments, one-hot for classes."""
    if num_classes is None:
        return (labels.astype(np.float32) / 3.0)[:, None]
    return np.eye(num_classes, dtype=np.float32)[labels]


def random_lengths(n: int, max_length: int, rng: np.random.Generator) -> np.ndarray:
    """Valid lengths between half and all of ``max_length``."""
    return rng.integers(max(1, max_length // 2), max_length + 1, size=n)


def modality_features(
    codes: np.ndarray,
    spec: ModalitySpec,
    projection: np.ndarray,
    rng: np.random.Generator,
    lengths: np.ndarray | None = None,
    signs: np.ndarray | None = None,
) -> np.ndarray:
    """``[N, length, dim]`` float32 features for ``spec``; steps at or after ``lengths`` are zero.

    ``signs`` (``[N, length, 1]``, +-1) multiplies each step's signal: the class then shows only in
    the energy along its direction, not in the time average.
    """
    n = codes.shape[0]
    signal = spec.strength * (codes @ projection)[:, None, :]
    if signs is not None:
        signal = signal * signs
    features = rng.normal(0.0, 1.0, (n, spec.length, spec.dim)) + signal
    if lengths is not None:
        features[np.arange(spec.length)[None, :] >= lengths[:, None]] = 0.0
    return features.astype(np.float32)


def projections(
    specs: tuple[ModalitySpec, ...], code_size: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """One fixed random ``[code_size, dim]`` projection per modality, rows of unit norm times sqrt(dim)."""
    result = {}
    for spec in specs:
        matrix = rng.normal(0.0, 1.0, (code_size, spec.dim))
        result[spec.name] = matrix / np.linalg.norm(matrix, axis=1, keepdims=True) * np.sqrt(spec.dim)
    return result
