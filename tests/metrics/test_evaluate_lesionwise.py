"""`cggm-seg evaluate --scheme`, its summary and plots, parallel scoring, and BratsScoreHandler's scheme.

The lesion-wise numbers themselves are tested in test_metrics_lesionwise.py; here hand-built cases
check the wiring: which scheme runs, what the table and summary hold, how missing predictions and
bad labels are handled, and that workers, the command and the bundle handler all agree.
"""

import csv
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader, MetaTensor
from monai.engines import SupervisedEvaluator
from test_evaluate import _FixedLogits, _run

from cggm_seg.errors import UserError
from cggm_seg.metrics.brats import case_scores
from cggm_seg.metrics.folders import layout_convention
from cggm_seg.metrics.lesionwise import GLI, lesionwise_case_scores
from cggm_seg.metrics.score_handler import BratsScoreHandler
from cggm_seg.metrics.scoring import LESIONWISE_METRICS, METRICS, Scheme, crop_to_labels, score_folders
from cggm_seg.metrics.summaries import summarise

SHAPE = (24, 24, 24)
AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])  # 2 mm along the third axis
NEAR, FAR = (slice(2, 7),) * 3, (slice(15, 20),) * 3  # two 5^3 lesions (250 mm^3), 8 voxels apart
EXTRA = (slice(15, 20), slice(2, 7), slice(2, 7))  # a third place, far from both
ET_2023 = 3  # enhancing tumour in the BraTS 2023 labels: inside ET, TC and WT


def _labels(*boxes: tuple[slice, ...], value: int = ET_2023) -> np.ndarray:
    labels = np.zeros(SHAPE, np.uint8)
    for box in boxes:
        labels[box] = value
    return labels


def _save(path: Path, labels: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels, affine), path)


# case -> (ground truth, prediction or None when missing)
CASES = {
    "BraTS-GLI-00000-000": (_labels(NEAR, FAR), _labels(NEAR, FAR)),  # both lesions found exactly
    "BraTS-GLI-00001-000": (_labels(NEAR, FAR), _labels(NEAR)),  # FAR missed
    "BraTS-GLI-00002-000": (_labels(NEAR), _labels(NEAR, EXTRA)),  # EXTRA a false positive
    "BraTS-GLI-00003-000": (_labels(NEAR, FAR), None),  # no prediction file
}
# per case, for every region (the lesions are ET, so also TC and WT): lesion Dice, lesion HD95, TP, FP, FN
EXPECTED = {
    "BraTS-GLI-00000-000": (1.0, 0.0, 2, 0, 0),
    "BraTS-GLI-00001-000": (0.5, 187.0, 1, 0, 1),
    "BraTS-GLI-00002-000": (0.5, 187.0, 1, 1, 0),
    "BraTS-GLI-00003-000": (0.0, 374.0, 0, 0, 2),
}


