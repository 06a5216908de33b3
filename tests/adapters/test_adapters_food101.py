"""UPMC-Food-101 lists + token features, `cggm-seg synth food101` and `cggm-seg food101 extract`."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from tiny_transformers import write_tiny_models

from cggm_seg.adapters.food101 import CLASS_NAMES, feature_paths, load_food101, read_records
from cggm_seg.cli import main as cli
from cggm_seg.errors import UserError


@pytest.fixture(scope="module")
def food(tmp_path_factory):
    root = tmp_path_factory.mktemp("food") / "food101"
    assert cli(["synth", "food101", "--out", str(root), "--n", "9", "--classes", "3", "--seed", "2"]) == 0
    return root


def _copy(food, tmp_path):
    import shutil

    return shutil.copytree(food, tmp_path / "copy")


def test_synthetic_folder_loads(food):
    data = load_food101(food)
    assert [len(data[s]) for s in ("train", "valid", "test")] == [9, 3, 3]
    train = data["train"]
    assert train.feature_dims() == {"image": 16, "text": 16}
    records = read_records(food / "train.json")
    assert train.labels.tolist() == [CLASS_NAMES.index(r["label"]) for r in records]
    assert set(train.labels.tolist()) == {0, 1, 2}
    lengths = np.load(food / "features" / "train_text_lengths.npy")
    sample = train[4]
    assert sample["text"].shape == (lengths[4], 16) and sample["image"].shape == (5, 16)
    assert sample["text"].dtype == torch.float32  # stored as float16
    assert all((food / r["img_path"]).is_file() for r in records)
    clone = pickle.loads(pickle.dumps(train))  # what a spawned DataLoader worker receives
    assert str(clone.features["image"].filename) == str(train.features["image"].filename)  # re-mapped
    torch.testing.assert_close(clone[4]["text"], sample["text"])


def test_records_are_validated(tmp_path):
    good = {"id": "a", "img_path": "a.jpg", "text_tokens": ["x"], "label": "pizza"}
    cases = [
        ([{k: v for k, v in good.items() if k != "label"}], r"record 0: expected an object with keys"),
        ([good, good], "record 1: duplicate id 'a'"),
        ([good | {"label": "pizzza"}], "label 'pizzza' is neither a Food-101 class name"),
        ([good | {"label": 101}], "nor an index in 0..100"),
        ([good | {"text_tokens": "x y"}], "'text_tokens' must be a list of strings"),
        ([], "expected a non-empty list"),
    ]
    for records, message in cases:
        (tmp_path / "train.json").write_text(json.dumps(records))
        with pytest.raises(UserError, match=message):
            read_records(tmp_path / "train.json")
    (tmp_path / "dev.json").write_text("\n".join(json.dumps(good | {"id": i, "label": i}) for i in range(2)))
    assert [r["label"] for r in read_records(tmp_path / "dev.json")] == [0, 1]  # JSON lines, int labels
    (tmp_path / "test.json").write_text("{not json")
    with pytest.raises(UserError, match="neither a JSON array nor JSON lines"):
        read_records(tmp_path / "test.json")


def test_stale_or_broken_features_are_refused(food, tmp_path):
    root = _copy(food, tmp_path)
    records = json.loads((root / "test.json").read_text())
    (root / "test.json").write_text(json.dumps(records[::-1]))
    with pytest.raises(UserError, match="test_ids.npy: ids differ from the records of .*test.json"):
        load_food101(root, ["test"])
    files = feature_paths(root / "features", "valid")
    np.save(files["image"], np.zeros((3, 16), np.float32))
    with pytest.raises(UserError, match=r"dev_image.npy: expected float token features \[N, T, D\]"):
        load_food101(root, ["valid"])
    feature_paths(root / "features", "train")["text_lengths"].unlink()
    with pytest.raises(UserError, match="train_text_lengths.npy: .npy file not found"):
        load_food101(root, ["train"], features_dir=root / "features")


@pytest.mark.slow
def test_extract_with_tiny_local_models(food, tmp_path):
    vit, bert = write_tiny_models(food, tmp_path)

    out = tmp_path / "features"
    args = [
        "food101",
        "extract",
        "--data",
        str(food),
        "--bert",
        str(bert),
        "--out",
        str(out),
        "--max-text-len",
        "10",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--vit",
        str(vit),
    ]
    assert cli(args) == 0
    data = load_food101(food, features_dir=out)
    assert data["train"].feature_dims() == {"image": 8, "text": 12}
    image = np.load(out / "train_image.npy")
    text, lengths = np.load(out / "train_text.npy"), np.load(out / "train_text_lengths.npy")
    assert image.shape == (9, 5, 8) and image.dtype == np.float16 and text.shape == (9, 10, 12)
    records = read_records(food / "train.json")
    # [CLS] + one token per (in-vocabulary) word + [SEP], zero after
    assert lengths.tolist() == [len(r["text_tokens"]) + 2 for r in records]
    for row, length in zip(text, lengths, strict=True):
        assert np.abs(row[length:]).sum() == 0 and (np.abs(row[:length]).sum(axis=1) > 0).all()
    assert cli(args) == 2  # refuses to overwrite
    assert cli([*args, "--splits", "test", "--force"]) == 0
    (food / records[0]["img_path"]).rename(tmp_path / "moved.png")
    try:
        with pytest.raises(UserError, match=f"record '{records[0]['id']}': cannot read image"):
            cli_main_raising([*args, "--splits", "train", "--force"])
    finally:
        (tmp_path / "moved.png").rename(food / records[0]["img_path"])
    assert not any(p.name.startswith(".") for p in out.iterdir())  # the failed run left no temporaries
    with pytest.raises(UserError, match="--vit .*: cannot load it from the local folder"):
        cli_main_raising([*args[:-1], str(bert), "--force"])


def cli_main_raising(argv):
    """Run a subcommand like the CLI does, but let its UserError through to the test."""
    from cggm_seg.cli import build_parser

    args = build_parser(argv).parse_args(argv)
    return args._run(args)
