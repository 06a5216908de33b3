"""Synthetic BraTS phantoms: determinism, label structure, per-sequence visibility, file layouts, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.stats import mannwhitneyu

from cggm_seg.brats_labels import CONVENTIONS, SEQUENCES
from cggm_seg.cli import main as cli_main
from cggm_seg.errors import UserError
from data_prep.synth_brats import brats_affine, synth_case, write_brats_dataset

BRATS2021 = CONVENTIONS["brats2021"]


def _case(seed: int, size: int = 24, **settings) -> tuple[dict[str, np.ndarray], np.ndarray]:
    return synth_case(np.random.default_rng([seed, 0]), size, **settings)


def _auc(inside: np.ndarray, outside: np.ndarray) -> float:
    """How well one intensity threshold tells two voxel sets apart: 0.5 not at all, 1 perfectly."""
    u = mannwhitneyu(inside, outside).statistic / (inside.size * outside.size)
    return max(u, 1.0 - u)


def _region_visibility(image: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """Separability of each region from the tissue around it: WT from the brain next to it,
    TC from oedema, ET from the rest of the tumour, necrosis from oedema."""
    wt, tc, et = (label > 0), np.isin(label, (1, 4)), label == 4
    near = ndimage.binary_dilation(wt, iterations=2) & ~wt & (image > 0)
    return {
        "WT": _auc(image[wt], image[near]),
        "TC": _auc(image[tc], image[wt & ~tc]),
        "ET": _auc(image[et], image[wt & ~et]),
        "necrosis": _auc(image[label == 1], image[wt & ~tc]),
    }


def test_same_seed_same_case_and_other_seed_differs() -> None:
    first, again, other = _case(3), _case(3), _case(4)
    for name in SEQUENCES:
        np.testing.assert_array_equal(first[0][name], again[0][name])
        assert not np.array_equal(first[0][name], other[0][name])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])


@pytest.mark.parametrize("seed", range(5))
def test_labels_nested_and_all_regions_present_inside_brain(seed: int) -> None:
    images, label = _case(seed, size=16)
    assert label.dtype == np.uint8 and label.shape == (16, 16, 16)
    assert set(np.unique(label).tolist()) == {0, 1, 2, 4}
    tc, wt, et = BRATS2021.region_masks(label)
    assert et.any() and (tc & ~et).any() and (wt & ~tc).any()
    assert not (et & ~tc).any() and not (tc & ~wt).any()
    assert list(images) == list(SEQUENCES)
    for image in images.values():
        assert image.dtype == np.float32 and image.shape == (16, 16, 16)
        assert (image[wt] > 0).all()  # the tumour lies inside the brain
        assert (image[0] == 0).all() and (image[:, :, -1] == 0).all()  # skull-stripped background


def test_each_sequence_hides_a_region_but_together_they_show_all() -> None:
    table = {name: [] for name in SEQUENCES}
    for seed in range(3):
        images, label = _case(seed, size=48)
        for name in SEQUENCES:
            table[name].append(_region_visibility(images[name], label))
    worst = {name: {r: max(v[r] for v in rows) for r in rows[0]} for name, rows in table.items()}
    best = {name: {r: min(v[r] for v in rows) for r in rows[0]} for name, rows in table.items()}
    for name in SEQUENCES:  # no sequence separates WT, TC and ET all at once
        assert min(worst[name][r] for r in ("WT", "TC", "ET")) < 0.9, (name, worst[name])
    assert worst["flair"]["TC"] < 0.9 and worst["t1ce"]["WT"] < 0.8 and worst["t2"]["ET"] < 0.9
    assert best["flair"]["WT"] > 0.97 and best["t2"]["WT"] > 0.9
    assert best["t1ce"]["ET"] > 0.97
    assert best["t2"]["necrosis"] > 0.8


def _only_changes(sequence: str, size: int = 40, **settings) -> tuple[dict, dict, np.ndarray]:
    """The plain case and the case with ``settings``: the same label and every other sequence unchanged."""
    plain, label = _case(1, size=size)
    changed, same_label = _case(1, size=size, **settings)
    np.testing.assert_array_equal(label, same_label)
    for name in SEQUENCES:
        if name != sequence:
            np.testing.assert_array_equal(plain[name], changed[name])
    return plain, changed, label


def test_contrast_zero_hides_the_tumour_in_that_sequence_only() -> None:
    plain, hidden, label = _only_changes("t1ce", contrast={"t1ce": 0.0})
    # partial-volume blur reaches 2 voxels (sigma 0.6, truncated at 4 sigma) along each axis
    around = ndimage.binary_dilation(label > 0, structure=np.ones((3, 3, 3)), iterations=2)
    np.testing.assert_array_equal(plain["t1ce"][~around], hidden["t1ce"][~around])
    assert _region_visibility(plain["t1ce"], label)["ET"] > 0.97
    assert _region_visibility(hidden["t1ce"], label)["ET"] < 0.8


def test_texture_shows_the_tumour_as_texture_not_brightness_in_that_sequence_only() -> None:
    plain, textured, label = _only_changes("flair", texture=("flair",))
    wt = label > 0
    near = ndimage.binary_dilation(wt, iterations=2) & ~wt & (plain["flair"] > 0)
    assert _region_visibility(plain["flair"], label)["WT"] > 0.9  # bright in plain FLAIR
    # textured: about as bright on average as the tissue around it, but far more variable
    assert abs(np.median(textured["flair"][wt]) / np.median(textured["flair"][near]) - 1.0) < 0.3
    assert textured["flair"][wt].std() > 2 * textured["flair"][near].std()


def test_misplaced_sequence_shows_the_tumour_elsewhere_and_nothing_where_it_is() -> None:
    plain, moved, label = _only_changes("t2", size=32, misplaced={"t2": 1.0})
    assert _region_visibility(plain["t2"], label)["WT"] > 0.9
    assert _region_visibility(moved["t2"], label)["WT"] < 0.75  # the true place looks like brain
    shifted = np.roll(label, 16, axis=1) > 0
    elsewhere = shifted & (label == 0) & (moved["t2"] > 0)
    assert _region_visibility(moved["t2"], elsewhere.astype(np.uint8))["WT"] > 0.9  # the decoy is bright


def test_misplaced_share_picks_that_share_of_cases() -> None:
    shown_elsewhere = []
    for seed in range(40):
        plain, label = _case(seed, size=16)
        moved, _ = _case(seed, size=16, misplaced={"t2": 0.25})
        shown_elsewhere.append(not np.array_equal(plain["t2"], moved["t2"]))
    assert 4 <= sum(shown_elsewhere) <= 17  # binomial(40, 0.25): mean 10
    with pytest.raises(UserError, match="misplaced"):
        _case(0, size=16, misplaced={"t2": 1.5})


def test_misplaced_sequences_share_one_draw_per_case() -> None:
    def moved(seed: int, shares: dict[str, float]) -> dict[str, bool]:
        plain, _ = _case(seed, size=16)
        changed, _ = _case(seed, size=16, misplaced=shares)
        return {name: not np.array_equal(plain[name], changed[name]) for name in shares}

    same = [moved(seed, {"t2": 0.5, "t1ce": 0.5}) for seed in range(12)]
    assert all(m["t2"] == m["t1ce"] for m in same) and 0 < sum(m["t2"] for m in same) < 12
    nested = [moved(seed, {"t2": 0.25, "t1ce": 0.75}) for seed in range(12)]
    assert all(m["t1ce"] for m in nested if m["t2"])  # the smaller share's cases are among the larger's
    assert sum(m["t1ce"] for m in nested) > sum(m["t2"] for m in nested)


def test_noise_setting_sets_that_sequence_noise_std() -> None:
    quiet, label = _case(2, size=32, noise={"flair": 0.0})
    loud, _ = _case(2, size=32, noise={"flair": 0.3})
    brain = quiet["t1"] > 0
    residual = (loud["flair"] - quiet["flair"])[brain] / 450.0  # FLAIR gain
    assert 0.2 < residual.std() < 0.32  # 0.3, times a bias field of about 1, slightly folded by |.|
    np.testing.assert_array_equal(loud["t1ce"], quiet["t1ce"])


@pytest.mark.parametrize("settings", [{"noise": {"flare": 0.1}}, {"contrast": {"t1": -1.0}}])
def test_bad_settings_are_user_errors_naming_them(settings: dict) -> None:
    with pytest.raises(UserError, match="flare|t1"):
        _case(0, **settings)


def _read(path: Path) -> nib.Nifti1Image:
    assert path.is_file(), path
    return nib.load(path)


@pytest.mark.parametrize("layout, label_values", [("brats2021", {0, 1, 2, 4}), ("brats2023", {0, 1, 2, 3})])
def test_folder_layouts_write_named_1mm_volumes(tmp_path: Path, layout: str, label_values: set) -> None:
    folders = write_brats_dataset(tmp_path, cases=2, size=16, seed=7, layout=layout)
    names = {
        "brats2021": ("BraTS2021_00001", "_", ("flair", "t1", "t1ce", "t2", "seg")),
        "brats2023": ("BraTS-GLI-00001-000", "-", ("t2f", "t1n", "t1c", "t2w", "seg")),
    }
    case, sep, suffixes = names[layout]
    assert folders[1] == tmp_path / case
    assert sorted(p.name for p in folders[1].iterdir()) == sorted(f"{case}{sep}{s}.nii.gz" for s in suffixes)
    images, label = synth_case(np.random.default_rng([7, 1]), 16)
    for sequence, suffix in zip(SEQUENCES, suffixes, strict=False):
        image = _read(folders[1] / f"{case}{sep}{suffix}.nii.gz")
        assert image.get_data_dtype() == np.float32
        np.testing.assert_array_equal(image.get_fdata(dtype=np.float32), images[sequence])
    seg = _read(folders[1] / f"{case}{sep}seg.nii.gz")
    assert seg.get_data_dtype() == np.uint8
    written = np.asarray(seg.dataobj)
    assert set(np.unique(written).tolist()) == label_values
    np.testing.assert_array_equal(CONVENTIONS[layout].region_masks(written), BRATS2021.region_masks(label))
    np.testing.assert_allclose(seg.affine, brats_affine(16))
    assert seg.header.get_zooms() == (1.0, 1.0, 1.0)
    assert np.abs(seg.affine[:3, 3]).sum() > 0


def test_msd_layout_writes_4d_images_msd_labels_and_dataset_json(tmp_path: Path) -> None:
    paths = write_brats_dataset(tmp_path, cases=2, size=16, seed=7, layout="msd")
    assert paths == [tmp_path / "imagesTr" / "BRATS_001.nii.gz", tmp_path / "imagesTr" / "BRATS_002.nii.gz"]
    images, label = synth_case(np.random.default_rng([7, 0]), 16)
    stacked = _read(paths[0]).get_fdata(dtype=np.float32)
    assert stacked.shape == (16, 16, 16, 4)
    for channel, sequence in enumerate(SEQUENCES):  # FLAIR, T1w, T1gd, T2w
        np.testing.assert_array_equal(stacked[..., channel], images[sequence])
    written = np.asarray(_read(tmp_path / "labelsTr" / "BRATS_001.nii.gz").dataobj)
    assert set(np.unique(written).tolist()) == {0, 1, 2, 3}
    np.testing.assert_array_equal(written == 1, label == 2)  # MSD 1 = oedema = BraTS 2021 label 2
    np.testing.assert_array_equal(written == 3, label == 4)
    description = json.loads((tmp_path / "dataset.json").read_text())
    assert description["numTraining"] == 2 and description["modality"]["2"] == "t1gd"
    assert description["training"][1] == {
        "image": "./imagesTr/BRATS_002.nii.gz",
        "label": "./labelsTr/BRATS_002.nii.gz",
    }


def test_case_bytes_do_not_depend_on_how_many_cases_are_written(tmp_path: Path) -> None:
    one = write_brats_dataset(tmp_path / "one", cases=1, size=16, seed=5)[0]
    three = write_brats_dataset(tmp_path / "three", cases=3, size=16, seed=5)[0]
    for path in one.iterdir():
        assert path.read_bytes() == (three / path.name).read_bytes()


def test_refuses_non_empty_folder_unless_forced(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty.*--force"):
        write_brats_dataset(tmp_path, cases=1, size=16, seed=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    write_brats_dataset(tmp_path, cases=1, size=16, seed=0, force=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "BraTS2021_00000" / "BraTS2021_00000_seg.nii.gz").is_file()
    assert not [p for p in (tmp_path / "BraTS2021_00000").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"size": 8}, "size must be at least 16"),
        ({"cases": 0}, "cases must be at least 1"),
        ({"layout": "brats2019"}, "layout 'brats2019' is unknown"),
    ],
)
def test_bad_arguments_are_user_errors(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(UserError, match=match):
        write_brats_dataset(tmp_path / "out", **{"cases": 1, "size": 16, "seed": 0, **kwargs})


def test_cli_writes_cases_and_rejects_bad_settings(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "data"
    argv = [
        "synth",
        "brats",
        "--out",
        str(out),
        "--cases",
        "2",
        "--size",
        "16",
        "--seed",
        "1",
        "--layout",
        "brats2023",
        "--noise",
        "flair=0.3, t1ce=0.05",
        "--contrast",
        "t1ce=2",
    ]
    assert cli_main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"]
    assert cli_main(argv) == 2
    assert "not empty" in capsys.readouterr().err
    assert cli_main([*argv, "--force"]) == 0
    assert cli_main(["synth", "brats", "--out", str(tmp_path / "x"), "--noise", "flair:0.3"]) == 2
    assert "--noise: 'flair:0.3' is not name=number" in capsys.readouterr().err
    assert cli_main(["synth", "brats", "--out", str(tmp_path / "x"), "--contrast", "dwi=1"]) == 2
    assert "unknown sequence(s) ['dwi']" in capsys.readouterr().err
    assert cli_main(["synth", "brats", "--out", str(tmp_path / "x"), "--texture", "flair,dwi"]) == 2
    assert "texture: unknown sequence(s) ['dwi']" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    textured = tmp_path / "textured"
    assert (
        cli_main(
            ["synth", "brats", "--out", str(textured), "--cases", "1", "--size", "16", "--texture", "flair"]
        )
        == 0
    )
    assert len(list(textured.iterdir())) == 1
    assert cli_main(["synth", "brats", "--out", str(tmp_path / "x"), "--misplaced", "t2=2"]) == 2
    assert "misplaced: {'t2': 2.0} must be shares between 0 and 1" in capsys.readouterr().err
