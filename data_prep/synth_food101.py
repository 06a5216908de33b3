"""``cggm-seg synth food101``: a tiny synthetic UPMC-Food-101 folder with lists, images and features.

Writes ``OUT/{train,dev,test}.json`` (records ``id``, ``img_path``, ``text_tokens``, ``label``
as a class name), one small PNG per record under ``OUT/images/<list>/<class>/``, and token
features under ``OUT/features/`` in the layout of :mod:`cggm_seg.adapters.food101`. The
features are synthetic stand-ins for frozen ViT/BERT tokens, so the bundle trains without
``transformers``; ``cggm-seg food101 extract`` on the same folder replaces them with real
ones. Only the first ``--classes`` Food-101 classes occur; text carries the class strongly,
the image weakly (see :mod:`data_prep.synth_sequences`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cggm_seg.adapters.food101 import CLASS_NAMES, feature_paths, list_path
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

# image: a ViT's [CLS] + 4 patch tokens; text: up to 12 BERT tokens
SPECS = (ModalitySpec("image", 5, 16, 0.4), ModalitySpec("text", 12, 16, 1.0))
FILLER_WORDS = ("recipe", "easy", "homemade", "best", "with", "and", "the", "delicious", "quick", "classic")
IMAGE_SIZE = 32
FEATURE_DTYPE = np.float16


def _text_tokens(class_name: str, rng: np.random.Generator) -> list[str]:
    words = list(rng.choice(FILLER_WORDS, size=rng.integers(3, 8)))
    words[rng.integers(len(words))] = class_name.split("_")[0]
    return words


def _write_image(path: Path, class_index: int, rng: np.random.Generator, force: bool) -> None:
    from PIL import Image  # Pillow comes with matplotlib, a core dependency

    colour = np.array([(class_index * 67) % 256, (class_index * 131) % 256, (class_index * 29) % 256])
    pixels = np.clip(colour + rng.normal(0, 30, (IMAGE_SIZE, IMAGE_SIZE, 3)), 0, 255).astype(np.uint8)
    write_atomic(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"), force)


def _write_split(
    out: Path, split: str, n: int, num_classes: int, weights: dict[str, np.ndarray], rng: np.random.Generator
) -> None:
    list_name = list_path(out, split).stem
    labels = class_labels(n, num_classes, rng)
    records: list[dict[str, Any]] = []
    for i, label in enumerate(labels):
        class_name = CLASS_NAMES[label]
        img_path = f"images/{list_name}/{class_name}/{class_name}_{i:04d}.png"
        _write_image(out / img_path, int(label), rng, force=True)
        records.append(
            {
                "id": f"{class_name}_{list_name}_{i:04d}.png",
                "img_path": img_path,
                "text_tokens": _text_tokens(class_name, rng),
                "label": class_name,
            }
        )
    write_atomic(list_path(out, split), lambda tmp: tmp.write_text(json.dumps(records, indent=1)), True)

    codes = label_codes(labels, num_classes)
    text_lengths = random_lengths(n, SPECS[1].length, rng)
    arrays = {
        "image": modality_features(codes, SPECS[0], weights["image"], rng).astype(FEATURE_DTYPE),
        "text": modality_features(codes, SPECS[1], weights["text"], rng, text_lengths).astype(FEATURE_DTYPE),
        "text_lengths": text_lengths.astype(np.int64),
        "ids": np.array([record["id"] for record in records], dtype=str),
    }
    for kind, path in feature_paths(out / "features", split).items():
        write_atomic(path, lambda tmp, a=arrays[kind]: np.save(tmp, a), True)


def write_food101(out: Path, n: int, classes: int, seed: int, force: bool = False) -> dict[str, int]:
    """Write the three lists, images and features of ``n`` training records over ``classes`` classes."""
    if not 2 <= classes <= len(CLASS_NAMES):
        raise UserError(f"--classes must be between 2 and {len(CLASS_NAMES)}, got {classes}")
    check_output_dir(out, force)
    rng = np.random.default_rng(seed)
    weights = projections(SPECS, classes, rng)
    sizes = split_sizes(n)
    for split, size in sizes.items():
        _write_split(out, split, size, classes, weights, rng)
    return sizes
