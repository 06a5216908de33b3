"""Render ``docs/BENCHMARK.md``, its plots and a JSON copy of the numbers from benchmark runs.

The page's fixed prose (its rules and the methods' notes) is the template ``templates/benchmark.md``;
this module fills it with the tables, verdicts and plots of each task's numbers
(:mod:`cggm_seg.benchmark.aggregation`). Nothing on the page is written by hand, so a rerun rewrites it
consistently.
"""

from __future__ import annotations

import datetime
import json
import statistics
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from cggm_seg.benchmark.aggregation import BASELINE, TaskSummary, scored_runs, summarise
from cggm_seg.benchmark.records import RunRecord
from cggm_seg.benchmark.stats import PairedDifference, plateaued
from cggm_seg.benchmark.tasks import STRONG_LAMBDA, Task
from cggm_seg.benchmark.timing import COST_REPEATS, WARMUP_STEPS
from cggm_seg.plots import grouped_bars, line_panels, robust_limits

#: curve kind -> axis label
CURVES = {"utilisation": "head score (utilisation)", "coeff": "coefficient"}
#: the runs whose validation curves are drawn (one colour each): the baseline, the references, CGGM
VALIDATION_CURVES = (
    "joint",
    "unimodal_weak",
    "oracle",
    "cggm_magnitude",
    "cggm_magnitude_robust",
    "cggm_both",
)
#: the ablation's rows and columns: CGGM parts x estimator sets (column label -> row suffix)
PARTS = ("magnitude", "direction", "both")
ESTIMATORS = {
    "paper estimators": "",
    "robust estimators": "_robust",
    f"robust estimators, lambda {STRONG_LAMBDA:g}": "_robust_strong",
}
QUICK_NOTE = "\n**`--quick` run: a smoke test of the pipeline on tiny data; these numbers mean nothing.**\n"


def pairing(tasks: list[Task]) -> str:
    """Where a seed's data comes from: drawn per seed on the synthetic tasks, the user's on their own."""
    own = [t.name for t in tasks if t.data_dir(Path(), 0) is None]
    drawn = [t.name for t in tasks if t.name not in own]
    if not own:
        return "Seed *s* draws its own data set (data seed *s*)"
    if not drawn:
        return "Every seed *s* reads the same data, the user's,"
    drawn_text, own_text = ", ".join(drawn), ", ".join(own)
    return f"On {drawn_text} seed *s* draws its own data set; on {own_text} every seed *s* reads the user's,"


def page_template() -> Template:
    """The page with its fixed prose, shipped as package data so the text is edited as markdown."""
    page = resources.files("cggm_seg.benchmark") / "templates" / "benchmark.md"
    return Template(page.read_text(encoding="utf-8"))


def _interval(diff: PairedDifference | None, digits: int = 3) -> str:
    if diff is None:
        return "—"
    return f"{diff.mean:+.{digits}f} [{diff.low:+.{digits}f}, {diff.high:+.{digits}f}]"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _mean(values: Mapping[int, float]) -> float:
    return statistics.fmean(values.values())