def _brats2023_root(tmp_path: Path, cases: dict = CASES) -> tuple[Path, Path]:
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    pred_dir.mkdir(parents=True, exist_ok=True)
    for case, (gt, pred) in cases.items():
        _save(gt_dir / case / f"{case}-seg.nii.gz", gt)
        if pred is not None:
            _save(pred_dir / f"{case}.nii.gz", pred)
    return pred_dir, gt_dir


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with path.open() as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def test_brats2023_layout_defaults_to_the_lesionwise_scheme(tmp_path, capsys, caplog):
    pred_dir, gt_dir = _brats2023_root(tmp_path)
    with caplog.at_level(logging.WARNING, logger="cggm_seg.metrics.scoring"):
        code, out, err = _run(capsys, "--pred", str(pred_dir), "--gt", str(gt_dir), "--workers", "1")
    assert code == 0, err
    columns, rows = _read_csv(pred_dir / "brats_scores.csv")
    assert columns == ["case_id", *LESIONWISE_METRICS, "pred_missing"]
    assert [r["case_id"] for r in rows] == list(CASES)
    for row, (dice, hd95, tp, fp, fn) in zip(rows, EXPECTED.values(), strict=True):
        for region in ("wt", "tc", "et"):
            assert float(row[f"lesion_dice_{region}"]) == pytest.approx(dice, abs=1e-6)
            assert float(row[f"lesion_hd95_{region}"]) == pytest.approx(hd95, abs=1e-3)
            counts = (row[f"tp_{region}"], row[f"fp_{region}"], row[f"fn_{region}"])
            assert counts == (str(tp), str(fp), str(fn))
    # the missing case: listed in its row, in the summary, in one warning line, and in the printed table
    assert [r["pred_missing"] for r in rows] == ["0", "0", "0", "1"]
    summary = json.loads((pred_dir / "brats_scores_summary.json").read_text())
    assert summary["missing_cases"] == ["BraTS-GLI-00003-000"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "1 ground-truth case(s), scored as empty" in warnings[0]
    assert warnings[0].endswith(": BraTS-GLI-00003-000")
    assert "no prediction (scored empty): BraTS-GLI-00003-000" in out and "lesion_dice_wt" in out
    # the rules are recorded with the numbers
    assert {
        k: summary[k]
        for k in (
            "scheme",
            "challenge",
            "dilation_factor",
            "lesion_volume_thresh_mm3",
            "hd95_penalty_mm",
            "nsd_tolerance_mm",
        )
    } == {
        "scheme": "brats2023",
        "challenge": "GLI",
        "dilation_factor": 3,
        "lesion_volume_thresh_mm3": 50,
        "hd95_penalty_mm": 374.0,
        "nsd_tolerance_mm": 1.0,
    }


def test_volume_scores_and_nsd_of_a_missed_lesion(tmp_path):
    """Case 1 by hand: one of two equal cubes found, so volume Dice 2/3 and the surface Dice 2/3 too
    (the found cube's surface matches in both directions, the missed cube's counts once, unmatched)."""
    pred_dir, gt_dir = _brats2023_root(tmp_path)
    row = score_folders(pred_dir, gt_dir, "brats2023", scheme="brats2023")[1]
    for region in ("wt", "tc", "et"):
        assert row[f"dice_{region}"] == pytest.approx(2 / 3, abs=1e-6)
        assert row[f"nsd_{region}"] == pytest.approx(2 / 3, abs=1e-6)
    assert row["dice_mean"] == pytest.approx(2 / 3, abs=1e-6)
    assert row["lesion_dice_mean"] == pytest.approx(0.5, abs=1e-6)


def test_hd95_follows_the_header_spacing_along_the_right_axis(tmp_path):
    """A prediction one voxel off along the 2 mm axis: every distance is 0 or 2 mm, the official
    area-weighted 95th percentile of each direction is 2 mm; along a 1 mm axis it is 1 mm."""
    shifted = {"z": (slice(2, 7), slice(2, 7), slice(3, 8)), "x": (slice(3, 8), slice(2, 7), slice(2, 7))}
    for axis, box in shifted.items():
        pred_dir, gt_dir = _brats2023_root(tmp_path / axis, {"C": (_labels(NEAR), _labels(box))})
        row = score_folders(pred_dir, gt_dir, "brats2023", scheme="brats2023")[0]
        assert row["lesion_hd95_et"] == pytest.approx({"z": 2.0, "x": 1.0}[axis], abs=1e-3)
        assert row["hd95_et"] == row["lesion_hd95_et"]


def test_summary_statistics_match_numpy(tmp_path):
    pred_dir, gt_dir = _brats2023_root(tmp_path)
    rows = score_folders(pred_dir, gt_dir, "brats2023", scheme="brats2023")
    summary = summarise(rows, "brats2023")
    assert summary["n_cases"] == 4
    for metric in LESIONWISE_METRICS:
        values = np.array([r[metric] for r in rows], dtype=float)
        assert summary[metric] == pytest.approx(values.mean())
        assert summary[f"{metric}_std"] == pytest.approx(values.std())  # population std, as brats2021
        assert summary[f"{metric}_median"] == pytest.approx(np.median(values))
        assert summary[f"{metric}_p25"] == pytest.approx(np.percentile(values, 25))
        assert summary[f"{metric}_p75"] == pytest.approx(np.percentile(values, 75))
    # worked out by hand for lesion Dice WT: values 1, 0.5, 0.5, 0
    assert (summary["lesion_dice_wt"], summary["lesion_dice_wt_median"]) == pytest.approx((0.5, 0.5))
    assert (summary["lesion_dice_wt_p25"], summary["lesion_dice_wt_p75"]) == pytest.approx((0.375, 0.625))
    assert summary["fn_et"] == pytest.approx(0.75)


def test_brats2021_keeps_its_keys_and_gains_percentiles(tmp_path, capsys):
    gt = _labels(NEAR, value=4)
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    for i, pred in enumerate((gt, _labels(value=4), _labels(NEAR, FAR, value=4))):
        case = f"BraTS2021_0000{i}"
        _save(gt_dir / case / f"{case}_seg.nii.gz", gt)
        _save(pred_dir / f"{case}.nii.gz", pred)
    assert layout_convention(gt_dir) == "brats2021"
    code, _, err = _run(capsys, "--pred", str(pred_dir), "--gt", str(gt_dir), "--workers", "2")
    assert code == 0, err
    columns, rows = _read_csv(pred_dir / "brats_scores.csv")
    assert columns == ["case_id", *METRICS]
    summary = json.loads((pred_dir / "brats_scores_summary.json").read_text())
    today = {*METRICS, "n_cases", *(f"{m}_{s}" for m in METRICS for s in ("std", "median"))}
    assert set(summary) == today | {f"{m}_{p}" for m in METRICS for p in ("p25", "p75")}
    dice_et = np.array([float(r["dice_et"]) for r in rows])  # 1, 0, 2/3
    assert summary["dice_et_p25"] == pytest.approx(np.percentile(dice_et, 25), abs=1e-6)
    assert summary["dice_et_p75"] == pytest.approx(np.percentile(dice_et, 75), abs=1e-6)
    for metric in ("dice", "hd95"):
        assert (pred_dir / f"brats_scores_{metric}.png").read_bytes()[:4] == b"\x89PNG"


def test_box_plots_are_written_and_protected(tmp_path, capsys):
    pred_dir, gt_dir = _brats2023_root(tmp_path)
    out = tmp_path / "results" / "lw.csv"
    args = ("--pred", str(pred_dir), "--gt", str(gt_dir), "--out", str(out), "--workers", "1")
    assert _run(capsys, *args)[0] == 0
    plots = sorted(p.name for p in out.parent.glob("*.png"))
    assert plots == sorted(
        f"lw_{m}.png" for m in ("lesion_dice", "lesion_hd95", "tp", "fp", "fn", "dice", "hd95", "nsd")
    )
    assert all((out.parent / p).stat().st_size > 1000 for p in plots)
    out.unlink()
    (out.parent / "lw_summary.json").unlink()
    code, _, err = _run(capsys, *args)  # a plot left from an earlier run is not overwritten silently
    assert code == 2 and "lw_lesion_dice.png already exists" in err
    assert _run(capsys, *args, "--force")[0] == 0


def test_scheme_options(tmp_path, capsys):
    pred_dir, gt_dir = _brats2023_root(tmp_path)
    assert layout_convention(gt_dir) == "brats2023"
    # the 2023 labels scored by the 2021 rules
    code, _, err = _run(
        capsys,
        "--pred",
        str(pred_dir),
        "--gt",
        str(gt_dir),
        "--scheme",
        "brats2021",
        "--out",
        str(tmp_path / "v.csv"),
    )
    assert code == 2 and err.count("\n") == 1 and "no prediction in" in err  # brats2021 still refuses
    present = {k: v for k, v in CASES.items() if v[1] is not None}
    pred_dir, gt_dir = _brats2023_root(tmp_path / "present", present)
    code, _, err = _run(
        capsys,
        "--pred",
        str(pred_dir),
        "--gt",
        str(gt_dir),
        "--scheme",
        "brats2021",
        "--out",
        str(tmp_path / "v.csv"),
    )
    assert code == 0, err
    assert _read_csv(tmp_path / "v.csv")[0] == ["case_id", *METRICS]
    code, _, err = _run(
        capsys, "--pred", str(pred_dir), "--gt", str(gt_dir), "--scheme", "brats2021", "--challenge", "MET"
    )
    assert code == 2 and "--challenge only applies to --scheme brats2023 (scheme is brats2021)" in err
    code, _, err = _run(capsys, "--pred", str(pred_dir), "--gt", str(gt_dir), "--nsd-tolerance", "-1")
    assert code == 2 and "NSD tolerance must be >= 0 mm, got -1.0" in err
    code, _, err = _run(capsys, "--pred", str(pred_dir), "--gt", str(gt_dir), "--workers", "0")
    assert code == 2 and "--workers must be at least 1" in err
    # MET: dilation 1 and a 2 mm^3 threshold, and a wider NSD tolerance, recorded in the summary
    code, _, err = _run(
        capsys, "--pred", str(pred_dir), "--gt", str(gt_dir), "--challenge", "MET", "--nsd-tolerance", "2.5"
    )
    assert code == 0, err
    summary = json.loads((pred_dir / "brats_scores_summary.json").read_text())
    assert (
        summary["challenge"],
        summary["dilation_factor"],
        summary["lesion_volume_thresh_mm3"],
        summary["nsd_tolerance_mm"],
    ) == ("MET", 1, 2, 2.5)


def test_workers_give_the_rows_of_a_serial_run(tmp_path):
    pred_dir, gt_dir = _brats2023_root(tmp_path)
    for scheme in ("brats2023", "brats2021"):
        if scheme == "brats2021":
            (gt_dir / "BraTS-GLI-00003-000" / "BraTS-GLI-00003-000-seg.nii.gz").unlink()
            (gt_dir / "BraTS-GLI-00003-000").rmdir()
        serial = score_folders(pred_dir, gt_dir, "brats2023", scheme=scheme, workers=1)
        parallel = score_folders(pred_dir, gt_dir, "brats2023", scheme=scheme, workers=2)
        assert parallel == serial
        assert [r["case_id"] for r in parallel] == sorted(r["case_id"] for r in serial)


def test_a_failing_case_names_itself_from_a_worker(tmp_path):
    pred_dir, gt_dir = _brats2023_root(tmp_path)
    _save(pred_dir / "BraTS-GLI-00002-000.nii.gz", _labels(NEAR)[:, :, :-1])
    with pytest.raises(
        UserError,
        match=r"^case BraTS-GLI-00002-000: prediction BraTS-GLI-00002-000.nii.gz "
        r"has shape \(24, 24, 23\)",
    ):
        score_folders(pred_dir, gt_dir, "brats2023", scheme="brats2023", workers=2)


@pytest.mark.parametrize("scheme", ["brats2021", "brats2023"])
def test_non_integer_labels_are_refused(tmp_path, scheme):
    pred = _labels(NEAR).astype(np.float32) * 0.5  # probabilities instead of labels
    pred_dir, gt_dir = _brats2023_root(tmp_path, {"C": (_labels(NEAR), pred)})
    with pytest.raises(
        UserError,
        match=r"^case C: prediction C.nii.gz has non-integer label values \[1.5\]; "
        r"expected a label map of brats2023 labels \[0, 1, 2, 3\]",
    ):
        score_folders(pred_dir, gt_dir, "brats2023", scheme=scheme)
    # integers stored as floats are labels
    _save(pred_dir / "C.nii.gz", _labels(NEAR).astype(np.float32))
    assert score_folders(pred_dir, gt_dir, "brats2023", scheme=scheme)[0]["dice_et"] == pytest.approx(1.0)


def test_labels_outside_the_convention_and_other_geometry_stay_refused(tmp_path):
    pred_dir, gt_dir = _brats2023_root(tmp_path, {"C": (_labels(NEAR), _labels(NEAR, value=4))})
    with pytest.raises(
        UserError,
        match=r"case C: prediction C.nii.gz has label values \[4\] outside the "
        r"brats2023 set",
    ):
        score_folders(pred_dir, gt_dir, "brats2023", scheme="brats2023")
    _save(pred_dir / "C.nii.gz", _labels(NEAR), np.diag([1.0, 1.0, 1.0, 1.0]))
    with pytest.raises(UserError, match="case C: prediction C.nii.gz has an affine that differs"):
        score_folders(pred_dir, gt_dir, "brats2023", scheme="brats2023")


def test_extra_predictions_are_refused_by_both_schemes(tmp_path):
    pred_dir, gt_dir = _brats2023_root(tmp_path)
    _save(pred_dir / "stray.nii.gz", _labels())
    with pytest.raises(UserError, match="prediction.s. without ground truth in .*: stray$"):
        score_folders(pred_dir, gt_dir, "brats2023", scheme="brats2023")


def _evaluator(handler: BratsScoreHandler, cases: dict) -> SupervisedEvaluator:
    """The cases' brats2023 label maps as 1-channel pred/label items, one batch of all of them."""
    names = list(cases)
    labels = torch.stack([torch.as_tensor(cases[n][0])[None].float() for n in names])
    preds = torch.stack([torch.as_tensor(cases[n][1])[None].float() for n in names])
    data = [
        {
            "image": MetaTensor(
                torch.zeros(1, *SHAPE),
                affine=torch.as_tensor(AFFINE),
                meta={"filename_or_obj": f"/data/{n}/{n}-t1n.nii.gz"},
            ),
            "label": MetaTensor(
                labels[i],
                affine=torch.as_tensor(AFFINE),
                meta={"filename_or_obj": f"/data/{n}/{n}-seg.nii.gz"},
            ),
        }
        for i, n in enumerate(names)
    ]
    loader = DataLoader(data, batch_size=len(names))
    return SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=loader,
        network=_FixedLogits(preds),
        val_handlers=[handler],
    )


