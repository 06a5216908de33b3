"""`cggm-seg evaluate` on tiny NIfTI folders, its Python API, and BratsScoreHandler in a MONAI evaluator."""

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader, MetaTensor
from monai.engines import SupervisedEvaluator
from monai.transforms import Activationsd, AsDiscreted, Compose

from cggm_seg.brats_labels import case_id_from_filename
from cggm_seg.cli import main as cli_main
from cggm_seg.errors import UserError
from cggm_seg.metrics.brats import HD95_EMPTY_PENALTY_MM
from cggm_seg.metrics.score_handler import BratsScoreHandler
from cggm_seg.metrics.scoring import score_folders
from cggm_seg.metrics.summaries import format_summary, summarise, write_scores

SHAPE = (6, 6, 6)
AFFINE = np.diag([1.0, 1.0, 2.5, 1.0])
P = HD95_EMPTY_PENALTY_MM
KEYS = ("dice_wt", "dice_tc", "dice_et", "hd95_wt", "hd95_tc", "hd95_et")


def _row(case_id: str, *values: float) -> dict:
    return {"case_id": case_id, **dict(zip(KEYS, values, strict=True))}


def _save(path: Path, labels: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), affine), path)


def _case_a() -> tuple[np.ndarray, np.ndarray]:
    """Perfect prediction: every Dice 1, every HD95 0."""
    gt = np.zeros(SHAPE, np.uint8)
    gt[1:4, 1:4, 1:4] = 2
    gt[2, 2, 2] = 1
    gt[2, 2, 3] = 4
    return gt.copy(), gt


def _case_b() -> tuple[np.ndarray, np.ndarray]:
    """WT right (Dice 1, HD95 0); ET voxel missed, so TC and ET are empty in the prediction only.

    GT: [1:3]^3 = 2 with [1,1,1] = 4 -> WT 8 voxels, TC = ET = {[1,1,1]}.
    Pred: [1:3]^3 = 2 -> TC, ET empty -> Dice 0 and HD95 = the penalty for both.
    """
    gt = np.zeros(SHAPE, np.uint8)
    gt[1:3, 1:3, 1:3] = 2
    pred = gt.copy()
    gt[1, 1, 1] = 4
    return pred, gt


# per case: dice_wt, dice_tc, dice_et, hd95_wt, hd95_tc, hd95_et
EXPECTED = {"A": (1.0, 1.0, 1.0, 0.0, 0.0, 0.0), "B": (1.0, 0.0, 0.0, 0.0, P, P)}


