"""UPMC-Food-101 image+text classification (101 classes) from its lists and frozen token features.

Data folder::

    DATA/{train,dev,test}.json    a JSON array (or JSON lines) of records
                                  {"id", "img_path" (relative to DATA), "text_tokens": [words],
                                   "label": class name, e.g. "apple_pie" (or its index)}
    FEATURES/<list>_image.npy     [N, T_img, D_img] frozen ViT token features (float16 or float32)
    FEATURES/<list>_text.npy      [N, T_txt, D_txt] frozen BERT token features, zero after the text
    FEATURES/<list>_text_lengths.npy  [N] int64: valid text tokens (the attention-mask sum)
    FEATURES/<list>_ids.npy       [N] str: the record ids, in the order of the JSON list

``FEATURES`` defaults to ``DATA/features``; ``cggm-seg food101 extract`` writes it. Row ``i``
of every feature file belongs to record ``i`` of the list; the ids file lets the loader
refuse features made from another version of the list. Feature files are memory-mapped,
so the corpus (about 40 GB of ViT tokens in float32) never has to fit in memory.
Splits map to lists as train -> train.json, valid -> dev.json, test -> test.json.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cggm_seg.adapters.sequence_core import (
    SPLITS,
    SequenceDataset,
    check_sample_counts,
    check_split,
    lengths_array,
)
from cggm_seg.errors import UserError
from cggm_seg.io import safe_load_npy

MODALITIES = ("image", "text")
LIST_NAMES = {"train": "train", "valid": "dev", "test": "test"}
RECORD_KEYS = ("id", "img_path", "text_tokens", "label")
FEATURE_KINDS = ("image", "text", "text_lengths", "ids")
# the 101 class names in alphabetical order; a label's index is its position here
CLASS_NAMES = tuple(
    """
    apple_pie baby_back_ribs baklava beef_carpaccio beef_tartare beet_salad beignets bibimbap
    bread_pudding breakfast_burrito bruschetta caesar_salad cannoli caprese_salad carrot_cake
    ceviche cheese_plate cheesecake chicken_curry chicken_quesadilla chicken_wings chocolate_cake
    chocolate_mousse churros clam_chowder club_sandwich crab_cakes creme_brulee croque_madame
    cup_cakes deviled_eggs donuts dumplings edamame eggs_benedict escargots falafel filet_mignon
    fish_and_chips foie_gras french_fries french_onion_soup french_toast fried_calamari fried_rice
    frozen_yogurt garlic_bread gnocchi greek_salad grilled_cheese_sandwich grilled_salmon guacamole
    gyoza hamburger hot_and_sour_soup hot_dog huevos_rancheros hummus ice_cream lasagna
    lobster_bisque lobster_roll_sandwich macaroni_and_cheese macarons miso_soup mussels nachos
    omelette onion_rings oysters pad_thai paella pancakes panna_cotta peking_duck pho pizza
    pork_chop poutine prime_rib pulled_pork_sandwich ramen ravioli red_velvet_cake risotto samosa
    sashimi scallops seaweed_salad shrimp_and_grits spaghetti_bolognese spaghetti_carbonara
    spring_rolls steak strawberry_shortcake sushi tacos takoyaki tiramisu tuna_tartare waffles
""".split()
)
NUM_CLASSES = len(CLASS_NAMES)
_CLASS_INDEX = {name: index for index, name in enumerate(CLASS_NAMES)}


def list_path(data_dir: str | os.PathLike, split: str) -> Path:
    """The JSON list of ``split`` (train/valid/test) in ``data_dir``."""
    return Path(data_dir) / f"{LIST_NAMES[check_split(split)]}.json"


def feature_paths(features_dir: str | os.PathLike, split: str) -> dict[str, Path]:
    """The four feature files of ``split``, by kind (see the module docstring)."""
    stem = LIST_NAMES[check_split(split)]
    return {kind: Path(features_dir) / f"{stem}_{kind}.npy" for kind in FEATURE_KINDS}


def _parse_json_list(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:  # JSON lines
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: neither a JSON array nor JSON lines ({err})") from err


def _class_index(label: Any, where: str) -> int:
    if isinstance(label, str) and label in _CLASS_INDEX:
        return _CLASS_INDEX[label]
    if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < NUM_CLASSES:
        return label
    raise UserError(
        f"{where}: label {label!r} is neither a Food-101 class name (e.g. 'apple_pie') "
        f"nor an index in 0..{NUM_CLASSES - 1}"
    )


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read and validate one JSON list; returns its records in file order."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: Food-101 list not found")
    records = _parse_json_list(path)
    if not isinstance(records, list) or not records:
        raise UserError(f"{path}: expected a non-empty list of records")
    seen: set[str] = set()
    for number, record in enumerate(records):
        where = f"{path} record {number}"
        if not isinstance(record, dict) or any(key not in record for key in RECORD_KEYS):
            raise UserError(f"{where}: expected an object with keys {list(RECORD_KEYS)}")
        tokens = record["text_tokens"]
        if not isinstance(tokens, list) or not all(isinstance(token, str) for token in tokens):
            raise UserError(f"{where}: 'text_tokens' must be a list of strings")
        record_id = str(record["id"])
        if record_id in seen:
            raise UserError(f"{where}: duplicate id {record_id!r}")
        seen.add(record_id)
        _class_index(record["label"], where)
    return records


def _features(path: Path, count: int) -> np.ndarray:
    array = safe_load_npy(path, mmap=True)
    if array.ndim != 3 or not np.issubdtype(array.dtype, np.floating):
        raise UserError(f"{path}: expected float token features [N, T, D], found {array.dtype} {array.shape}")
    check_sample_counts({"list": count, path.name: len(array)}, str(path))
    return array


def _split_dataset(data_dir: Path, features_dir: Path, split: str) -> SequenceDataset:
    path = list_path(data_dir, split)
    records = read_records(path)
    files = feature_paths(features_dir, split)
    ids = [str(value) for value in safe_load_npy(files["ids"]).reshape(-1)]
    if ids != [str(record["id"]) for record in records]:
        raise UserError(
            f"{files['ids']}: ids differ from the records of {path} (features made from another "
            "list?); run `cggm-seg food101 extract` again"
        )
    features = {name: _features(files[name], len(records)) for name in MODALITIES}
    lengths = lengths_array(
        safe_load_npy(files["text_lengths"]),
        len(records),
        features["text"].shape[1],
        str(files["text_lengths"]),
    )
    labels = np.array([_class_index(record["label"], str(path)) for record in records], dtype=np.int64)
    return SequenceDataset(features, labels, {"text": lengths})


def load_food101(
    data_dir: str | os.PathLike, splits: Sequence[str] = SPLITS, features_dir: str | os.PathLike | None = None
) -> dict[str, SequenceDataset]:
    """Load the requested splits from the JSON lists and their pre-extracted token features."""
    data_dir = Path(data_dir)
    features = data_dir / "features" if features_dir in (None, "") else Path(features_dir)
    return {split: _split_dataset(data_dir, features, split) for split in splits}
