"""The benchmark: aggregation and verdict rules on hand-made runs; the --quick run end to end (slow)."""

from __future__ import annotations

import json

import pytest

from cggm_seg import cli
from cggm_seg.benchmark.balance import preload_modules
from cggm_seg.benchmark.document import aggregate, recommendation, top_share, verdict
from cggm_seg.benchmark.tasks import SETTINGS, TASKS, MosiTask


def run(variant, seed, acc2, drops, step=0.1, peak=100.0):
    return {"task": "mosi", "variant": variant, "seed": seed, "iterations": 10,
            "scores": {"acc2": acc2, "f1_weighted": acc2, "mae": 1.0, "corr": 0.5},
            "reliance": {"drop": dict(zip(("text", "audio", "vision"), drops))},
            "head_scores": {"text": 0.9, "audio": 0.6, "vision": 0.5},
            "step_times": [9.0, 9.0, 9.0] + [step] * 5, "peak_mib": peak}


@pytest.fixture
def summary():
    results = [run("joint", 0, 0.80, (0.3, 0.1, 0.0)), run("joint", 1, 0.84, (0.2, 0.0, 0.0), step=0.3),
               run("cggm", 0, 0.90, (0.1, 0.1, 0.1), step=0.15, peak=150.0),
               run("cggm", 1, 0.92, (0.2, 0.1, 0.1), step=0.45, peak=130.0),
               run("cggm_weights", 0, 0.83, (0.1, 0.0, 0.0)), run("cggm_weights", 1, 0.82, (0.1, 0.0, 0.0))]
    return aggregate(results, MosiTask(SETTINGS["mosi"]["quick"]), ["joint", "cggm", "cggm_weights", "mslr"])


def test_aggregate_statistics_and_cost_ratios(summary):
    assert list(summary) == ["joint", "cggm", "cggm_weights"]  # methods without runs are left out
    mean, std = summary["cggm"]["scores"]["acc2"]
    assert mean == pytest.approx(0.91) and std == pytest.approx(0.0141421, rel=1e-4)
    assert summary["joint"]["drop"]["text"][0] == pytest.approx(0.25)
    # step time: per-run median after the 3 warm-up steps, then median over seeds
    assert summary["joint"]["step_s"] == pytest.approx(0.2)
    assert summary["cggm"]["time_ratio"] == pytest.approx(0.3 / 0.2)
    assert summary["cggm"]["memory_ratio"] == pytest.approx(1.4)
    assert summary["joint"]["top_share"][0] == pytest.approx((0.75 + 1.0) / 2)


def test_top_share():
    assert top_share({"a": 0.3, "b": 0.1, "c": -0.2}) == pytest.approx(0.75)
    assert top_share({"a": 0.1, "b": 0.1}) == pytest.approx(0.5)
    assert top_share({"a": 0.0, "b": -0.1}) is None


def test_verdicts(summary):
    assert verdict(summary["cggm"], summary["joint"], "acc2").startswith("above joint training (+0.090)")
    assert verdict(summary["cggm_weights"], summary["joint"], "acc2").startswith("within the seed spread")
    single = {"seeds": [0], "scores": {"acc2": (0.5, None)}}
    assert verdict(single, {"seeds": [0], "scores": {"acc2": (0.6, None)}}, "acc2").startswith("below")
    assert verdict(single, {"seeds": [0], "scores": {"acc2": (0.5, None)}}, "acc2").startswith("level")


def test_recommendation_is_the_best_cggm_setting_and_says_when_none_beats_joint(summary):
    task = MosiTask(SETTINGS["mosi"]["quick"])
    text = "\n".join(recommendation(task, summary))
    assert "**Recommended default: `cggm`**" in text and "No CGGM setting beats" not in text
    worse = {**summary, "cggm": {**summary["cggm"], "scores": {"acc2": (0.5, 0.01)}}}
    text = "\n".join(recommendation(task, worse))
    assert "`cggm_weights`" in text and "No CGGM setting beats joint training on mosi" in text


def test_children_preload_the_bundles_modules():
    modules = preload_modules([TASKS[name](SETTINGS[name]["quick"]) for name in TASKS])
    for name in ("cggm_seg.benchmark.run", "cggm_seg.networks", "cggm_seg.metrics.score_handler",
                 "cggm_seg.modulation", "cggm_seg.networks.sequence"):
        assert name in modules


def test_every_variant_is_a_method_the_factory_knows():
    from cggm_seg.modulation import METHODS

    for name in TASKS:
        for variant in TASKS[name].variants().values():
            assert variant.method in METHODS


@pytest.mark.parametrize(("argv", "message"), [(["--methods", "cggm"], "include 'joint'"),
                                               (["--seeds", "0"], "--seeds: expected at least 1"),
                                               (["--work", "."], "is not empty; give a new folder")])
def test_bad_options(tmp_path, capsys, argv, message):
    assert cli.main(["benchmark", "--quick", "--out", str(tmp_path / "B.md"), *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_quick_benchmark_writes_the_report(tmp_path):
    out = tmp_path / "docs" / "BENCHMARK.md"
    assert cli.main(["benchmark", "--quick", "--out", str(out), "--work", str(tmp_path / "work")]) == 0
    text = out.read_text()
    assert "`--quick` run" in text and "Command: `cggm-seg benchmark --quick --seeds 1" in text
    methods = list(TASKS["brats"].variants())
    for task in ("brats", "mosi"):
        assert f"## {task}" in text
        for kind in ("utilisation", "coeff", "reliance"):
            png = out.parent / "benchmark" / f"{task}_{kind}.png"
            assert png.read_bytes()[:4] == b"\x89PNG"
            assert f"(benchmark/{task}_{kind}.png)" in text
    for method in methods:
        assert text.count(f"| {method} | ") == 4  # score and reliance table of both tasks
    results = json.loads((out.parent / "benchmark" / "results.json").read_text())
    assert len(results["runs"]) == 2 * len(methods)
    joint = results["summary"]["brats"]["joint"]
    assert joint["time_ratio"] == 1.0 and joint["iterations"] == 4
    # every run left a bundle output folder with TensorBoard curves for `cggm-seg report`
    assert list((tmp_path / "work" / "brats" / "runs" / "cggm_seed0").glob("events.out.tfevents.*"))