def _brats2021_root(tmp_path: Path) -> tuple[Path, Path]:
    gt_dir, pred_dir = tmp_path / "BraTS2021", tmp_path / "pred"
    for key, make in (("A", _case_a), ("B", _case_b)):
        case = f"BraTS2021_0000{'AB'.index(key)}"
        pred, gt = make()
        _save(gt_dir / case / f"{case}_seg.nii.gz", gt)
        _save(gt_dir / case / f"{case}_flair.nii.gz", np.ones(SHAPE))  # images are ignored
        _save(pred_dir / f"{case}.nii.gz", pred)
    return pred_dir, gt_dir


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli_main(["evaluate", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _read_csv(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_cli_on_a_brats2021_root(tmp_path, capsys):
    pred_dir, gt_dir = _brats2021_root(tmp_path)
    code, out, err = _run(capsys, "--pred", str(pred_dir), "--gt", str(gt_dir))
    assert code == 0, err
    rows = _read_csv(pred_dir / "brats_scores.csv")
    assert [r["case_id"] for r in rows] == ["BraTS2021_00000", "BraTS2021_00001"]
    for row, expected in zip(rows, EXPECTED.values(), strict=True):
        assert [float(row[k]) for k in KEYS] == pytest.approx(expected)
    assert float(rows[1]["dice_mean"]) == pytest.approx(1 / 3)
    summary = json.loads((pred_dir / "brats_scores_summary.json").read_text())
    assert summary["n_cases"] == 2
    assert summary["dice_wt"] == 1.0 and summary["dice_tc"] == 0.5 and summary["dice_tc_std"] == 0.5
    assert summary["dice_mean"] == pytest.approx((1 + 1 / 3) / 2)
    assert summary["hd95_et"] == pytest.approx(P / 2)
    assert summary["hd95_mean"] == pytest.approx((0 + 2 * P / 3) / 2)
    assert "dice_tc" in out and "n cases: 2" in out
    # the table was printed; a second run refuses to overwrite, --force allows it
    code, _, err = _run(capsys, "--pred", str(pred_dir), "--gt", str(gt_dir))
    assert code == 2 and "brats_scores.csv already exists" in err
    assert _run(capsys, "--pred", str(pred_dir), "--gt", str(gt_dir), "--force")[0] == 0
    assert not list(pred_dir.glob(".*tmp"))


def test_cli_on_a_flat_folder_with_spacing_and_out(tmp_path, capsys):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    for name, case in (("a.nii.gz", "a"), ("b_seg.nii.gz", "b"), ("c-seg.nii.gz", "c")):
        gt = np.zeros(SHAPE, np.uint8)
        gt[2, 2, 1] = 4
        pred = np.zeros(SHAPE, np.uint8)
        pred[2, 2, 3] = 4  # 2 voxels away along the 2.5 mm axis -> HD95 5 mm in every region
        _save(gt_dir / name, gt)
        _save(pred_dir / f"{case}.nii.gz", pred)
    out_csv = tmp_path / "results" / "scores.csv"
    code, _, err = _run(capsys, "--pred", str(pred_dir), "--gt", str(gt_dir), "--out", str(out_csv))
    assert code == 0, err
    rows = _read_csv(out_csv)
    assert [r["case_id"] for r in rows] == ["a", "b", "c"]
    assert all(float(r["hd95_wt"]) == pytest.approx(5.0) and float(r["dice_et"]) == 0.0 for r in rows)
    summary = json.loads((tmp_path / "results" / "scores_summary.json").read_text())
    assert summary["hd95_tc"] == pytest.approx(5.0)


@pytest.mark.parametrize(("layout", "convention"), [("brats2023", "brats2023"), ("msd", "msd")])
def test_score_folders_other_layouts(tmp_path, layout, convention):
    relabel = {"brats2023": {1: 1, 2: 2, 4: 3}, "msd": {1: 2, 2: 1, 4: 3}}[convention]
    pred, gt = _case_b()
    pred_c, gt_c = np.zeros_like(pred), np.zeros_like(gt)
    for old, new in relabel.items():
        pred_c[pred == old], gt_c[gt == old] = new, new
    case = "BraTS-GLI-00001-000" if layout == "brats2023" else "BRATS_001"
    gt_path = (
        tmp_path / "gt" / case / f"{case}-seg.nii.gz"
        if layout == "brats2023"
        else tmp_path / "gt" / "labelsTr" / f"{case}.nii.gz"
    )
    _save(gt_path, gt_c)
    if layout == "msd":
        _save(tmp_path / "gt" / "imagesTr" / f"{case}.nii.gz", np.ones(SHAPE))
    _save(tmp_path / "pred" / f"{case}.nii.gz", pred_c)
    rows = score_folders(tmp_path / "pred", tmp_path / "gt", convention)
    assert rows == [_row(case, *EXPECTED["B"])]
    # predictions in brats2021 labels against this ground truth
    _save(tmp_path / "pred" / f"{case}.nii.gz", pred)
    assert score_folders(tmp_path / "pred", tmp_path / "gt", convention, pred_convention="brats2021") == rows


def test_brats2023_labels_read_as_brats2021_are_refused(tmp_path):
    gt = np.zeros(SHAPE, np.uint8)
    gt[1, 1, 1] = 3
    _save(tmp_path / "gt" / "X" / "X-seg.nii.gz", gt)
    _save(tmp_path / "pred" / "X.nii.gz", np.zeros(SHAPE))
    with pytest.raises(
        UserError,
        match=r"case X: ground truth X-seg.nii.gz has label values \[3\] outside "
        r"the brats2021 set \[0, 1, 2, 4\]; is --convention right\?",
    ):
        score_folders(tmp_path / "pred", tmp_path / "gt")


def _one_case(
    tmp_path: Path,
    pred: np.ndarray | None = None,
    gt: np.ndarray | None = None,
    pred_affine: np.ndarray = AFFINE,
) -> tuple[Path, Path]:
    default_pred, default_gt = _case_a()
    _save(tmp_path / "gt" / "C1.nii.gz", default_gt if gt is None else gt)
    _save(tmp_path / "pred" / "C1.nii.gz", default_pred if pred is None else pred, pred_affine)
    return tmp_path / "pred", tmp_path / "gt"


def _shifted(dx: float) -> np.ndarray:
    affine = AFFINE.copy()
    affine[0, 3] = dx
    return affine


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"pred": np.zeros((6, 6, 5))},
            r"case C1: prediction C1.nii.gz has shape \(6, 6, 5\) "
            r"but the ground truth C1.nii.gz has \(6, 6, 6\)",
        ),
        (
            {"pred_affine": _shifted(0.5)},
            r"case C1: prediction C1.nii.gz has an affine that differs .* by 0.5",
        ),
        (
            {"pred": np.full(SHAPE, 3)},
            r"case C1: prediction C1.nii.gz has label values \[3\] outside the brats2021 set \[0, 1, 2, 4\]",
        ),
        (
            {"gt": np.arange(216).reshape(SHAPE) % 7},
            r"case C1: ground truth C1.nii.gz has label values \[3, 5, 6\]",
        ),
        (
            {"pred": np.zeros((6, 6, 6, 2))},
            r"case C1: prediction .*C1.nii.gz has shape \(6, 6, 6, 2\); expected a 3D",
        ),
    ],
)
def test_bad_case_is_named(tmp_path, kwargs, message):
    pred_dir, gt_dir = _one_case(tmp_path, **kwargs)
    with pytest.raises(UserError, match=message):
        score_folders(pred_dir, gt_dir)