def test_score_handler_scheme_writes_the_command_table(tmp_path, capsys):
    cases = {k: v for k, v in CASES.items() if v[1] is not None}
    pred_dir, gt_dir = _brats2023_root(tmp_path, cases)
    assert _run(capsys, "--pred", str(pred_dir), "--gt", str(gt_dir), "--workers", "1")[0] == 0
    handler = BratsScoreHandler(str(tmp_path / "eval"), "brats2023", scheme="brats2023")
    _evaluator(handler, cases).run()
    assert (tmp_path / "eval" / "scores.csv").read_text() == (pred_dir / "brats_scores.csv").read_text()
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary == json.loads((pred_dir / "brats_scores_summary.json").read_text())
    assert (tmp_path / "eval" / "scores_lesion_dice.png").is_file()
    # the default stays brats2021's table
    default = BratsScoreHandler(str(tmp_path / "eval21"), "brats2023")
    _evaluator(default, cases).run()
    assert _read_csv(tmp_path / "eval21" / "scores.csv")[0] == ["case_id", *METRICS]
    with pytest.raises(UserError, match="unknown scoring scheme 'brats2024'"):
        BratsScoreHandler(str(tmp_path), scheme="brats2024")
    assert Scheme("brats2023", "MEN").settings.dilation_factor == 1