def score_table(task: Task, table: Mapping[str, dict]) -> list[str]:
    lines = [
        f"| method | val {task.score_label} | test {task.score_label}: mean ± std (median) | test Δ vs "
        "joint [95% CI] | verdict | wins | collapsed | weak head Δ [95% CI] | top share | step time | "
        "peak memory |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, entry in table.items():
        stat = entry["test_scores"][task.score_key]
        diff = None if method == BASELINE else entry.get("vs_joint")
        share = "—" if entry["top_share"] is None else f"{entry['top_share']:.2f}"
        wins = "—" if diff is None else f"{diff.wins}/{diff.n}"
        head = "—" if diff is None else _interval(entry.get("weak_head_vs_joint"))
        lines.append(
            f"| {method} | {_mean(entry['val']):.3f} | {stat.mean:.3f} ± {stat.std:.3f} ({stat.median:.3f})"
            f" | {_interval(diff)} | {'—' if diff is None else diff.verdict} | {wins} | "
            f"{entry['collapsed']}/{len(entry['seeds'])} | {head} | {share} | "
            f"{_ratio(entry['time_ratio'])} | {_ratio(entry['memory_ratio'])} |"
        )
    return lines


def ablation_table(table: Mapping[str, dict]) -> list[str]:
    """The paper's ablation: CGGM parts (rows) x estimator sets (columns), test Δ vs joint [95% CI]."""
    lines = ["| CGGM part | " + " | ".join(ESTIMATORS) + " |", "|---|" + "---|" * len(ESTIMATORS)]
    for part in PARTS:
        cells = []
        for suffix in ESTIMATORS.values():
            entry = table.get(f"cggm_{part}{suffix}")
            diff = entry.get("vs_joint") if entry else None
            cells.append("—" if diff is None else f"{_interval(diff)} {diff.verdict}")
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    return lines


def headroom_lines(task: Task, check: Mapping[str, Any]) -> list[str]:
    if check["reason"]:
        return [f"Headroom check not run: it {check['reason']}."]
    verdict = "**passed**" if check["passed"] else "**failed**: this task does not rank methods"
    return [
        f"- weak modality ({task.weak}) head, `unimodal_weak` - joint (validation): "
        f"{_interval(check['weak_head'])}, {check['weak_head'].verdict}",
        f"- task score, oracle - joint (validation): {_interval(check['oracle'])}, {check['oracle'].verdict}",
        f"- headroom check {verdict}.",
    ]


def plot_task(
    records: Sequence[RunRecord], task: Task, numbers: TaskSummary, folder: Path
) -> dict[str, Path]:
    """Validation curves (the methods of :data:`VALIDATION_CURVES`, mean over seeds), per-iteration
    utilisation and coefficient curves of the lowest seed, reliance bars over all seeds."""
    plots = {}
    table = numbers.table
    validation = {m: (c.epochs, c.values) for m in VALIDATION_CURVES if (c := numbers.validation.get(m))}
    if validation:
        plots["validation"] = line_panels(
            {f"{task.name}: validation {task.score_label}": validation},
            folder / f"{task.name}_validation.png",
            "epoch",
            task.score_label,
        )
    seed = min(s for entry in table.values() for s in entry["seeds"])
    curves = {
        method: run.curves
        for method in table
        for run in scored_runs(records, task, method)
        if run.seed == seed
    }
    smooth = max(1, max(e["iterations"] for e in table.values()) // 15)
    for kind, label in CURVES.items():
        panels = {}
        for method in table:
            series = {
                m: (list(range(1, len(c) + 1)), c)
                for m in task.modalities
                if (c := curves.get(method, {}).get(f"{kind}/{m}"))
            }
            if series:
                panels[method] = series
        if panels:
            plots[kind] = line_panels(
                panels,
                folder / f"{task.name}_{kind}.png",
                "iteration",
                label,
                smooth=smooth,
                columns=4,
                suptitle=f"{task.name}: per-modality {label} during training (seed {seed}, moving average "
                f"of {smooth})",
                ylim=robust_limits(panels) if kind == "coeff" else None,
            )
    methods = list(table)
    bars = {
        m: ([table[v]["drop"][m].mean for v in methods], [table[v]["drop"][m].std for v in methods])
        for m in task.modalities
    }
    plots["reliance"] = grouped_bars(
        methods,
        bars,
        folder / f"{task.name}_reliance.png",
        f"{task.score_label} lost",
        title=f"{task.name}: score lost without each modality",
    )
    return plots


CAPTIONS = {
    "validation": "Validation score over training (mean over seeds)",
    "utilisation": "Per-modality head scores (utilisation) over training",
    "coeff": "Per-modality coefficients over training (CGGM: B_i; OGM-GE: k_i)",
    "reliance": "Score lost when each modality is blanked (mean ± std over seeds)",
}


def task_section(task: Task, numbers: TaskSummary, plots: Mapping[str, Path], doc_dir: Path) -> list[str]:
    """The task's part of the page, naming the requested methods without a finished run on this task."""
    table = numbers.table
    iterations = sorted({e["iterations"] for e in table.values()})
    curve = numbers.validation.get(BASELINE)
    plateau = (
        (
            f"joint training's validation {task.score_label} by epoch: "
            + ", ".join(f"{e}: {v:.3f}" for e, v in zip(curve.epochs, curve.values))
            + f" — {'plateaued' if plateaued(curve.values) else 'NOT plateaued'} (rule above)."
        )
        if curve
        else "no validation curve recorded."
    )
    robust = ", ".join(f"`{k}: {v}`" for k, v in task.robust.items())
    missing = numbers.missing
    lines = [
        f"## {task.name}",
        "",
        task.describe(),
        "",
        f"Training iterations per run: {', '.join(map(str, iterations))}. Seeds: "
        f"{', '.join(map(str, next(iter(table.values()))['seeds']))}. Robust estimators on this task: "
        f"{robust}.",
        "",
        "### Headroom check",
        "",
        *headroom_lines(task, numbers.headroom),
        "",
        f"Plateau: {plateau}",
        "",
        f"### Scores ({task.score_label}) against joint training, and cost",
        "",
        *(f"- **{name}**: {variant.summary}" for name, variant in task.variants().items() if name in table),
        *(
            [f"- Not run on this task (no finished runs): {', '.join(f'`{m}`' for m in missing)}."]
            if missing
            else []
        ),
        "",
        *score_table(task, table),
        "",
        "### Ablation in the paper's form (test Δ vs joint [95% CI])",
        "",
        *ablation_table(table),
        "",
    ]
    for kind, path in plots.items():
        lines += [f"![{CAPTIONS[kind]}]({path.relative_to(doc_dir).as_posix()})", ""]
    return lines


def _against(verdict: str) -> str:
    """``above``/``below`` read as they are before "joint training"; ``inconclusive`` needs "against"."""
    return verdict if verdict in ("above", "below") else f"{verdict} against"


def conclusion(task: Task, numbers: TaskSummary) -> str:
    """The task's line in the summary: headroom, the default chosen on validation, its test interval."""
    chosen = numbers.default
    if chosen is None:
        return f"- **{task.name}**: no CGGM row was run."
    entry = numbers.table[chosen]
    diff, head = entry.get("vs_joint"), entry.get("weak_head_vs_joint")
    ranked = (
        "headroom check passed"
        if numbers.headroom["passed"]
        else "headroom check FAILED (does not rank methods)"
    )
    return (
        f"- **{task.name}** ({ranked}): the CGGM row with the best validation score is **{chosen}**; on "
        f"the test split it is {_against(diff.verdict) if diff else '— against'} joint training "
        f"({_interval(diff)}, {diff.wins if diff else 0}/{diff.n if diff else 0} seeds better, "
        f"{entry['collapsed']} collapsed), weak-modality head {_interval(head)}, step time "
        f"{_ratio(entry['time_ratio'])}."
    )


def answer(tasks: Sequence[Task], numbers: Mapping[str, TaskSummary]) -> list[str]:
    """The page's answer, by the rules above: does a CGGM setting help where joint training has
    headroom, and which part of CGGM (magnitude, direction, estimators) moves the score which way."""
    ranked = [t for t in tasks if numbers[t.name].headroom["passed"]]
    chosen = {t.name: numbers[t.name].table.get(numbers[t.name].default, {}) for t in ranked}
    wins = [
        name
        for name, entry in chosen.items()
        if entry.get("vs_joint") and entry["vs_joint"].verdict == "above"
    ]
    if wins:
        lines = [
            f"A CGGM setting chosen on validation data is above joint training on the test split of "
            f"{', '.join(wins)} (a task with headroom); the lines above give the setting and interval."
        ]
    else:
        on_passed = (
            ("; on those the CGGM default chosen on validation is not above joint training on the test split")
            if ranked
            else ""
        )
        on_failed = (
            (
                "; on each task that failed it, at least one of the check's two comparisons was not "
                "above 0 (its section shows which), so no method is ranked there"
            )
            if len(ranked) < len(tasks)
            else ""
        )
        lines = [
            f"**No CGGM setting is shown to improve on joint training here.** {len(ranked)} of "
            f"{len(tasks)} tasks passed the headroom check{on_passed}{on_failed}."
        ]
    lines += [
        "",
        "What each part of CGGM did to the test score against joint training (paired 95% "
        "intervals, every task, ranked or not):",
        "",
    ]
    for part in PARTS:
        for estimators, suffix in ESTIMATORS.items():
            row = f"cggm_{part}{suffix}"
            verdicts = [
                f"{t.name} {e['vs_joint'].verdict} ({e['vs_joint'].mean:+.3f})"
                for t in tasks
                if (e := numbers[t.name].table.get(row)) and e.get("vs_joint")
            ]
            if verdicts:
                lines.append(f"- {part}, {estimators} (`{row}`): {'; '.join(verdicts)}")
    return lines


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {
            **{k: _jsonable(getattr(value, k)) for k in value.__dataclass_fields__},
            **({"verdict": value.verdict} if isinstance(value, PairedDifference) else {}),
        }
    return value


def write_benchmark(
    records: Sequence[RunRecord],
    tasks: Sequence[Task],
    methods: Sequence[str],
    out: Path,
    command: str,
    machine: dict[str, Any],
    wall_s: float,
    quick: bool,
) -> list[Path]:
    """Write the markdown report, its PNG plots and ``results.json``; returns the files written."""
    out = Path(out)
    folder = out.parent / "benchmark"
    numbers = {task.name: summarise(records, task, methods) for task in tasks}
    sections = [
        task_section(
            task, numbers[task.name], plot_task(records, task, numbers[task.name], folder), out.parent
        )
        for task in tasks
    ]
    cost_only = sum(r.cost_only for r in records)
    text = page_template().substitute(
        quick=QUICK_NOTE if quick else "",
        pairing=pairing(tasks),
        command=command,
        cpu=machine["cpu"],
        nproc=machine["nproc"],
        threads=machine["threads"],
        jobs=machine.get("jobs", 1),
        gpu=f", GPU {machine['gpu']}" if machine.get("gpu") else "",
        python=machine["python"],
        torch=machine["torch"],
        monai=machine["monai"],
        date=datetime.date.today().isoformat(),
        wall_min=f"{wall_s / 60:.1f}",
        scored=len(records) - cost_only,
        cost_runs=f" and {cost_only} cost-only runs" if cost_only else "",
        conclusions="\n".join(conclusion(task, numbers[task.name]) for task in tasks),
        answer="\n".join(answer(tasks, numbers)),
        tasks="".join("\n".join(lines) + "\n" for lines in sections),
        warmup=WARMUP_STEPS,
        repeats=COST_REPEATS,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    data = folder / "results.json"
    summary = {name: task_numbers.saved() for name, task_numbers in numbers.items()}
    data.write_text(
        json.dumps(
            _jsonable(
                {
                    "command": command,
                    "machine": machine,
                    "wall_s": wall_s,
                    "summary": summary,
                    "runs": [r.saved() for r in records],
                }
            ),
            indent=1,
        )
        + "\n"
    )
    return [out, data, *sorted(folder.glob("*.png"))]