def test_small_affine_differences_and_singleton_axes_pass(tmp_path):
    pred, _ = _case_a()
    pred_dir, gt_dir = _one_case(tmp_path, pred=pred[..., None], pred_affine=_shifted(1e-5))
    assert score_folders(pred_dir, gt_dir)[0]["dice_wt"] == 1.0


def test_unreadable_file_is_named(tmp_path):
    pred_dir, gt_dir = _one_case(tmp_path)
    (pred_dir / "C1.nii.gz").write_bytes(b"not a nifti file")
    with pytest.raises(UserError, match=r"case C1: cannot read prediction .*C1.nii.gz: "):
        score_folders(pred_dir, gt_dir)


def test_fold_scores_only_that_folds_cases(tmp_path, capsys):
    """``--fold K`` scores the datalist's fold K, as inference with the bundle's ``--fold K`` predicts it."""
    pred_dir, gt_dir = _brats2021_root(tmp_path)
    (pred_dir / "BraTS2021_00000.nii.gz").unlink()  # inference ran on fold 1 only
    entries = [
        {
            "image": [f"{case}/{case}_flair.nii.gz"],
            "label": f"{case}/{case}_seg.nii.gz",
            "fold": fold,
            "case_id": case,
        }
        for fold, case in enumerate(("BraTS2021_00000", "BraTS2021_00001"))
    ]
    (gt_dir / "datalist.json").write_text(json.dumps({"training": entries}))
    code, _, err = _run(capsys, "--pred", str(pred_dir), "--gt", str(gt_dir), "--fold", "1")
    assert code == 0, err
    rows = _read_csv(pred_dir / "brats_scores.csv")
    assert [r["case_id"] for r in rows] == ["BraTS2021_00001"]
    assert [float(rows[0][k]) for k in KEYS] == pytest.approx(EXPECTED["B"])
    code, _, err = _run(capsys, "--pred", str(pred_dir), "--gt", str(gt_dir), "--fold", "3", "--force")
    assert code == 2 and err.count("\n") == 1 and "no entry of 'training'" in err and "fold 3" in err
    code, _, err = _run(capsys, "--pred", str(pred_dir), "--gt", str(gt_dir), "--datalist", "x.json")
    assert code == 2 and "--datalist is read only with --fold" in err


