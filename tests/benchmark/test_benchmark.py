"""The benchmark: aggregation, headroom and default-selection rules on hand-made runs; --quick end to end."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from cggm_seg import cli
from cggm_seg.benchmark import balance
from cggm_seg.benchmark.aggregation import (
    aggregate,
    choose_default,
    headroom,
    mean_curve,
    summarise,
    top_share,
)
from cggm_seg.benchmark.balance import ordered_methods, preload_modules
from cggm_seg.benchmark.document import ablation_table, answer, score_table, task_section
from cggm_seg.benchmark.records import Curve, RunRecord
from cggm_seg.benchmark.tasks import SETTINGS, TASKS, ShortcutTask
from cggm_seg.benchmark.timing import COST_REPEATS

MODALITIES = ("text", "audio", "vision")


def run(variant, seed, val, test, weak_val=0.6, weak_test=0.6, drops=(0.3, 0.1, 0.0), step=0.1, peak=100.0):
    heads = {
        split: {"text": 0.8, "audio": weak, "vision": 0.3}
        for split, weak in (("val", weak_val), ("test", weak_test))
    }
    return RunRecord(
        task="shortcut",
        variant=variant,
        seed=seed,
        iterations=10,
        scores={
            "val": {"accuracy": val, "f1_weighted": val},
            "test": {"accuracy": test, "f1_weighted": test},
        },
        reliance={"drop": dict(zip(MODALITIES, drops))},
        head_scores=heads,
        validation_curve=Curve([1, 2], [val - 0.1, val]),
        step_times=[9.0, 9.0] + [step] * 5,
        peak_mib=peak,
        total_s=1.0,
        device="cpu",
    )


def cost_run(variant, step, peak):
    return RunRecord(
        task="shortcut",
        variant=variant,
        seed=0,
        cost_only=True,
        iterations=4,
        step_times=[9.0, 9.0, step, step],
        peak_mib=peak,
        total_s=1.0,
        device="cpu",
    )


@pytest.fixture
def task():
    return ShortcutTask(SETTINGS["shortcut"]["quick"])


@pytest.fixture
def results():
    runs = []
    for seed, joint in enumerate((0.80, 0.82, 0.84)):
        runs += [
            run("joint", seed, joint, joint, weak_val=0.60, step=0.2 if seed else 0.1),
            run("unimodal_weak", seed, 0.70, 0.70, weak_val=0.70),
            run("oracle", seed, joint + 0.03 + 0.01 * seed, joint + 0.03),
            run("cggm_magnitude", seed, joint + 0.01, joint + 0.02, weak_test=0.65, step=0.3, peak=150.0),
            run("cggm_magnitude_robust", seed, joint + 0.02, joint - 0.01 * seed),
            run("cggm_both", seed, 0.25, 0.25),
        ]
    return runs


def test_aggregate_pairs_seeds_and_prices_cost(task, results):
    table = aggregate(results, task, ["joint", "cggm_magnitude", "cggm_both", "mslr"])
    assert list(table) == ["joint", "cggm_magnitude", "cggm_both"]  # methods without runs are left out
    diff = table["cggm_magnitude"]["vs_joint"]
    assert diff.mean == pytest.approx(0.02) and diff.wins == 3 and diff.verdict == "above"
    assert table["cggm_magnitude"]["weak_head_vs_joint"].mean == pytest.approx(0.05)
    assert table["cggm_both"]["vs_joint"].verdict == "below"
    assert table["cggm_both"]["collapsed"] == 3 and table["joint"]["collapsed"] == 0  # 4 classes: chance 0.25
    # step time: each run's median after the 2 warm-up steps, then the median over seeds
    assert table["joint"]["step_s"] == pytest.approx(0.2)
    assert table["cggm_magnitude"]["time_ratio"] == pytest.approx(1.5)
    assert table["cggm_magnitude"]["memory_ratio"] == pytest.approx(1.5)
    assert table["joint"]["top_share"] == pytest.approx(0.75)


def test_cost_is_quoted_only_from_runs_made_alone(task, results):
    shared = [replace(r, alone=False, step_times=[9.0, 9.0, 5.0, 5.0], peak_mib=999.0) for r in results]
    cost = [
        cost_run(variant, step, peak)
        for variant, step, peak in (
            ("joint", 0.1, 100.0),
            ("joint", 0.3, 100.0),
            ("joint", 0.2, 100.0),
            ("cggm_magnitude", 0.4, 120.0),
        )
    ]
    table = aggregate(shared + cost, task, ["joint", "cggm_magnitude", "cggm_both"])
    assert table["joint"]["step_s"] == pytest.approx(0.2)  # the median of the three cost runs
    assert table["cggm_magnitude"]["time_ratio"] == pytest.approx(2.0)
    assert table["cggm_magnitude"]["memory_ratio"] == pytest.approx(1.2)
    assert table["joint"]["seeds"] == [0, 1, 2] and table["joint"]["iterations"] == 10  # scored runs only
    # no run of cggm_both had the machine to itself: its cost is not quoted
    assert table["cggm_both"]["time_ratio"] is None and table["cggm_both"]["memory_ratio"] is None
    assert score_table(task, table)[-1].endswith("| — | — |")


def test_parallel_sequences_keep_their_order_and_cost_runs_follow_alone(monkeypatch, tmp_path):
    specs = []

    def fake_run(context, spec, run_dir):
        specs.append(spec)
        common = {
            "task": spec["task"],
            "variant": spec["variant"],
            "seed": spec["seed"],
            "iterations": 1,
            "peak_mib": 1.0,
            "total_s": 1.0,
            "device": "cpu",
        }
        if spec.get("cost_epochs"):
            return RunRecord(**common, cost_only=True, step_times=[0.1])
        score = {"accuracy": 0.5, "f1_weighted": 0.5}
        return RunRecord(**common, alone=spec["alone"], scores={"val": score, "test": score})

    monkeypatch.setattr(balance, "run_one", fake_run)
    monkeypatch.setattr(balance, "_child_context", lambda tasks: None)
    monkeypatch.setattr(ShortcutTask, "prepare", lambda self, data_dir, seed: None)
    methods, tasks = ["joint", "oracle", "unimodal_weak"], [ShortcutTask(SETTINGS["shortcut"]["quick"])]
    _, results = balance.run_benchmark(tasks, methods, 2, 1, tmp_path, jobs=2)
    scored = [s for s in specs if not s.get("cost_epochs")]
    for seed in (0, 1):
        order = [s["variant"] for s in scored if s["seed"] == seed]
        assert order == ["joint", "unimodal_weak", "oracle"]
        assert all(s["alone"] is False for s in scored)
    cost = specs[len(scored) :]  # the cost pass starts after every scored run has finished
    assert [s["variant"] for s in cost] == methods * COST_REPEATS
    assert {s["cost_epochs"] for s in cost} == {SETTINGS["shortcut"]["quick"]["cost_epochs"]}
    assert len({s["run_dir"] for s in cost}) == len(cost)  # each cost run its own folder
    assert len(results) == len(specs)
    specs.clear()
    _, results = balance.run_benchmark(tasks, methods, 1, 1, tmp_path / "one", jobs=1)
    assert [s["alone"] for s in specs] == [True] * 3 and not any(s.get("cost_epochs") for s in specs)


def test_top_share():
    assert top_share({"a": 0.3, "b": 0.1, "c": -0.2}) == pytest.approx(0.75)
    assert top_share({"a": 0.1, "b": 0.1}) == pytest.approx(0.5)
    assert top_share({"a": 0.0, "b": -0.1}) is None


def test_validation_curves_are_averaged_over_seeds_once(task, results):
    curve = mean_curve(
        [
            replace(results[0], validation_curve=Curve([3, 6, 9], [0.1, 0.2, 0.3])),
            replace(results[6], validation_curve=Curve([4, 8], [0.3, 0.4])),
            replace(results[12], validation_curve=Curve([], [])),
        ]
    )
    assert curve.epochs == [3, 6] and curve.values == pytest.approx([0.2, 0.3])  # cut to the shortest
    assert mean_curve([replace(results[0], validation_curve=Curve([], []))]) is None
    numbers = summarise(results, task, ["joint", "cggm_magnitude", "mslr"])
    assert set(numbers.validation) == {"joint", "cggm_magnitude"}
    assert numbers.validation["joint"].values == pytest.approx([0.72, 0.82])


RESULTS_JSON = Path(__file__).resolve().parents[2] / "docs" / "benchmark" / "results.json"


def test_results_json_reads_back_into_records_and_the_same_numbers():
    """The published runs load as records, are saved again key for key, and give the published summary
    (cost aside: results.json keeps no step times, so nothing read back from it is priced)."""
    published = json.loads(RESULTS_JSON.read_text())
    records = [RunRecord.from_dict(r) for r in published["runs"]]
    assert [r.saved() for r in records] == published["runs"]
    assert sum(r.cost_only for r in records) and not any(r.step_times or r.curves for r in records)
    cost = ("step_s", "peak_mib", "time_ratio", "memory_ratio")
    for name, expected in published["summary"].items():
        task = TASKS[name](SETTINGS[name]["full"])
        numbers = summarise(records, task, list(expected["table"]))
        assert numbers.default == expected["default"]
        assert numbers.headroom["passed"] == expected["headroom"]["passed"]
        for method, entry in numbers.table.items():
            saved = expected["table"][method]
            assert entry["seeds"] == saved["seeds"] and entry["collapsed"] == saved["collapsed"]
            assert entry["test_scores"][task.score_key].mean == pytest.approx(
                saved["test_scores"][task.score_key]["mean"]
            )
            assert entry["vs_joint"].mean == pytest.approx(saved["vs_joint"]["mean"])
            assert entry["vs_joint"].verdict == saved["vs_joint"]["verdict"]
            assert all(entry[key] is None for key in cost)


def test_headroom_needs_both_the_weak_head_and_the_oracle(task, results):
    methods = ["joint", "unimodal_weak", "oracle"]
    check = headroom(task, aggregate(results, task, methods))
    assert check["passed"] and check["weak_head"].mean == pytest.approx(0.10)
    no_gain = [r for r in results if r.variant != "oracle"]
    no_gain += [
        run("oracle", r.seed, r.scores["val"]["accuracy"] + d, 0.0)
        for r, d in zip([r for r in results if r.variant == "joint"], (0.01, -0.01, 0.0))
    ]
    failed = headroom(task, aggregate(no_gain, task, methods))
    assert not failed["passed"] and failed["oracle"].verdict == "inconclusive"
    assert headroom(task, aggregate(results, task, ["joint"]))["reason"]


def test_default_is_chosen_on_validation_not_test(task, results):
    table = aggregate(results, task, ["joint", "cggm_magnitude", "cggm_magnitude_robust", "cggm_both"])
    # robust: best validation (+0.02) though its test is worse than cggm_magnitude's
    assert choose_default(table) == "cggm_magnitude_robust"
    assert choose_default({"joint": table["joint"]}) is None


def test_tables_show_intervals_and_verdicts(task, results):
    table = aggregate(results, task, ["joint", "cggm_magnitude", "cggm_magnitude_robust"])
    rows = score_table(task, table)
    assert rows[2].startswith("| joint | 0.820 | 0.820 ± 0.016 (0.820) | — | — |")
    assert "| +0.020 [+0.020, +0.020] | above | 3/3 | 0/3 |" in rows[3]
    ablation = ablation_table(table)
    assert ablation[2].startswith("| magnitude | +0.020 [+0.020, +0.020] above | -0.010 [")
    assert ablation[0] == "| CGGM part | paper estimators | robust estimators | robust estimators, lambda 1 |"
    assert ablation[3] == "| direction | — | — | — |"


def test_section_names_requested_methods_that_did_not_run_on_the_task(task, results, tmp_path):
    numbers = summarise(results, task, ["joint", "cggm_magnitude", "cggm_both_robust_strong"])
    assert numbers.missing == ["cggm_both_robust_strong"]
    lines = task_section(task, numbers, {}, tmp_path)
    assert "- Not run on this task (no finished runs): `cggm_both_robust_strong`." in lines
    complete = replace(numbers, missing=[])
    assert not any("Not run" in line for line in task_section(task, complete, {}, tmp_path))


def test_answer_follows_the_rules(task, results):
    methods = ["joint", "unimodal_weak", "oracle", "cggm_magnitude", "cggm_magnitude_robust", "cggm_both"]
    passed = replace(summarise(results, task, methods), default="cggm_magnitude")
    text = "\n".join(answer([task], {task.name: passed}))
    assert "above joint training on the test split of shortcut" in text
    assert "- magnitude, paper estimators (`cggm_magnitude`): shortcut above (+0.020)" in text
    assert "- both, paper estimators (`cggm_both`): shortcut below (-0.570)" in text
    failed = replace(passed, headroom={**passed.headroom, "passed": False})
    text = "\n".join(answer([task], {task.name: failed}))
    assert "**No CGGM setting is shown to improve on joint training here.** 0 of 1 tasks passed" in text
    assert "on those the CGGM default" not in text
    other = TASKS["brats"](SETTINGS["brats"]["quick"])
    no_win = replace(passed, default="cggm_both")
    text = "\n".join(answer([task, other], {task.name: no_win, other.name: failed}))
    assert (
        "1 of 2 tasks passed the headroom check; on those the CGGM default chosen on validation is not "
        "above joint training on the test split; on each task that failed it"
    ) in text


def test_oracle_runs_after_the_run_it_starts_from(task):
    assert ordered_methods(task, ["joint", "oracle", "unimodal_weak"]) == ["joint", "unimodal_weak", "oracle"]


def test_children_preload_the_bundles_modules():
    modules = preload_modules([TASKS[name](SETTINGS[name]["quick"]) for name in TASKS])
    for name in (
        "cggm_seg.benchmark.run",
        "cggm_seg.networks",
        "cggm_seg.metrics.score_handler",
        "cggm_seg.modulation",
        "cggm_seg.networks.sequence",
    ):
        assert name in modules


def test_every_variant_is_a_method_the_factory_knows_with_its_settings():
    from cggm_seg.modulation import METHODS, method_settings

    for name in TASKS:
        for variant in TASKS[name](SETTINGS[name]["quick"]).variants().values():
            assert variant.method in METHODS
            if variant.settings:  # entries of the method's block in the bundle
                assert set(variant.settings) <= set(method_settings(variant.method)), variant.name


def test_benchmark_runs_disable_the_console_handlers_by_name():
    from cggm_seg.benchmark.run import bundle_parser
    from cggm_seg.benchmark.tasks import CONSOLE_HANDLERS

    for name in TASKS:
        task = TASKS[name](SETTINGS[name]["quick"])
        parser = bundle_parser([task.train_config, task.eval_config], {})
        present = [h for h in CONSOLE_HANDLERS if h in parser]
        assert "train#stats" in present and "validate#stats" in present, name
        assert [parser.get_parsed_content(h) for h in present] == [None] * len(present), name


def test_task_data_comes_from_the_setting():
    from cggm_seg.benchmark.tasks import BratsTask

    shortcut = ShortcutTask({**SETTINGS["shortcut"]["full"], "data": {"audio_strength": 0.3}})
    assert shortcut.spec.audio_strength == 0.3 and not shortcut.spec.audio_random_sign
    assert "random sign" not in shortcut.describe()
    assert "random sign" in ShortcutTask(SETTINGS["shortcut"]["full"]).describe()
    brats = BratsTask({**SETTINGS["brats"]["quick"], "data": {"texture": ("flair",)}})
    assert brats.data.texture == ("flair",) and brats.data.contrast == {"t1ce": 1.5}


def test_paper_rows_pin_the_paper_estimators_whatever_the_bundle_defaults(tmp_path):
    """The bundles now default to the robust estimators: the paper's rows must still run the paper's."""
    from cggm_seg.benchmark.run import bundle_parser, variant_overrides
    from cggm_seg.benchmark.tasks import PAPER_ESTIMATORS

    task = TASKS["shortcut"](SETTINGS["shortcut"]["quick"])
    for part in ("magnitude", "direction", "both"):
        paper, robust = task.variants()[f"cggm_{part}"], task.variants()[f"cggm_{part}_robust"]
        parser = bundle_parser([task.train_config], variant_overrides(paper, 0))
        assert {key: parser.get_parsed_content(f"cggm#{key}") for key in PAPER_ESTIMATORS} == dict(
            PAPER_ESTIMATORS
        ), parser.config["cggm"]
        assert {k: v for k, v in robust.settings.items() if k in PAPER_ESTIMATORS} != dict(PAPER_ESTIMATORS)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--methods", "cggm_both"], "include 'joint'"),
        (["--methods", "joint", "oracle"], "include it too"),
        (["--seeds", "0"], "--seeds: expected at least 1"),
        (["--work", "."], "is not empty; give a new folder"),
    ],
)
def test_bad_options(tmp_path, capsys, argv, message):
    assert cli.main(["benchmark", "balance", "--quick", "--out", str(tmp_path / "B.md"), *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_quick_benchmark_writes_the_report(tmp_path):
    out = tmp_path / "docs" / "BENCHMARK.md"
    work = ["--work", str(tmp_path / "work"), "--jobs", "2"]  # two runs at a time, then the cost pass alone
    assert cli.main(["benchmark", "balance", "--quick", "--out", str(out), *work]) == 0
    text = out.read_text()
    assert "`--quick` run" in text and "Command: `cggm-seg benchmark balance --quick --seeds 1" in text
    assert "--threads 1 --jobs 2" in text and "1 torch thread(s) per run, 2 run(s) at a time" in text
    assert "## Rules, fixed before the results" in text
    methods = list(TASKS["brats"](SETTINGS["brats"]["quick"]).variants())
    for task in ("brats", "shortcut"):
        assert f"## {task}" in text and "### Headroom check" in text
        for kind in ("validation", "utilisation", "coeff", "reliance"):
            png = out.parent / "benchmark" / f"{task}_{kind}.png"
            assert png.read_bytes()[:4] == b"\x89PNG"
            assert f"(benchmark/{task}_{kind}.png)" in text
    for method in methods:
        assert text.count(f"| {method} | ") == 2  # the score table of both tasks
    results = json.loads((out.parent / "benchmark" / "results.json").read_text())
    assert len(results["runs"]) == 2 * len(methods) * (1 + COST_REPEATS)
    assert f"for {2 * len(methods)} scored runs and {2 * len(methods) * COST_REPEATS} cost-only runs" in text
    joint = results["summary"]["brats"]["table"]["joint"]
    assert joint["time_ratio"] == 1.0 and joint["iterations"] == 4  # 4 training cases, batch 2, 2 epochs
    assert {"val", "test"} <= set(results["runs"][0]["scores"])
    # every run left a bundle output folder with TensorBoard curves for `cggm-seg report`
    assert list((tmp_path / "work" / "brats" / "runs" / "cggm_both_seed0").glob("events.out.tfevents.*"))
    # the report can be rewritten from those runs without training again
    again = tmp_path / "again" / "BENCHMARK.md"
    argv = ["benchmark", "balance", "--quick", "--out", str(again), *work, "--rewrite-report"]
    assert cli.main(argv) == 0
    assert again.read_text().split("## Rules")[1] == text.split("## Rules")[1]
