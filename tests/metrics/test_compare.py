"""`cggm-seg compare` on hand-made per-case tables whose answers are known."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cggm_seg.cli import main as cli_main
from cggm_seg.errors import UserError
from cggm_seg.metrics.compare import compare_methods, compare_metric, read_methods

CASES = [f"BraTS2021_{i:05d}" for i in range(8)]
BASE = np.linspace(0.5, 0.9, len(CASES))


def write_run(
    folder: Path, dice: np.ndarray, hd95: np.ndarray | None = None, cases=CASES, scheme: str = "brats2021"
) -> Path:
    """A run folder as evaluate.json leaves it: eval/scores.csv and eval/summary.json."""
    hd95 = np.full(len(cases), 5.0) if hd95 is None else hd95
    table = folder / "eval" / "scores.csv"
    table.parent.mkdir(parents=True)
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "dice_wt", "hd95_wt"])
        writer.writerows([case, f"{d:.6f}", f"{h:.6f}"] for case, d, h in zip(cases, dice, hd95))
    (table.parent / "summary.json").write_text(json.dumps({"scheme": scheme, "n_cases": len(cases)}))
    return folder


def test_identical_runs_differ_by_nothing(tmp_path):
    a, b = write_run(tmp_path / "a", BASE), write_run(tmp_path / "b", BASE)
    dice, hd95 = compare_methods(read_methods({"a": [a], "b": [b]}), resamples=500)
    assert (dice.metric, dice.mean_difference, dice.low, dice.high) == ("dice_wt", 0.0, 0.0, 0.0)
    assert (dice.p_value, dice.wins, dice.ties, dice.losses, dice.verdict) == (1.0, 0, 8, 0, "inconclusive")
    assert hd95.ties == 8


def test_a_constant_shift_is_that_shift_and_direction_follows_the_metric(tmp_path):
    a = write_run(tmp_path / "a", BASE)
    b = write_run(tmp_path / "b", BASE + 0.1, hd95=np.full(8, 7.0))
    dice, hd95 = compare_methods(read_methods({"a": [a], "b": [b]}), resamples=500)
    assert dice.mean_difference == pytest.approx(0.1) and (dice.low, dice.high) == pytest.approx((0.1, 0.1))
    assert (dice.wins, dice.losses, dice.verdict) == (8, 0, "better")
    assert hd95.mean_difference == pytest.approx(2.0) and (hd95.wins, hd95.losses) == (0, 8)
    assert hd95.verdict == "worse"  # a larger distance is worse
    assert dice.p_value == pytest.approx(2 / 2**8)  # exact Wilcoxon: all 8 differences one sign


def test_wilcoxon_and_bootstrap_by_hand():
    reference = np.zeros((5, 1))
    candidate = np.array([[1.0], [2.0], [3.0], [4.0], [-5.0]])
    result = compare_metric(reference, candidate, "dice_wt", ("a", "b"), resamples=4000)
    # ranks of |d| = 1..5, the negative one rank 5: W- = 5; 10 of the 32 sign patterns give W <= 5, so the
    # exact two-sided p is 2 * 10/32
    assert result.p_value == pytest.approx(20 / 32)
    assert result.mean_difference == pytest.approx(1.0) and (result.wins, result.losses) == (4, 1)
    assert result.low < 1.0 < result.high and result.verdict == "inconclusive"


def test_seeds_average_per_case_and_widen_the_interval(tmp_path):
    a1, a2 = write_run(tmp_path / "a1", BASE), write_run(tmp_path / "a2", BASE + 0.02)
    b1, b2 = write_run(tmp_path / "b1", BASE + 0.05), write_run(tmp_path / "b2", BASE + 0.11)
    one = compare_methods(read_methods({"a": [a1], "b": [b1]}), resamples=2000)[0]
    two = compare_methods(read_methods({"a": [a1, a2], "b": [b1, b2]}), resamples=2000)[0]
    assert two.mean_difference == pytest.approx((0.05 + 0.11) / 2 - 0.01)
    assert (one.high - one.low) == pytest.approx(0.0) and two.high - two.low > 0.01  # seed noise is counted
    assert two.low >= 0.05 - 0.02 - 1e-9 and two.high <= 0.11 + 1e-9


def test_runs_on_other_cases_or_rules_are_refused_in_one_line(tmp_path):
    a = write_run(tmp_path / "a", BASE)
    fewer = write_run(tmp_path / "fewer", BASE[:7], cases=CASES[:7])
    with pytest.raises(UserError, match=r"different cases \(only in .*scores.csv: BraTS2021_00007\)"):
        read_methods({"a": [a], "fewer": [fewer]})
    lesionwise = write_run(tmp_path / "lw", BASE, scheme="brats2023")
    with pytest.raises(UserError, match=r"scored with scheme='brats2021', .* with scheme='brats2023'"):
        read_methods({"a": [a], "lw": [lesionwise]})
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither a per-case CSV nor a run folder"):
        read_methods({"a": [a], "e": [tmp_path / "empty"]})


def test_cli_prints_writes_json_and_plot_and_keeps_them(tmp_path, capsys):
    a = write_run(tmp_path / "a", BASE)
    b = write_run(tmp_path / "b", BASE + 0.1)
    out = tmp_path / "cmp.json"
    assert cli_main(["compare", f"joint={a}", f"cggm={b}", "--out", str(out), "--resamples", "500"]) == 0
    printed = capsys.readouterr().out
    assert "cggm (B) against joint (A), 8 cases" in printed and "+0.1000" in printed and "better" in printed
    saved = json.loads(out.read_text())
    assert saved["runs"] == {"joint": [str(a)], "cggm": [str(b)]}
    assert saved["comparisons"][0]["verdict"] == "better" and out.with_suffix(".png").is_file()
    assert cli_main(["compare", str(a), str(b), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