def test_missing_and_extra_predictions_are_listed(tmp_path, capsys):
    pred_dir, gt_dir = _brats2021_root(tmp_path)
    for case in ("BraTS2021_00000", "BraTS2021_00001"):
        (pred_dir / f"{case}.nii.gz").unlink()
    _save(pred_dir / "BraTS2021_00099.nii.gz", np.zeros(SHAPE))
    code, _, err = _run(capsys, "--pred", str(pred_dir), "--gt", str(gt_dir))
    assert code == 2
    assert "no prediction in" in err and "2 ground-truth case(s): BraTS2021_00000, BraTS2021_00001" in err
    assert not (pred_dir / "brats_scores.csv").exists()
    _save(pred_dir / "BraTS2021_00000.nii.gz", np.zeros(SHAPE))
    _save(pred_dir / "BraTS2021_00001.nii.gz", np.zeros(SHAPE))
    with pytest.raises(UserError, match=r"prediction\(s\) without ground truth in .*: BraTS2021_00099$"):
        score_folders(pred_dir, gt_dir)


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    pred_dir, gt_dir = _one_case(tmp_path)
    with pytest.raises(UserError, match="no ground-truth label files in .*empty"):
        score_folders(pred_dir, tmp_path / "empty")
    with pytest.raises(UserError, match="no predictions in .*empty"):
        score_folders(tmp_path / "empty", gt_dir)
    with pytest.raises(UserError, match="--pred .*nowhere is not a folder"):
        score_folders(tmp_path / "nowhere", gt_dir)


def test_case_folder_without_label_is_named(tmp_path):
    _save(tmp_path / "gt" / "BraTS2021_00007" / "BraTS2021_00007_flair.nii.gz", np.zeros(SHAPE))
    _save(tmp_path / "pred" / "BraTS2021_00007.nii.gz", np.zeros(SHAPE))
    with pytest.raises(
        UserError,
        match="case folder .*BraTS2021_00007 has no BraTS2021_00007_seg.nii.gz or BraTS2021_00007-seg.nii.gz",
    ):
        score_folders(tmp_path / "pred", tmp_path / "gt")


def test_two_labels_for_one_case_are_refused(tmp_path):
    pred_dir, gt_dir = _one_case(tmp_path)
    _save(gt_dir / "C1_seg.nii.gz", np.zeros(SHAPE))
    with pytest.raises(UserError, match="case C1 has two ground-truth files"):
        score_folders(pred_dir, gt_dir)


@pytest.mark.parametrize(
    ("name", "case_id"),
    [
        ("/d/BraTS2021_00012/BraTS2021_00012_flair.nii.gz", "BraTS2021_00012"),
        ("BraTS2021_00012_t1ce.nii.gz", "BraTS2021_00012"),
        ("BraTS-GLI-00001-000-t2f.nii.gz", "BraTS-GLI-00001-000"),
        ("BraTS-GLI-00001-000-seg.nii", "BraTS-GLI-00001-000"),
        ("BRATS_001.nii.gz", "BRATS_001"),
    ],
)
def test_case_id_from_filename(name, case_id):
    assert case_id_from_filename(name) == case_id


def test_summarise_and_table_by_hand():
    rows = [
        _row("a", 1.0, 0.5, 0.0, 0, 3, 6),
        _row("b", 0.0, 0.5, 1.0, 2, 3, 4),
        _row("c", 0.5, 0.5, 0.5, 4, 3, 2),
    ]
    s = summarise(rows)
    assert (s["dice_wt"], s["dice_wt_median"], s["n_cases"]) == (0.5, 0.5, 3)
    assert s["dice_wt_std"] == pytest.approx(np.sqrt(1 / 6))  # deviations 0.5, -0.5, 0 -> var 0.5/3
    assert s["dice_mean"] == 0.5 and s["dice_mean_std"] == 0.0  # every case averages 0.5
    assert (s["hd95_et"], s["hd95_et_median"], s["hd95_mean"]) == (4.0, 4.0, 3.0)
    table = format_summary(s)
    assert "dice_wt       0.5000    0.4082    0.5000" in table and table.endswith("n cases: 3")
    with pytest.raises(ValueError):
        summarise([])


def test_write_scores_refuses_to_overwrite(tmp_path):
    rows = [_row("a", 1.0, 1.0, 1.0, 0.0, 0.0, 0.0)]
    csv_path, json_path = tmp_path / "s.csv", tmp_path / "s.json"
    json_path.write_text("keep")
    with pytest.raises(UserError, match="s.json already exists"):
        write_scores(rows, csv_path, json_path)
    assert not csv_path.exists() and json_path.read_text() == "keep"
    assert write_scores(rows, csv_path, json_path, force=True)["n_cases"] == 1
    assert json.loads(json_path.read_text())["dice_mean"] == 1.0


