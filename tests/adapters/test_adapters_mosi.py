"""CMU-MOSI loaders (MulT and MMSA pickles), the shared sequence core, and `cggm-seg synth mosi`."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from cggm_seg.adapters.mosi import load_mosi
from cggm_seg.adapters.sequence_core import pad_collate, prepare_sequence_batch
from cggm_seg.cli import main as cli
from cggm_seg.errors import UserError
from cggm_seg.io import safe_load_pickle


def _mult_split(n: int, rng: np.random.Generator) -> dict:
    """A MulT-layout split built by hand (float64, protocol 2), as another tool would write it."""
    audio = rng.normal(size=(n, 5, 2))
    audio[0, 0, 0] = -np.inf
    return {
        "text": rng.normal(size=(n, 4, 3)),
        "audio": audio,
        "vision": rng.normal(size=(n, 6, 2)),
        "labels": np.linspace(-3, 3, n).reshape(n, 1, 1),
        "id": np.array([["v", "0", "1"]] * n, dtype=object),
    }


def _write(path, data, protocol=2):
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    return path


@pytest.fixture
def mult_data():
    rng = np.random.default_rng(0)
    return {split: _mult_split(n, rng) for split, n in (("train", 5), ("valid", 3), ("test", 3))}


def test_mult_pickle_from_another_tool(tmp_path, mult_data):
    datasets = load_mosi(_write(tmp_path / "mosi_data.pkl", mult_data))
    train = datasets["train"]
    assert len(train) == 5 and train.feature_dims() == {"text": 3, "audio": 2, "vision": 2}
    sample = train[0]
    assert sample["audio"][0, 0].item() == 0.0  # -inf zeroed
    assert sample["label"].shape == (1,) and sample["label"].item() == pytest.approx(-3.0)
    assert sample["text"].dtype == torch.float32 and sample["text"].shape == (4, 3)


def test_mmsa_pickle_uses_audio_and_vision_lengths(tmp_path):
    rng = np.random.default_rng(1)
    split = {
        "text": rng.normal(size=(3, 4, 768)).astype(np.float32),
        "audio": rng.normal(size=(3, 5, 2)),
        "vision": rng.normal(size=(3, 6, 2)),
        "audio_lengths": [5, 2, 0],
        "vision_lengths": np.array([6, 3, 9]),
        "regression_labels": np.array([0.4, -1.2, 0.0], np.float32),
        "raw_text": ["a", "b", "c"],
        "id": np.array(["x$1", "x$2", "x$3"], dtype=object),
        "text_bert": np.zeros((3, 3, 4)),
        "classification_labels": np.array([2, 0, 1]),
    }
    datasets = load_mosi(_write(tmp_path / "unaligned_50.pkl", {"train": split}, 4), ["train"])
    samples = [datasets["train"][i] for i in range(3)]
    assert [s["audio"].shape[0] for s in samples] == [5, 2, 1]  # 0 keeps one step
    assert [s["vision"].shape[0] for s in samples] == [6, 3, 6]  # clipped to the padded length
    assert [s["text"].shape[0] for s in samples] == [4, 4, 4]
    batch = pad_collate(samples)
    assert batch["audio"].shape == (3, 5, 2) and batch["lengths"]["audio"].tolist() == [5, 2, 1]
    assert batch["label"].shape == (3, 1)
    inputs, targets = prepare_sequence_batch(batch, torch.device("cpu"))
    assert set(inputs) == {"text", "audio", "vision", "lengths"} and targets is batch["label"]


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda d: d.pop("valid"), r"missing key\(s\) \['valid'\]"),
        (lambda d: d["train"].pop("vision"), r"\['train'\]: missing key\(s\) \['vision'\]"),
        (lambda d: d["test"].pop("labels"), r"\['test'\] \(labels: 'labels' for MulT"),
        (
            lambda d: d["train"]["labels"].__setitem__((1, 0, 0), 4.0),
            r"must lie in \[-3, 3\], sample 1 has 4.0",
        ),
        (
            lambda d: d["train"].__setitem__("labels", np.zeros((4, 1, 1))),
            "disagree on the number of samples",
        ),
        (lambda d: d["train"].__setitem__("text", np.zeros((5, 3))), r"\['text'\]: expected a numeric array"),
        (lambda d: d["valid"]["vision"].__setitem__((2, 0, 0), np.nan), r"\['vision'\]: 1 non-finite value"),
        (lambda d: d.__setitem__("train", [1, 2]), r"\['train'\]: expected a dict"),
    ],
)
def test_malformed_pickles_name_the_problem(tmp_path, mult_data, corrupt, message):
    corrupt(mult_data)
    with pytest.raises(UserError, match=message):
        load_mosi(_write(tmp_path / "bad.pkl", mult_data))


def test_unknown_split_and_not_a_dict(tmp_path, mult_data):
    path = _write(tmp_path / "m.pkl", mult_data)
    with pytest.raises(UserError, match="unknown split 'dev'"):
        load_mosi(path, ["dev"])
    with pytest.raises(UserError, match="expected a dict"):
        load_mosi(_write(tmp_path / "list.pkl", [1, 2]))


@pytest.mark.parametrize("fmt", ["mult", "mmsa"])
def test_synth_mosi_makes_loadable_files_with_uneven_signal(tmp_path, fmt):
    out = tmp_path / f"{fmt}.pkl"
    assert cli(["synth", "mosi", "--out", str(out), "--format", fmt, "--n", "90", "--seed", "3"]) == 0
    raw = safe_load_pickle(out)["train"]
    assert ("labels" in raw) == (fmt == "mult") and ("regression_labels" in raw) == (fmt == "mmsa")
    data = load_mosi(out)
    assert [len(data[s]) for s in ("train", "valid", "test")] == [90, 30, 30]
    labels = data["train"].labels[:, 0]
    assert labels.min() >= -3 and labels.max() <= 3 and (labels == 0).any()

    def fit_r2(name: str) -> float:  # least squares on train, R^2 on test, from mean-pooled features
        def pooled(split):
            dataset = data[split]
            x = np.stack([dataset[i][name].mean(0).numpy() for i in range(len(dataset))])
            return np.c_[x, np.ones(len(x))], dataset.labels[:, 0]

        (xt, yt), (xe, ye) = pooled("train"), pooled("test")
        weights = np.linalg.lstsq(xt, yt, rcond=None)[0]
        return 1 - np.mean((xe @ weights - ye) ** 2) / np.var(ye)

    text, vision = fit_r2("text"), fit_r2("vision")
    assert text > 0.9 and text > vision + 0.2


def test_synth_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "m.pkl"
    assert cli(["synth", "mosi", "--out", str(out), "--n", "6"]) == 0
    before = out.read_bytes()
    assert cli(["synth", "mosi", "--out", str(out), "--n", "6", "--seed", "1"]) == 2
    assert "m.pkl already exists" in capsys.readouterr().err and out.read_bytes() == before
    assert cli(["synth", "mosi", "--out", str(out), "--n", "6", "--seed", "1", "--force"]) == 0
    assert out.read_bytes() != before
    assert cli(["synth", "mosi", "--out", str(tmp_path / "x.pkl"), "--n", "2"]) == 2


def test_synth_mult_pickle_reads_as_the_authors_cmudata_reads_it(tmp_path):
    """The authors' reader (zrguo/CGGM ``CMUData``), written out without their code: ``pickle.load``, each
    array ``.astype(float32)``, audio ``-inf`` set to 0, labels ``(N, 1, 1)``, sizes from the test split."""
    path = tmp_path / "mosi_data_noalign.pkl"
    assert cli(["synth", "mosi", "--out", str(path), "--n", "9"]) == 0
    with open(path, "rb") as file:
        dataset = pickle.load(file)  # the file this test has just written
    ours = load_mosi(path)
    sizes, infinite = {}, 0
    for split in ("train", "valid", "test"):
        raw = dataset[split]
        assert all(
            isinstance(raw[k], np.ndarray) and raw[k].dtype == np.float32
            for k in ("text", "audio", "vision", "labels")
        )
        infinite += int((raw["audio"] == -np.inf).sum())
        audio = raw["audio"].astype(np.float32)
        audio[audio == -np.inf] = 0
        arrays = {
            "text": torch.tensor(raw["text"].astype(np.float32)),
            "audio": torch.tensor(audio),
            "vision": torch.tensor(raw["vision"].astype(np.float32)),
            "labels": torch.tensor(raw["labels"].astype(np.float32)),
        }
        count = len(arrays["labels"])
        assert arrays["labels"].shape == (count, 1, 1)  # get_lbl_info() == (1, 1)
        assert all(a.ndim == 3 and len(a) == count and torch.isfinite(a).all() for a in arrays.values())
        sizes[split] = [(arrays[k].shape[1], arrays[k].shape[2]) for k in ("text", "audio", "vision")]
        batch = default_collate([{k: a[i] for k, a in arrays.items()} for i in range(2)])  # their DataLoader
        assert batch["labels"].shape == (2, 1, 1) and batch["audio"].shape == (2, *sizes[split][1])
        for i in range(count):
            sample = ours[split][i]
            for name in ("text", "audio", "vision"):
                torch.testing.assert_close(sample[name], arrays[name][i])
            torch.testing.assert_close(sample["label"], arrays["labels"][i, 0])
    assert infinite > 0  # MulT's -inf audio values are there, and zeroed by both readers
    assert sizes["train"] == sizes["valid"] == sizes["test"]  # their model is sized from the test split
