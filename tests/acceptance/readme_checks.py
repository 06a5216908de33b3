"""What each kind of README command must leave behind, checked on the files it wrote.

A check gets the command's words, its working folder, its stdout and the files it created or changed,
so an output an earlier command wrote cannot pass for this one's. A command no rule knows is held to
its exit status alone.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

LABELS = {"brats2021": {0, 1, 2, 4}, "brats2023": {0, 1, 2, 3}, "msd": {0, 1, 2, 3}}


def option(words: list[str], name: str, default: str | None = None) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE``, the last one given, as fire reads it."""
    value = default
    for i, word in enumerate(words):
        if word == name and i + 1 < len(words):
            value = words[i + 1]
        elif word.startswith(name + "="):
            value = word.split("=", 1)[1]
    return value


def config_files(words: list[str]) -> list[str]:
    """The ``--config_file`` of a ``monai.bundle`` command: one path or a Python list of paths."""
    value = option(words, "--config_file") or ""
    if value.startswith("["):
        return [item.strip().strip("'\"") for item in value.strip("[]").split(",")]
    return [value]


def bundle_of(words: list[str]) -> str:
    """The bundle a ``monai.bundle`` command runs, from its config path (``.../NAME/configs/x.json``)."""
    return Path(config_files(words)[0]).parents[1].name


def written(changed: set[Path], folder: Path, pattern: str) -> list[Path]:
    """The files under ``folder`` matching ``pattern`` that this command created or changed."""
    found = sorted(p for p in folder.glob(pattern) if p.resolve() in changed)
    assert found, f"nothing matching {pattern} was written in {folder}"
    return found


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows, f"{path} has no rows"
    return rows


def assert_dice_columns(rows: list[dict[str, str]], source: Path) -> None:
    """Every ``dice*`` value is a number in [0, 1]."""
    columns = [c for c in rows[0] if c.startswith("dice") or c.startswith("lesion_dice")]
    assert columns, f"{source}: no Dice column in {list(rows[0])}"
    for row in rows:
        for column in columns:
            value = float(row[column])
            assert 0.0 <= value <= 1.0, f"{source}: {row.get('case_id')} {column}={value}"


def datalist_entries(datalist: Path, key: str = "training", fold: int | None = None) -> list[dict]:
    """(case_id, first image path) of the datalist's entries, paths resolved from its folder."""
    entries = json.loads(datalist.read_text())[key]
    chosen = [e for e in entries if fold is None or int(e.get("fold", -1)) == fold]
    return [{"case_id": Path(e["case_id"]).name, "image": datalist.parent / e["image"][0]} for e in chosen]


# ------------------------------------------------------------------------------------------ rules
def check_prepare_brats(words, work, stdout, changed):
    datalist = work / option(words, "--out")
    assert datalist.resolve() in changed, f"{datalist} was not written"
    entries = json.loads(datalist.read_text())["training"]
    assert entries and all("fold" in e for e in entries), f"{datalist}: entries without folds"
    folds = {int(e["fold"]) for e in entries}
    assert len(folds) == min(int(option(words, "--folds", "5")), len(entries)), f"{datalist}: folds {folds}"
    for entry in entries:
        for path in [*entry["image"], entry["label"]]:
            assert (datalist.parent / path).is_file(), f"{datalist}: {path} does not exist"


def check_train(words, work, stdout, changed):
    output = work / option(words, "--output_dir")
    final = written(changed, output, "checkpoint_final.pt")[0]
    state = torch.load(final, map_location="cpu", weights_only=True)
    weights = state["network"]
    assert weights and all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point()), final


def check_brats_evaluation(words, work, stdout, changed):
    output = work / option(words, "--output_dir")
    eval_dir = work / option(words, "--eval_dir", str(output / "eval"))
    table = written(changed, eval_dir, "*.csv")[0]
    rows = read_csv(table)
    assert_dice_columns(rows, table)
    summary = json.loads(written(changed, eval_dir, "*.json")[0].read_text())
    assert summary["n_cases"] == len(rows), summary


def check_sequence_evaluation(words, work, stdout, changed):
    output = work / option(words, "--output_dir")
    metrics = json.loads(written(changed, output, "metrics_*.json")[0].read_text())
    assert metrics and all(v is None or math.isfinite(v) for v in metrics.values()), metrics