class _FixedLogits(torch.nn.Module):
    """A 'network' that ignores its input and returns stored logits, so the scores are known."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.logits


def _evaluator(tmp_path: Path, handler: BratsScoreHandler) -> SupervisedEvaluator:
    """Two cases with 1 x 1 x 2.5 mm voxels: case 1 predicted exactly, case 2 two voxels off along z."""
    label = torch.zeros(2, 3, *SHAPE)
    label[0, :, 1:4, 1:4, 1:4] = 1
    label[1, :, 2, 2, 1] = 1
    logits = torch.where(label > 0, 4.0, -4.0)
    logits[1] = -4.0
    logits[1, :, 2, 2, 3] = 4.0
    folder = "/data/BraTS2021_0000{0}/BraTS2021_0000{0}_{1}.nii.gz"
    data = [
        {
            "image": MetaTensor(
                torch.zeros(4, *SHAPE),
                affine=torch.as_tensor(AFFINE),
                meta={"filename_or_obj": folder.format(i, "flair")},
            ),
            "label": MetaTensor(
                label[i], affine=torch.as_tensor(AFFINE), meta={"filename_or_obj": folder.format(i, "seg")}
            ),
        }
        for i in range(2)
    ]
    post = Compose([Activationsd(keys="pred", sigmoid=True), AsDiscreted(keys="pred", threshold=0.5)])
    return SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(data, batch_size=2),
        network=_FixedLogits(logits),
        postprocessing=post,
        val_handlers=[handler],
    )


def test_score_handler_in_a_supervised_evaluator(tmp_path):
    out = tmp_path / "eval"
    _evaluator(tmp_path, BratsScoreHandler(str(out))).run()
    rows = _read_csv(out / "scores.csv")
    assert [r["case_id"] for r in rows] == ["BraTS2021_00000", "BraTS2021_00001"]
    assert float(rows[0]["dice_et"]) == 1.0 and float(rows[0]["hd95_wt"]) == 0.0
    assert float(rows[1]["dice_wt"]) == 0.0 and float(rows[1]["hd95_tc"]) == pytest.approx(5.0)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["n_cases"], summary["dice_mean"], summary["hd95_et"]) == (2, 0.5, pytest.approx(2.5))
    with pytest.raises(UserError, match="scores.csv already exists"):  # checked before any case is scored
        _evaluator(tmp_path, BratsScoreHandler(str(out))).run()
    _evaluator(tmp_path, BratsScoreHandler(str(out), overwrite=True)).run()


def test_score_handler_label_maps_and_bad_items(tmp_path):
    handler = BratsScoreHandler(str(tmp_path), "msd", case_id_fn=lambda name: Path(name).parent.name)
    label_map = np.zeros((1, *SHAPE))
    label_map[0, 1:4, 1:4, 1:4] = 1  # MSD oedema only: WT, no TC/ET
    pred = torch.zeros(3, *SHAPE)
    pred[1, 1:4, 1:4, 1:4] = 1
    meta = {"filename_or_obj": "/data/case7/img.nii.gz"}
    row = handler.score_item({"pred": MetaTensor(pred, meta=meta), "label": torch.as_tensor(label_map)})
    assert row == {
        "case_id": "case7",
        "dice_wt": 1.0,
        "dice_tc": 1.0,
        "dice_et": 1.0,
        "hd95_wt": 0.0,
        "hd95_tc": 0.0,
        "hd95_et": 0.0,
    }
    with pytest.raises(UserError, match=r"case case7: pred is not binary; .* AsDiscreted\(threshold=0.5\)"):
        handler.score_item({"pred": MetaTensor(pred * 0.7, meta=meta), "label": torch.as_tensor(label_map)})
    with pytest.raises(UserError, match=r"case case7: label has label values \[4\] outside the msd set"):
        handler.score_item({"pred": MetaTensor(pred, meta=meta), "label": torch.as_tensor(label_map * 4)})
    with pytest.raises(UserError, match="case case_0000: pred has 2 channels"):
        handler.score_item({"pred": pred[:2], "label": torch.as_tensor(label_map)})
