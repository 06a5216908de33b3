"""IEMOCAP loaders (MulT pickle, h5 feature folder) and `cggm-seg synth iemocap`."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from torch.utils.data import DataLoader

from cggm_seg.adapters.iemocap import IEMOCAPFeatureDataset, load_iemocap
from cggm_seg.adapters.sequence_core import pad_collate
from cggm_seg.cli import main as cli
from cggm_seg.errors import UserError

CONFIGS = Path(__file__).resolve().parents[2] / "bundles" / "iemocap_cggm" / "configs"
LENGTHS = {"L": [3, 5, 2], "A": [7, 4, 6], "V": [2, 2, 1]}
DIMS = {"L": 4, "A": 3, "V": 2}
TYPES = {"L": "bert_large", "A": "comparE", "V": "denseface"}
SPLIT_FILES = {"trn": ["u0", "u1", "u2"], "val": ["u1"], "tst": ["u2", "u0"]}


def _mult_labels(classes):
    present = np.eye(4)[classes]
    return np.stack([1 - present, present], axis=-1)


def _mult(tmp_path, labels=None):
    rng = np.random.default_rng(0)
    split = {
        "text": rng.normal(size=(3, 4, 5)),
        "audio": rng.normal(size=(3, 6, 2)),
        "vision": rng.normal(size=(3, 2, 3)),
        "labels": _mult_labels([2, 0, 3]) if labels is None else labels,
    }
    path = tmp_path / "iemocap_data_noalign.pkl"
    path.write_bytes(pickle.dumps({"train": split, "valid": split, "test": split}, protocol=4))
    return path


def _folder(root, one_hot=True, names_dtype="S"):
    """The authors' h5 layout, written by hand: utterance u<i> has LENGTHS[dir][i] steps, value i + 1;
    the comparE statistics (mean 0, std 1) leave the audio as it is."""
    for directory, kind in TYPES.items():
        (root / directory).mkdir(parents=True)
        with h5py.File(root / directory / f"{kind}.h5", "w") as h5:
            for i, length in enumerate(LENGTHS[directory]):
                h5[f"u{i}"] = np.full((length, DIMS[directory]), float(i + 1), np.float32)
    with h5py.File(root / "A" / "comparE_mean_std.h5", "w") as h5:
        h5["1/mean"], h5["1/std"] = np.zeros(DIMS["A"]), np.ones(DIMS["A"])
    target = root / "target" / "1"
    target.mkdir(parents=True)
    classes = {"u0": 1, "u1": 3, "u2": 0}
    for prefix, names in SPLIT_FILES.items():
        labels = np.array([classes[n] for n in names])
        np.save(target / f"{prefix}_label.npy", np.eye(4, dtype=np.float32)[labels] if one_hot else labels)
        np.save(target / f"{prefix}_int2name.npy", np.array(names, dtype=names_dtype).reshape(-1, 1))
    return root


def test_mult_pickle_classes_are_the_present_emotion(tmp_path):
    data = load_iemocap(_mult(tmp_path))
    assert data["train"].labels.tolist() == [2, 0, 3]
    assert data["test"].feature_dims() == {"text": 5, "audio": 2, "vision": 3}
    assert data["valid"][1]["label"].item() == 0


@pytest.mark.parametrize(
    "labels, message",
    [
        (
            np.stack([np.zeros((3, 4)), np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]])], -1),
            "first at 0",
        ),
        (np.zeros((3, 4, 2)), r"3 sample\(s\) do not"),
        (np.zeros((3, 4)), r"expected labels \[N, 4, 2\]"),
    ],
)
def test_mult_pickle_bad_labels(tmp_path, labels, message):
    with pytest.raises(UserError, match=message):
        load_iemocap(_mult(tmp_path, labels))


def test_h5_folder_reads_each_utterance_by_name(tmp_path):
    data = load_iemocap(_folder(tmp_path / "iemocap"))
    train, test = data["train"], data["test"]
    assert isinstance(train, IEMOCAPFeatureDataset) and train._files is None  # opened on first use
    assert train.feature_dims() == {"text": 4, "audio": 3, "vision": 2}
    assert train.labels.tolist() == [1, 3, 0] and test.labels.tolist() == [0, 1]
    sample = test[0]  # utterance u2
    assert [sample[name].shape for name in ("text", "audio", "vision")] == [(2, 4), (6, 3), (1, 2)]
    assert sample["audio"][0, 0].item() == 3.0 and sample["label"].item() == 0
    batch = pad_collate([train[i] for i in range(3)])
    assert batch["audio"].shape == (3, 7, 3) and batch["lengths"]["audio"].tolist() == [7, 4, 6]
    assert batch["audio"][1, 4:].abs().sum() == 0
    pickle.dumps(train)  # open h5 handles are dropped, so DataLoader workers can receive it


def test_h5_folder_in_worker_processes(tmp_path):
    train = load_iemocap(_folder(tmp_path / "iemocap"), ["train"])["train"]
    loader = DataLoader(train, batch_size=2, collate_fn=pad_collate, num_workers=2)
    assert sorted(int(x) for batch in loader for x in batch["label"]) == [0, 1, 3]


def test_h5_folder_accepts_class_indices_str_names_and_normalises(tmp_path):
    root = _folder(tmp_path / "iemocap", one_hot=False, names_dtype="U")
    with h5py.File(root / "A" / "comparE_mean_std.h5", "w") as h5:
        h5["1/mean"] = np.array([1.0, 1.0, 1.0])
        h5["1/std"] = np.array([2.0, 0.0, 4.0])  # a zero std is treated as 1
    sample = load_iemocap(root, ["valid"])["valid"][0]  # u1: audio all 2.0
    assert sample["audio"][0].tolist() == [0.5, 1.0, 0.25] and sample["label"].item() == 3


def test_h5_folder_errors_name_the_file(tmp_path):
    root = _folder(tmp_path / "iemocap")
    with h5py.File(root / "V" / "denseface.h5", "a") as h5:
        del h5["u1"]
    with pytest.raises(UserError, match=r"denseface.h5: utterance 'u1' should be a .* found nothing"):
        load_iemocap(root, ["train"])
    with pytest.raises(UserError, match=r"target/2/trn_label.npy: .npy file not found"):
        load_iemocap(root, ["train"], cv=2)
    with pytest.raises(UserError, match="openSMILE.h5: feature file not found"):
        load_iemocap(root, ["test"], feature_types={"audio": "openSMILE"})
    with pytest.raises(UserError, match=r"feature_types: unknown modalities \['sound'\]"):
        load_iemocap(root, ["test"], feature_types={"sound": "x"})
    with h5py.File(root / "L" / "bert_large.h5", "a") as h5:
        h5["u2"][0, 0] = np.nan
    with pytest.raises(UserError, match="bert_large.h5: utterance 'u2' has non-finite values"):
        load_iemocap(root, ["test"])["test"][0]
    np.save(root / "target" / "1" / "val_label.npy", np.array([7]))
    with pytest.raises(UserError, match="val_label.npy: expected one-hot labels"):
        load_iemocap(root, ["valid"])
    np.save(root / "target" / "1" / "tst_label.npy", np.eye(4)[[0]])
    with pytest.raises(UserError, match="disagree on the number of samples"):
        load_iemocap(root, ["test"])


def test_comparE_needs_its_statistics_as_in_the_authors_loader(tmp_path):
    root = _folder(tmp_path / "iemocap")
    (root / "target" / "3").symlink_to(root / "target" / "1")
    with pytest.raises(UserError, match=r"comparE_mean_std.h5\['3'\]: expected a dict"):
        load_iemocap(root, ["test"], cv=3)
    (root / "A" / "comparE_mean_std.h5").unlink()
    with pytest.raises(
        UserError,
        match="comparE_mean_std.h5: not found; comparE features are normalised "
        "with fold 1's training statistics '1/mean'",
    ):
        load_iemocap(root, ["test"])
    (root / "A" / "comparE.h5").rename(root / "A" / "openSMILE.h5")  # other types: statistics optional
    assert len(load_iemocap(root, ["test"], feature_types={"audio": "openSMILE"})["test"]) == 2


@pytest.mark.parametrize("fmt", ["mult", "h5"])
def test_synth_iemocap_is_loadable(tmp_path, fmt):
    out = tmp_path / ("iemocap.pkl" if fmt == "mult" else "iemocap")
    assert cli(["synth", "iemocap", "--out", str(out), "--format", fmt, "--n", "8"]) == 0
    data = load_iemocap(out)
    assert [len(data[s]) for s in ("train", "valid", "test")] == [8, 3, 3]
    assert set(data["train"].labels.tolist()) == {0, 1, 2, 3}
    lengths = {data["train"][i]["audio"].shape[0] for i in range(8)}
    assert (len(lengths) > 1) == (fmt == "h5")  # variable lengths only in the h5 layout
    if fmt == "h5":
        assert cli(["synth", "iemocap", "--out", str(out), "--format", fmt, "--n", "8"]) == 2


def test_synth_h5_folder_opens_as_the_authors_loader_opens_it(tmp_path):
    """Every file, key and decoding step of the authors' reader (zrguo/CGGM ``IEMOData`` with their options
    ``cvNo``, ``A_type="comparE"``, ``V_type="denseface"``, ``L_type="bert_large"``, ``norm_method="trn"``),
    written out here without their code, on a synthetic folder with the real feature sizes."""
    root, cv = tmp_path / "iemocap", 2
    argv = [
        "synth",
        "iemocap",
        "--out",
        str(root),
        "--format",
        "h5",
        "--n",
        "8",
        "--cv",
        str(cv),
        "--dims",
        "1024,130,342",
    ]
    assert cli(argv) == 0
    ours = load_iemocap(root, cv=cv)
    with (
        h5py.File(root / "A" / "comparE.h5", "r") as audio,
        h5py.File(root / "V" / "denseface.h5", "r") as vision,
        h5py.File(root / "L" / "bert_large.h5", "r") as text,
        h5py.File(root / "A" / "comparE_mean_std.h5", "r") as mean_std,
    ):
        mean = torch.from_numpy(mean_std[str(cv)]["mean"][()]).unsqueeze(0).float()
        std = torch.from_numpy(mean_std[str(cv)]["std"][()]).unsqueeze(0).float()
        for split, set_name in (("train", "trn"), ("valid", "val"), ("test", "tst")):
            one_hot = np.load(root / "target" / str(cv) / f"{set_name}_label.npy")
            int2name = np.load(root / "target" / str(cv) / f"{set_name}_int2name.npy")
            assert one_hot.shape == (len(int2name), 4) and (np.sort(one_hot, axis=1) == [0, 0, 0, 1]).all()
            labels = np.argmax(one_hot, axis=1)
            for index, label in enumerate(labels):
                name = int2name[index][0].decode()
                steps = [
                    torch.from_numpy(text[name][()]).float(),
                    (torch.from_numpy(audio[name][()]).float() - mean) / std,
                    torch.from_numpy(vision[name][()]).float(),
                ]
                assert [s.shape[1] for s in steps] == [1024, 130, 342]  # their get_dim()
                assert len(steps[1]) <= 350 and all(torch.isfinite(s).all() for s in steps)  # their collate
                sample = ours[split][index]
                for modality, expected in zip(("text", "audio", "vision"), steps, strict=True):
                    torch.testing.assert_close(sample[modality], expected)
                assert sample["label"].item() == label
        training = np.load(root / "target" / str(cv) / "trn_int2name.npy")
        frames = np.concatenate([audio[name[0].decode()][()] for name in training])
        torch.testing.assert_close(mean[0], torch.from_numpy(frames.mean(axis=0)))
        torch.testing.assert_close(std[0], torch.from_numpy(frames.std(axis=0)))
    assert cli([*argv[:-1], "1024,130"]) == 2  # three sizes or nothing


@pytest.mark.slow
def test_bundle_takes_the_real_feature_sizes_from_the_data(tmp_path):
    root = tmp_path / "iemocap"
    assert (
        cli(["synth", "iemocap", "--out", str(root), "--format", "h5", "--n", "8", "--dims", "1024,130,342"])
        == 0
    )
    flow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"),
        workflow_type="train",
        logging_file=str(CONFIGS / "logging.conf"),
        data_path=str(root),
        output_dir=str(tmp_path / "run"),
        epochs=1,
        batch_size=8,
        d_model=8,
        num_heads=2,
        encoder_layers=1,
        fusion_layers=1,
        device="cpu",
        num_workers=0,
    )
    flow.initialize()
    encoders = flow.parser.get_parsed_content("network_def").encoders
    assert {name: e.projection.in_channels for name, e in encoders.items()} == {
        "text": 1024,
        "audio": 130,
        "vision": 342,
    }
    flow.run()
    flow.finalize()
    assert (tmp_path / "run" / "checkpoint_final.pt").is_file()
