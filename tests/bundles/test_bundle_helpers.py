"""The small functions the bundle configs call, and the label/region transforms."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from cggm_seg.brats_labels import case_id_from_filename
from cggm_seg.bundle import (
    case_name_formatter,
    datalist_convention,
    fold_split,
    region_output,
    select_entries,
    trained_checkpoint,
)
from cggm_seg.errors import UserError
from cggm_seg.transforms import LabelsToRegionsd, RegionsToLabelsd


@pytest.fixture
def datalist(tmp_path):
    entries = [
        {
            "image": [f"c{i}/c{i}_flair.nii.gz"],
            "label": f"c{i}/c{i}_seg.nii.gz",
            "fold": i % 3,
            "case_id": f"c{i}",
        }
        for i in range(6)
    ]
    for i in range(6):
        (tmp_path / f"c{i}").mkdir()
        (tmp_path / f"c{i}" / f"c{i}_flair.nii.gz").write_bytes(b"")
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": entries, "label_convention": "msd"}))
    return path


def test_fold_split_and_selection(datalist, tmp_path):
    train, val = fold_split(datalist, tmp_path, 1)
    assert [e["case_id"] for e in val] == ["c1", "c4"]
    assert [e["case_id"] for e in train] == ["c0", "c2", "c3", "c5"]
    assert train[0]["image"] == [str(tmp_path / "c0" / "c0_flair.nii.gz")]
    assert len(select_entries(datalist, tmp_path)) == 6
    assert [e["case_id"] for e in select_entries(datalist, tmp_path, fold=2)] == ["c2", "c5"]
    assert datalist_convention(datalist) == "msd"


def test_cases_whose_predictions_would_share_a_name_are_refused(datalist, tmp_path):
    """The same case in two folders: inference would write one label map for both, silently."""
    content = json.loads(datalist.read_text())
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "c3_flair.nii.gz").write_bytes(b"")
    content["training"].append({**content["training"][3], "image": ["copy/c3_flair.nii.gz"], "fold": 0})
    datalist.write_text(json.dumps(content))
    both = r"predictions would both be c3.nii.gz: \S*/c3/c3_flair.nii.gz and \S*/copy/c3_flair"
    with pytest.raises(UserError, match=both):
        select_entries(datalist, tmp_path)
    with pytest.raises(UserError, match="would both be c3.nii.gz"):
        fold_split(datalist, tmp_path, 1)


def test_datalist_errors_name_the_setting(datalist, tmp_path):
    with pytest.raises(UserError, match="fold: 5 is not in the datalist"):
        fold_split(datalist, tmp_path, 5)
    with pytest.raises(UserError, match="fold: no entry of 'training'"):
        select_entries(datalist, tmp_path, fold=9)
    with pytest.raises(UserError, match="data_list_key: .* has no 'testing' list"):
        select_entries(datalist, tmp_path, key="testing")
    with pytest.raises(UserError, match="datalist: .*missing.json does not exist"):
        fold_split(tmp_path / "missing.json", tmp_path, 0)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(UserError, match="datalist: .*broken.json is not valid JSON"):
        datalist_convention(broken)


def test_datalist_paths_start_at_its_own_folder_and_old_ones_at_dataset_dir(datalist, tmp_path, recwarn):
    moved = tmp_path / "lists" / "datalist.json"
    moved.parent.mkdir()
    content = json.loads(datalist.read_text())
    moved.write_text(json.dumps(content))  # paths relative to the BraTS root: a datalist from before 0.2.0
    deprecated = r"relative to dataset_dir .* \(deprecated since 0.6.0, refused from 0.7.0\)"
    with pytest.warns(FutureWarning, match=deprecated):
        assert fold_split(moved, tmp_path, 1)[1][0]["image"] == [str(tmp_path / "c1" / "c1_flair.nii.gz")]

    for entry in content["training"]:  # relative to the datalist's folder, as MONAI reads them
        entry["image"] = [f"../{entry['image'][0]}"]
    moved.write_text(json.dumps(content))
    recwarn.clear()
    other = tmp_path / "lists"  # dataset_dir no longer matters
    assert fold_split(moved, other, 1)[1][0]["image"] == [str(tmp_path / "c1" / "c1_flair.nii.gz")]
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]

    (tmp_path / "c0" / "c0_flair.nii.gz").unlink()
    with pytest.raises(UserError, match=r"datalist: .* lists \.\./c0/c0_flair.nii.gz, which is neither"):
        fold_split(moved, other, 1)


def test_trained_checkpoint_is_the_best_model_else_the_final_one(tmp_path):
    with pytest.raises(UserError, match=r"^checkpoint: neither model.pt nor checkpoint_final.pt in .*\)$"):
        trained_checkpoint(tmp_path)
    (tmp_path / "checkpoint_final.pt").write_bytes(b"")
    assert trained_checkpoint(tmp_path) == str(tmp_path / "checkpoint_final.pt")
    (tmp_path / "model.pt").write_bytes(b"")
    assert trained_checkpoint(tmp_path) == str(tmp_path / "model.pt")


def test_epoch_checkpoints_are_ordered_by_epoch(tmp_path):
    from cggm_seg.checkpoint import epoch_checkpoints

    assert epoch_checkpoints(tmp_path) == []
    for name in (
        "checkpoint_epoch=2.pt",
        "checkpoint_epoch=10.pt",
        "model.pt",
        "checkpoint_final.pt",
        ".checkpoint_epoch=11.a1b2c3d4.pt",
        "old_checkpoint_epoch=12.pt",
    ):
        (tmp_path / name).write_bytes(b"")
    assert epoch_checkpoints(tmp_path) == [
        (2, tmp_path / "checkpoint_epoch=2.pt"),
        (10, tmp_path / "checkpoint_epoch=10.pt"),
    ]


@pytest.mark.parametrize(
    ("path", "case"),
    [
        ("/d/BraTS2021_00042/BraTS2021_00042_flair.nii.gz", "BraTS2021_00042"),
        ("/d/BraTS-GLI-00001-000/BraTS-GLI-00001-000-t2f.nii.gz", "BraTS-GLI-00001-000"),
        ("/d/imagesTr/BRATS_001.nii.gz", "BRATS_001"),
        ("case.nii", "case"),
    ],
)
def test_case_ids(path, case):
    assert case_id_from_filename(path) == case
    assert case_name_formatter({"filename_or_obj": path}, None) == {"subject": case}


def test_region_output_picks_one_channel():
    items = [{"pred": torch.arange(3.0).reshape(3, 1), "label": torch.ones(3, 1)}]
    preds, labels = region_output(2)(items)
    assert preds[0].tolist() == [[2.0]] and labels[0].shape == (1, 1)


@pytest.mark.parametrize(
    ("convention", "labels"),
    [("brats2021", [0, 1, 2, 4]), ("brats2023", [0, 1, 2, 3]), ("msd", [0, 1, 2, 3])],
)
def test_labels_regions_round_trip(convention, labels):
    label = MetaTensor(torch.tensor(labels, dtype=torch.float32).reshape(1, 4, 1, 1), affine=torch.eye(4) * 2)
    regions = LabelsToRegionsd("label", convention)({"label": label})["label"]
    assert regions.shape == (3, 4, 1, 1) and regions.dtype == torch.float32
    back = RegionsToLabelsd("pred", convention)({"pred": regions})["pred"]
    assert back.flatten().tolist() == labels
    assert isinstance(back, MetaTensor) and torch.equal(back.affine, label.affine)


def test_brats2021_regions_by_hand():
    label = torch.tensor([0, 1, 2, 4], dtype=torch.float32).reshape(1, 4)
    regions = LabelsToRegionsd("label")({"label": label})["label"]
    # TC = {1, 4}, WT = {1, 2, 4}, ET = {4}
    np.testing.assert_array_equal(regions.numpy(), [[0, 1, 0, 1], [0, 1, 1, 1], [0, 0, 0, 1]])


def test_bundle_override_parses_json_and_keeps_expressions():
    import argparse

    from cggm_seg.commands.options import bundle_override

    assert bundle_override("cggm#coeff_clip=[0, 2]") == ("cggm#coeff_clip", [0, 2])
    assert bundle_override("amp=false") == ("amp", False)
    assert bundle_override("dtype=$torch.bfloat16") == ("dtype", "$torch.bfloat16")
    with pytest.raises(argparse.ArgumentTypeError, match="expected ID=JSON"):
        bundle_override("novalue")