@pytest.mark.parametrize("seed", range(3))
def test_cropping_to_the_labels_changes_no_score(seed):
    """Lesions touching the volume's faces and islands near each other: the cropped maps score the same,
    to the last bit, under both schemes (a crop that changed erosion or dilation at the box would not)."""
    rng = np.random.default_rng(seed)
    gt, pred = np.zeros((2, 30, 28, 26), np.uint8)
    for labels in (gt, pred):
        labels[0 : rng.integers(2, 6), 5:10, 3:9] = rng.choice([1, 2, 3])  # on the x = 0 face
        for _ in range(3):  # anywhere but the last 6 slices of z, so the crop cuts there
            corner, size = rng.integers(-2, [28, 26, 14]), rng.integers(2, 7, size=3)
            box = tuple(slice(max(c, 0), c + s) for c, s in zip(corner, size, strict=True))
            labels[box] = rng.choice([1, 2, 3])
    spacing = [1.0, 1.5, 2.0]
    crop_pred, crop_gt = crop_to_labels(pred, gt, margin=1)
    assert crop_gt.shape[2] < gt.shape[2]
    want = case_scores(pred, gt, "brats2023", spacing)
    assert case_scores(crop_pred, crop_gt, "brats2023", spacing) == want
    crop_pred, crop_gt = crop_to_labels(pred, gt, margin=1 + GLI.dilation_factor)
    want = lesionwise_case_scores(pred, gt, "brats2023", spacing)
    assert lesionwise_case_scores(crop_pred, crop_gt, "brats2023", spacing) == want
    assert crop_to_labels(pred * 0, gt * 0)[1].shape == gt.shape  # nothing to crop to: whole maps
    # [3, *spatial] region masks, as the bundle handler has them: the channels stay, empty ones too
    masks = np.stack([gt == 3, gt == 3, np.zeros_like(gt, dtype=bool)])
    assert crop_to_labels(masks, masks)[0].shape == (3, *crop_to_labels(gt == 3, gt == 3)[0].shape)
