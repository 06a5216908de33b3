"""BraTS datalists: layout detection, folds, MONAI loading, and one clear line per bad input."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist

from cggm_seg.brats_labels import SEQUENCES
from cggm_seg.cli import main as cli_main
from cggm_seg.errors import UserError
from data_prep.brats_datalist import assign_folds, build_datalist, write_datalist
from data_prep.synth_brats import write_brats_dataset

CASE = "BraTS2021_00001"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three tiny cases in each layout, written once and copied by ``dataset``."""
    roots = {}
    for layout in ("brats2021", "brats2023", "msd"):
        roots[layout] = tmp_path_factory.mktemp(layout)
        write_brats_dataset(roots[layout], cases=3, size=16, seed=0, layout=layout)
    return roots


@pytest.fixture
def dataset(pristine: dict[str, Path], tmp_path: Path) -> Callable[[str], Path]:
    def copy(layout: str = "brats2021") -> Path:
        return Path(shutil.copytree(pristine[layout], tmp_path / layout))

    return copy


def _file(root: Path, suffix: str, case: str = CASE) -> Path:
    return root / case / f"{case}_{suffix}.nii.gz"


def _rewrite(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> None:
    nib.save(nib.Nifti1Image(data, nib.load(path).affine if affine is None else affine), path)


@pytest.mark.parametrize(
    "layout, suffixes",
    [
        ("brats2021", ("_flair", "_t1", "_t1ce", "_t2")),
        ("brats2023", ("-t2f", "-t1n", "-t1c", "-t2w")),
        ("msd", None),
    ],
)
def test_each_layout_round_trips_through_monai(
    dataset: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str, suffixes: tuple | None
) -> None:
    root = dataset(layout)
    out = tmp_path / "lists" / "brats.json"
    write_datalist(root, out, folds=3, seed=1)
    stored = json.loads(out.read_text())
    assert stored["layout"] == stored["label_convention"] == layout
    assert stored["sequences"] == list(SEQUENCES) and stored["num_folds"] == 3
    entries = stored["training"]
    assert sorted(e["fold"] for e in entries) == [0, 1, 2]
    assert all(e["label_convention"] == layout for e in entries)
    if suffixes is None:  # relative to the datalist's folder, where MONAI starts them from
        assert entries[0]["image"] == "../msd/imagesTr/BRATS_001.nii.gz"
        assert entries[0]["label"] == "../msd/labelsTr/BRATS_001.nii.gz"
        assert entries[0]["case_id"] == "BRATS_001"
    else:
        case = entries[1]["case_id"]
        assert entries[1]["image"] == [f"../{layout}/{case}/{case}{s}.nii.gz" for s in suffixes]
    monkeypatch.chdir(root)  # MONAI's reading does not depend on the working directory
    loaded = load_decathlon_datalist(out, data_list_key="training")
    assert len(loaded) == 3
    for entry in loaded:
        images = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
        assert all(Path(p).is_absolute() and Path(p).is_file() for p in [*images, entry["label"]])


def test_a_datalist_written_beside_the_root_loads_with_monai_from_anywhere(
    dataset: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``cggm-seg prepare brats --root D/brats --out D/dl.json``, relative arguments included."""
    dataset()
    monkeypatch.chdir(tmp_path)
    assert cli_main(["prepare", "brats", "--root", "brats2021", "--out", "dl.json", "--folds", "3"]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for entry in load_decathlon_datalist(tmp_path / "dl.json", data_list_key="training"):
        assert Path(entry["label"]).is_file() and str(entry["label"]).startswith(str(tmp_path / "brats2021"))
        assert all(Path(p).is_file() for p in entry["image"])


def test_absolute_paths_on_request(dataset: Callable, tmp_path: Path) -> None:
    root = dataset()
    datalist, _ = write_datalist(root, tmp_path / "lists" / "dl.json", folds=3, absolute=True)
    for entry in datalist["training"]:
        assert all(Path(p).is_absolute() and Path(p).is_file() for p in [*entry["image"], entry["label"]])
    out = tmp_path / "cli" / "dl.json"
    argv = ["prepare", "brats", "--root", str(root), "--out", str(out), "--folds", "3", "--absolute"]
    assert cli_main(argv) == 0
    for entry in json.loads(out.read_text())["training"]:
        assert Path(entry["label"]).is_absolute() and Path(entry["label"]).is_file()


def test_folds_are_balanced_deterministic_and_seeded() -> None:
    ids = [f"case{i:02d}" for i in range(10)]
    folds = assign_folds(ids, folds=3, seed=4)
    assert sorted(np.bincount(list(folds.values())).tolist()) == [3, 3, 4]
    assert assign_folds(list(reversed(ids)), folds=3, seed=4) == folds
    assert assign_folds(ids, folds=3, seed=5) != folds
    assert set(assign_folds(ids, folds=10, seed=0).values()) == set(range(10))


def test_datalist_folds_follow_the_seed(dataset: Callable) -> None:
    root = dataset()
    first, problems = build_datalist(root, folds=3, seed=2)
    again, _ = build_datalist(root, folds=3, seed=2)
    assert problems == [] and first == again
    assert {e["case_id"]: e["fold"] for e in first["training"]} == assign_folds(
        ["BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00002"], 3, 2
    )


def _missing_t1ce(root: Path) -> None:
    _file(root, "t1ce").unlink()


def _missing_label(root: Path) -> None:
    _file(root, "seg").unlink()


def _duplicate_label(root: Path) -> None:
    shutil.copy(_file(root, "seg"), root / CASE / f"{CASE}_seg.nii")


def _extra_label(root: Path) -> None:
    shutil.copy(_file(root, "seg"), root / CASE / f"{CASE}_seg_old.nii.gz")


def _other_shape(root: Path) -> None:
    _rewrite(_file(root, "t2"), np.zeros((16, 16, 15), np.float32))


def _shifted_affine(root: Path) -> None:
    path = _file(root, "t1")
    image = nib.load(path)
    affine = image.affine.copy()
    affine[0, 3] += 0.5
    _rewrite(path, image.get_fdata(dtype=np.float32), affine)


def _truncated(root: Path) -> None:
    path = _file(root, "flair")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(root: Path) -> None:
    _file(root, "t1").write_bytes(np.random.default_rng(0).bytes(3000))


def _label_value_3(root: Path) -> None:
    path = _file(root, "seg")
    label = np.asarray(nib.load(path).dataobj).copy()
    label[label == 4] = 3
    _rewrite(path, label)


def _fractional_label(root: Path) -> None:
    path = _file(root, "seg")
    _rewrite(path, np.asarray(nib.load(path).dataobj).astype(np.float32) / 2)


def _non_finite(root: Path) -> None:
    path = _file(root, "t1ce")
    data = nib.load(path).get_fdata(dtype=np.float32)
    data[0, 0, :3] = [np.nan, np.nan, np.inf]
    _rewrite(path, data)


@pytest.mark.parametrize(
    "damage, file_name, expected",
    [
        (_missing_t1ce, f"{CASE}_t1ce.nii.gz", "missing t1ce file"),
        (_missing_label, f"{CASE}_seg.nii.gz", "missing label file"),
        (_duplicate_label, f"{CASE}_seg.nii, {CASE}_seg.nii.gz", "2 label files, expected one"),
        (_extra_label, f"{CASE}_seg_old.nii.gz", "extra label-like file"),
        (_other_shape, f"{CASE}_t2.nii.gz", "shape (16, 16, 15) differs from BraTS2021_00001_flair.nii.gz's"),
        (
            _shifted_affine,
            f"{CASE}_t1.nii.gz",
            "affine differs from BraTS2021_00001_flair.nii.gz's by up to 0.5",
        ),
        (_truncated, f"{CASE}_flair.nii.gz", "truncated"),
        (_garbage, f"{CASE}_t1.nii.gz", "not a readable NIfTI file"),
        (_label_value_3, f"{CASE}_seg.nii.gz", "label values [3] outside the brats2021 set"),
        (_fractional_label, f"{CASE}_seg.nii.gz", "non-integer label values (e.g. 0.5)"),
        (
            _non_finite,
            f"{CASE}_t1ce.nii.gz",
            "2 NaN and 1 infinite voxel(s); training on them would make every weight NaN",
        ),
    ],
)
def test_each_bad_input_is_named_and_nothing_is_written(
    dataset: Callable,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    damage: Callable,
    file_name: str,
    expected: str,
) -> None:
    root = dataset()
    damage(root)
    out = tmp_path / "list.json"
    assert cli_main(["prepare", "brats", "--root", str(root), "--out", str(out), "--folds", "2"]) == 2
    err = capsys.readouterr().err
    assert f"{CASE}: {file_name}: {expected}" in err, err
    assert "1 problem(s) in 1 of 3 cases" in err and "--skip-invalid" in err
    assert not out.exists() and not list(tmp_path.glob(".list*"))


def test_every_problem_is_listed_on_its_own_line(dataset: Callable) -> None:
    root = dataset()
    _missing_t1ce(root)
    _label_value_3(root)
    _truncated(root)
    _garbage(root)
    _file(root, "t2", "BraTS2021_00002").unlink()
    with pytest.raises(UserError) as caught:
        build_datalist(root, folds=2)
    lines = str(caught.value).splitlines()
    assert lines[0].startswith("5 problem(s) in 2 of 3 cases")
    # the scan's problems come first, then those of each file of the case, in sequence order
    assert [line.strip().split(": ")[:2] for line in lines[1:]] == [
        [CASE, f"{CASE}_t1ce.nii.gz"],
        [CASE, f"{CASE}_flair.nii.gz"],
        [CASE, f"{CASE}_t1.nii.gz"],
        [CASE, f"{CASE}_seg.nii.gz"],
        ["BraTS2021_00002", "BraTS2021_00002_t2.nii.gz"],
    ]


def _msd_3d_image(root: Path) -> None:
    path = root / "imagesTr" / "BRATS_002.nii.gz"
    _rewrite(path, nib.load(path).get_fdata(dtype=np.float32)[..., 0])


def _msd_3_channels(root: Path) -> None:
    path = root / "imagesTr" / "BRATS_002.nii.gz"
    _rewrite(path, nib.load(path).get_fdata(dtype=np.float32)[..., :3])


def _msd_label_without_image(root: Path) -> None:
    shutil.copy(root / "labelsTr" / "BRATS_002.nii.gz", root / "labelsTr" / "BRATS_009.nii.gz")


@pytest.mark.parametrize(
    "damage, expected",
    [
        (
            _msd_3d_image,
            "BRATS_002: BRATS_002.nii.gz: expected a 4-D image with 4 channels "
            "(FLAIR, T1w, T1gd, T2w), found shape (16, 16, 16)",
        ),
        (_msd_3_channels, "BRATS_002: BRATS_002.nii.gz: expected a 4-D image with 4 channels"),
        (_msd_label_without_image, "BRATS_009: imagesTr/BRATS_009.nii.gz: missing image file"),
    ],
)
def test_msd_problems(dataset: Callable, damage: Callable, expected: str) -> None:
    root = dataset("msd")
    (root / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"AppleDouble junk")  # ignored, as in the archive
    damage(root)
    with pytest.raises(UserError, match="1 problem") as caught:
        build_datalist(root, folds=2)
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda p: p / "absent", "does not exist"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "is empty"),
        (lambda p: (p / "other" / "notes").mkdir(parents=True) or p / "other", "no BraTS cases found"),
    ],
)
def test_root_problems(tmp_path: Path, make: Callable, expected: str) -> None:
    root = make(tmp_path)
    with pytest.raises(UserError, match=expected):
        build_datalist(root, folds=2)


def test_skip_invalid_writes_the_good_cases_and_lists_the_rest(
    dataset: Callable, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = dataset()
    _missing_label(root)
    out = tmp_path / "list.json"
    assert (
        cli_main(
            ["prepare", "brats", "--root", str(root), "--out", str(out), "--folds", "2", "--skip-invalid"]
        )
        == 0
    )
    assert [e["case_id"] for e in json.loads(out.read_text())["training"]] == [
        "BraTS2021_00000",
        "BraTS2021_00002",
    ]
    assert f"skipped {CASE}: {CASE}_seg.nii.gz: missing label file" in caplog.text


def test_skip_invalid_leaves_out_a_case_with_non_finite_voxels(dataset: Callable, tmp_path: Path) -> None:
    root = dataset()
    _non_finite(root)
    datalist, problems = write_datalist(root, tmp_path / "list.json", folds=2, skip_invalid=True)
    assert [e["case_id"] for e in datalist["training"]] == ["BraTS2021_00000", "BraTS2021_00002"]
    assert problems == [
        f"{CASE}: {CASE}_t1ce.nii.gz: 2 NaN and 1 infinite voxel(s); training on them would "
        "make every weight NaN"
    ]


def test_one_fold_is_refused_before_any_case_is_read(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "list.json"
    assert (
        cli_main(["prepare", "brats", "--root", str(tmp_path / "absent"), "--out", str(out), "--folds", "1"])
        == 2
    )
    assert capsys.readouterr().err.strip() == (
        "cggm-seg prepare: error: --folds must be at least 2, got 1: "
        "training validates on one fold and trains on the others"
    )


def test_an_unwritable_out_is_refused_before_any_case_is_read(
    dataset: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "file").write_text("")
    read = []
    monkeypatch.setattr("data_prep.brats_datalist.check_case", lambda *a: read.append(a) or [])
    with pytest.raises(UserError, match=rf"^--out: cannot create {tmp_path}/file: {tmp_path}/file is a file"):
        write_datalist(dataset(), tmp_path / "file" / "list.json", folds=2)
    assert read == []


def test_no_valid_case_is_an_error_even_when_skipping(dataset: Callable, tmp_path: Path) -> None:
    root = dataset()
    for case in ("BraTS2021_00000", CASE, "BraTS2021_00002"):
        _file(root, "seg", case).unlink()
    with pytest.raises(UserError, match="no valid brats2021 case"):
        write_datalist(root, tmp_path / "list.json", folds=2, skip_invalid=True)
    assert not (tmp_path / "list.json").exists()


def test_existing_output_is_kept_unless_forced(
    dataset: Callable, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = dataset()
    out = tmp_path / "list.json"
    out.write_text("keep me")
    argv = ["prepare", "brats", "--root", str(root), "--out", str(out), "--folds", "3"]
    assert cli_main(argv) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert out.read_text() == "keep me"
    assert cli_main([*argv, "--force"]) == 0
    assert "3 brats2021 cases, 3 folds of [1, 1, 1]" in capsys.readouterr().out
    assert len(json.loads(out.read_text())["training"]) == 3


def test_more_folds_than_cases_is_an_error(dataset: Callable) -> None:
    with pytest.raises(UserError, match="--folds 4 is more than the 3 valid case"):
        build_datalist(dataset(), folds=4)


def test_mixed_layouts_are_an_error(dataset: Callable, pristine: dict[str, Path]) -> None:
    root = dataset()
    shutil.copytree(pristine["brats2023"] / "BraTS-GLI-00000-000", root / "BraTS-GLI-00000-000")
    with pytest.raises(UserError, match=r"mixes case layouts \(3 brats2021, 1 brats2023\)"):
        build_datalist(root, folds=2)