def check_brats_inference(words, work, stdout, changed):
    """One label map per selected case, in that case's geometry, with the convention's labels only."""
    output = work / option(words, "--output_dir")
    dataset = work / option(words, "--dataset_dir")
    datalist = work / option(words, "--datalist", str(dataset / "datalist.json"))
    fold = option(words, "--fold")
    cases = datalist_entries(
        datalist,
        option(words, "--data_list_key", "training"),
        None if fold in (None, "None", "null") else int(fold),
    )
    predictions = written(changed, output / "predictions", "*.nii.gz")
    assert sorted(p.name for p in predictions) == sorted(f"{c['case_id']}.nii.gz" for c in cases), predictions
    convention = json.loads(datalist.read_text()).get("label_convention", "brats2021")
    for case in cases:
        pred, image = nib.load(output / "predictions" / f"{case['case_id']}.nii.gz"), nib.load(case["image"])
        assert pred.shape == image.shape[:3], (case, pred.shape, image.shape)
        np.testing.assert_allclose(pred.affine, image.affine, atol=1e-3, err_msg=str(case))
        assert set(np.unique(np.asarray(pred.dataobj))) <= LABELS[convention], case


def check_sequence_inference(words, work, stdout, changed):
    output = work / option(words, "--output_dir")
    table = written(changed, output, "predictions*.csv")[0]
    rows = read_csv(table)
    assert all(v != "" for row in rows for v in row.values()), f"{table}: empty cells"


def check_export(words, work, stdout, changed):
    path = work / option(words, "--filepath")
    assert path.resolve() in changed, f"{path} was not written"
    module = torch.jit.load(str(path), map_location="cpu")
    assert sum(p.numel() for p in module.parameters()) > 0, path


def check_folder_scores(words, work, stdout, changed):
    pred = work / option(words, "--pred")
    table = Path(option(words, "--out", str(pred / "brats_scores.csv")))
    table = table if table.is_absolute() else work / table
    assert table.resolve() in changed, f"{table} was not written"
    rows = read_csv(table)
    assert_dice_columns(rows, table)
    assert len(rows) == len(list(pred.glob("*.nii.gz"))), f"{table}: {len(rows)} rows"


def check_comparison(words, work, stdout, changed):
    out = work / option(words, "--out", "compare.json")
    assert {out.resolve(), out.with_suffix(".png").resolve()} <= changed, f"{out} or its plot not written"
    comparisons = json.loads(out.read_text())["comparisons"]
    inside = [c["low"] - 1e-9 <= c["mean_difference"] <= c["high"] + 1e-9 for c in comparisons]
    assert comparisons and all(inside), comparisons
    assert all(0.0 <= c["p_value"] <= 1.0 for c in comparisons), comparisons


def check_benchmark(words, work, stdout, changed):
    """``--plan`` lists runs and writes nothing; a run writes the page, a row for each method it ran."""
    if "--plan" in words:
        assert " to run" in stdout and not changed, (stdout, changed)
        return
    folder = work / option(words, "--work", f"runs/benchmark_{option(words, '--bundle')}")
    page = work / option(words, "--out", str(folder / "BENCHMARK.md"))
    assert page.resolve() in changed, f"{page} was not written"
    text = page.read_text()
    assert "| joint |" in text and "### Headroom check" in text, text[:2000]


def check_demo(words, work, stdout, changed):
    out = work / option(words, "--out", "demo_output")
    summary = json.loads(written(changed, out, "summary.json")[0].read_text())
    assert 0.0 <= summary["dice_mean"] <= 1.0, summary


def check_bundle_path(words, work, stdout, changed):
    assert (Path(stdout.strip()) / "configs" / "metadata.json").is_file(), stdout


def check_prints(words, work, stdout, changed):
    assert stdout.strip(), "printed nothing"


def check_nothing(words, work, stdout, changed):
    """Exit status only: the rule for commands no other rule knows."""


#: ``cggm-seg`` subcommand (and sub-subcommand) -> its check
CGGM_SEG_RULES = {
    ("prepare", "brats"): check_prepare_brats,
    ("bundle", "path"): check_bundle_path,
    ("evaluate",): check_folder_scores,
    ("demo",): check_demo,
    ("compare",): check_comparison,
    ("benchmark", "balance"): check_benchmark,
}


def rule_for(words: list[str]) -> Callable:
    """The check for a command, by what it runs."""
    program = Path(words[0]).name
    if program == "cggm-seg":
        return CGGM_SEG_RULES.get(tuple(words[1:3]), CGGM_SEG_RULES.get(tuple(words[1:2]), check_nothing))
    if program in ("cat", "head", "tail", "ls"):
        return check_prints
    if "monai.bundle" not in words:
        return check_nothing
    if "ckpt_export" in words:
        return check_export
    configs = {Path(c).name for c in config_files(words)}
    brats = bundle_of(words) == "brats_cggm"
    if "evaluate.json" in configs:
        return check_brats_evaluation if brats else check_sequence_evaluation
    if "inference.json" in configs:
        return check_brats_inference if brats else check_sequence_inference
    return check_train
