"""Synthetic IEMOCAP (MulT pickle) with a shortcut modality: headroom for modality-imbalance methods.

Jointly trained multimodal networks lean on whichever modality is easiest to learn and
under-train the others. This data set makes that cost measurable: ``text`` is an easy but
partly wrong shortcut (strong signal; a ``shortcut_rate`` share of samples shows the true
class, the rest a uniformly drawn wrong one), ``audio`` always shows the true class but
weakly, spread over a longer sequence so that only averaging over time recovers it, and
``vision`` carries almost nothing. Text alone therefore tops out near ``shortcut_rate``,
audio alone below that, and only a model that keeps learning audio beats both.

Features follow :mod:`data_prep.synth_sequences` (unit Gaussian noise plus
``strength * code @ W`` at every step) except that each ``W`` has orthogonal rows of norm
``sqrt(dim)``: every pair of classes is equally far apart, so the accuracies above do not
depend on the seed. The corruption is drawn in every split, so the shortcut is as unreliable
at test time as in training. The projections are the first draw of ``default_rng(seed)``
(:func:`_projections`), independent of ``n``.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cggm_seg.adapters.iemocap import NUM_CLASSES
from cggm_seg.errors import UserError
from cggm_seg.io import write_atomic
from data_prep.synth_sequences import ModalitySpec, class_labels, label_codes, modality_features, split_sizes

PICKLE_PROTOCOL = 4


@dataclass(frozen=True)
class ShortcutSpec:
    """Every knob of the data set. Defaults: text ~``shortcut_rate``, audio ~0.75, vision ~0.4 alone.

    ``audio_strength`` 0.15 puts a nearest-centroid audio classifier at about 0.75, below the
    shortcut; at 0.35 audio alone is about 0.98 and joint training has nothing left to gain.
    ``audio_random_sign`` gives every audio step's signal a random sign: complete but slow to learn,
    the setting where joint training does leave accuracy on the table (``docs/BENCHMARK.md``).
    """

    shortcut_rate: float = 0.8
    text_strength: float = 1.5
    text_length: int = 10
    text_dim: int = 16
    audio_strength: float = 0.15
    audio_length: int = 16
    audio_dim: int = 8
    vision_strength: float = 0.05
    vision_length: int = 12
    vision_dim: int = 8
    audio_random_sign: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.shortcut_rate <= 1.0:
            raise UserError(f"shortcut_rate must be in [0, 1], got {self.shortcut_rate}")
        for spec in self.modalities():
            if spec.dim < NUM_CLASSES or spec.length < 1:
                raise UserError(
                    f"{spec.name}: need dim >= {NUM_CLASSES} (orthogonal class codes) and "
                    f"length >= 1, got dim {spec.dim}, length {spec.length}"
                )

    def modalities(self) -> tuple[ModalitySpec, ...]:
        """text, audio, vision as :class:`ModalitySpec` (the adapter's modality order)."""
        return tuple(
            ModalitySpec(
                name,
                getattr(self, f"{name}_length"),
                getattr(self, f"{name}_dim"),
                getattr(self, f"{name}_strength"),
            )
            for name in ("text", "audio", "vision")
        )


def _projections(spec: ShortcutSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per modality ``[4, dim]`` projection with orthogonal rows of norm ``sqrt(dim)``."""
    result = {}
    for modality in spec.modalities():
        basis, _ = np.linalg.qr(rng.normal(0.0, 1.0, (modality.dim, NUM_CLASSES)))
        result[modality.name] = basis.T * np.sqrt(modality.dim)
    return result


def _split(
    n: int, spec: ShortcutSpec, weights: dict[str, np.ndarray], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    labels = class_labels(n, NUM_CLASSES, rng)
    wrong = (labels + rng.integers(1, NUM_CLASSES, n)) % NUM_CLASSES  # uniform over the other classes
    shown = np.where(rng.random(n) < spec.shortcut_rate, labels, wrong)
    result = {}
    for modality in spec.modalities():
        codes = label_codes(shown if modality.name == "text" else labels, NUM_CLASSES)
        signs = None
        if modality.name == "audio" and spec.audio_random_sign:  # energy only: a feature slow to learn
            signs = rng.choice(np.array([-1.0, 1.0]), (n, modality.length, 1))
        result[modality.name] = modality_features(codes, modality, weights[modality.name], rng, signs=signs)
    present = np.eye(NUM_CLASSES, dtype=np.float32)[labels]
    result["labels"] = np.stack([1.0 - present, present], axis=-1)  # [N, 4, (absent, present)]
    return result


def make_shortcut_iemocap(
    n: int, seed: int, spec: ShortcutSpec = ShortcutSpec(), held_out: int | None = None
) -> dict:
    """``{"train"|"valid"|"test": {"text", "audio", "vision": [N, T, D] float32, "labels": [N, 4, 2]}}``.

    ``n`` training samples and ``held_out`` each in valid and test (default a third as many,
    :func:`split_sizes`); balanced classes. Larger held-out splits measure small differences between
    methods without changing what they train on.
    """
    sizes = split_sizes(n)
    if held_out is not None:
        if held_out < 2:
            raise UserError(f"held_out must be at least 2, got {held_out}")
        sizes.update(valid=held_out, test=held_out)
    rng = np.random.default_rng(seed)
    weights = _projections(spec, rng)
    return {split: _split(size, spec, weights, rng) for split, size in sizes.items()}


def write_shortcut_iemocap(
    out: Path,
    n: int,
    seed: int,
    spec: ShortcutSpec = ShortcutSpec(),
    force: bool = False,
    held_out: int | None = None,
) -> dict[str, int]:
    """Write the MulT pickle to ``out`` atomically (overwrite only with ``force``); samples per split."""
    data = make_shortcut_iemocap(n, seed, spec, held_out)
    write_atomic(out, lambda tmp: tmp.write_bytes(pickle.dumps(data, protocol=PICKLE_PROTOCOL)), force)
    return {split: len(arrays["labels"]) for split, arrays in data.items()}
