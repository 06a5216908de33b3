"""Turn benchmark runs into ``docs/BENCHMARK.md``, its plots and a JSON copy of the numbers.

Every verdict on the page follows fixed rules stated on the page before the results: a method is
compared with joint training by paired per-seed differences and a bootstrap interval
(:mod:`cggm_seg.benchmark.stats`); a task ranks methods only when its headroom check passes; the
CGGM default is the CGGM row with the best mean *validation* score, and its *test* numbers are
what is reported. Nothing in the file is written by hand, so a rerun rewrites it consistently.
"""

from __future__ import annotations

import datetime
import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cggm_seg.benchmark.stats import PairedDifference, paired_difference, plateaued, summary
from cggm_seg.benchmark.tasks import STRONG_LAMBDA, Task
from cggm_seg.benchmark.timing import COST_REPEATS, WARMUP_STEPS, steady_state
from cggm_seg.plots import grouped_bars, line_panels, robust_limits

BASELINE = "joint"
#: curve kind -> axis label
CURVES = {"utilisation": "head score (utilisation)", "coeff": "coefficient"}
#: the runs whose validation curves are drawn (one colour each): the baseline, the references, CGGM
VALIDATION_CURVES = ("joint", "unimodal_weak", "oracle", "cggm_magnitude", "cggm_magnitude_robust",
                     "cggm_both")
#: the ablation's rows and columns: CGGM parts x estimator sets (column label -> row suffix)
PARTS = ("magnitude", "direction", "both")
ESTIMATORS = {"paper estimators": "", "robust estimators": "_robust",
              f"robust estimators, lambda {STRONG_LAMBDA:g}": "_robust_strong"}

RULES = """\
- **Pairing.** Seed *s* draws its own data set (data seed *s*) and trains with seed *s*, so every
  method sees the same data and the same initial weights; results are compared seed by seed.
- **Scores.** Final weights (no checkpoint is picked), scored by the bundle's own `evaluate.json` on
  a validation split and on a test split; the validation split picks, the test split reports.
- **Against joint training.** The per-seed differences *method - joint* on the test split, their
  mean and median, and a 95% percentile-bootstrap interval of the mean (10,000 resamples of the
  seed pairs). A method is **above** (below) joint training only when the whole interval is above
  (below) 0; otherwise the comparison is **inconclusive**.
- **Collapse.** A run collapsed when a tumour region's mean test Dice is below 0.01, or its test
  accuracy is at most chance + 0.05.
- **Headroom check** (on the validation split, before any method is ranked): joint training must
  demonstrably leave accuracy on the table. It passes when both (1) the weak modality's head on the
  encoder trained on that modality alone (`unimodal_weak`) scores above the same head on joint
  training's encoder, and (2) the oracle — joint training whose weak-modality encoder starts from
  `unimodal_weak`'s — scores above joint training on the task, each by the paired rule above. A
  task that fails is reported as such and does not rank methods.
- **Default.** The CGGM row with the highest mean validation score on a task that passes its
  headroom check becomes the recommended setting; the page reports its test interval.
- **Plateau.** Joint training's validation curve (mean over seeds) counts as plateaued when its last
  three points improve on the three before by less than 0.01.
"""

METHOD_NOTES = """\
- **joint**: the bundle with `modulation: none`. Methods without heads of their own (joint, mslr,
  unimodal, oracle) get a `HeadMonitor`: the bundle's heads trained on the detached encoder outputs
  after each optimizer step, for the curves and head scores only; it runs after the step timer has
  stopped and after the graph is freed, so it costs these methods nothing here.
- **cggm_{magnitude,direction,both}**: `CGGMHandler` with the bundle's `rho` and the paper's
  `lambda` — magnitude only (`lambda` 0), direction only (`magnitude: false`), both — with the
  paper's estimators (thresholded utilisation, step-to-step improvement, `B = (S - d_i)/S`,
  `L + lambda L_gm`, gradients scaled). **_robust** rows use the task's robust estimators instead
  (listed per task; `docs/METHOD.md` explains each).
- **ogm_ge**: OGM-GE (Peng et al., CVPR 2022) generalised to M modalities on the same heads' scores.
- **mslr**: modality-specific learning rates; the dominant modality's encoder updates are halved.
- **unimodal_weak**: the same network trained on the weak modality alone, every other encoder fed
  zeros; evaluation blanks the same.
- **oracle**: joint training whose weak-modality encoder starts from `unimodal_weak`'s final one.

**Reliance** is the test score lost when one modality's input is replaced by zeros at its encoder;
**top share** is the largest positive drop over the sum of positive drops (1/M: evenly relied on;
1: one modality carries the model). **Weak head** is the weak modality's head score (utilisation
metric) on the test split. **Step time** is the median wall time of a training iteration (forward,
loss, backward, the method's handlers, optimizer step; first {warmup} iterations dropped), median
over runs; **peak memory** is the peak resident set above the level before training on a CPU (the
CUDA allocator's peak on a GPU), median over runs; both as a multiple of joint training's, measured
in the same benchmark process on the same machine, and only on runs that had the machine to
themselves: with `--jobs 1` the scored runs; with `--jobs N` (N runs at a time) a cost pass after
them, in which every method trains a few epochs of seed 0 alone, {repeats} times, methods in turn.
Runs follow one another, so the step-time ratio is only as steady as the machine's load over the
benchmark; `cggm-seg benchmark overhead`, which alternates joint and CGGM steps in one process,
gives the cost to quote.
""".replace("{warmup}", str(WARMUP_STEPS)).replace("{repeats}", str(COST_REPEATS))


def _of(results: Sequence[dict[str, Any]], task: Task, method: str) -> list[dict[str, Any]]:
    return [r for r in results if r["task"] == task.name and r["variant"] == method]


def _runs(results: Sequence[dict[str, Any]], task: Task, method: str) -> list[dict[str, Any]]:
    """The method's scored runs on the task (cost-only runs left out)."""
    return [r for r in _of(results, task, method) if not r.get("cost_only")]


def _timed(results: Sequence[dict[str, Any]], task: Task, method: str) -> list[dict[str, Any]]:
    """The method's runs on the task that had the machine to themselves: the ones whose cost is quoted."""
    return [r for r in _of(results, task, method) if r.get("alone", True)]


def _by_seed(runs: Sequence[dict[str, Any]], value) -> dict[int, float]:
    return {r["seed"]: float(value(r)) for r in runs}


def top_share(drops: Mapping[str, float]) -> float | None:
    """Share of the positive reliance taken by the most relied-on modality (``None`` if none is positive)."""
    positive = [max(v, 0.0) for v in drops.values()]
    return max(positive) / sum(positive) if sum(positive) > 0 else None


def _median_or_none(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def aggregate(results: Sequence[dict[str, Any]], task: Task, methods: Sequence[str]) -> dict[str, dict]:
    """Per method (in ``methods`` order): statistics over seeds, paired differences and cost ratios."""
    table: dict[str, dict] = {}
    key, weak = task.score_key, task.weak
    for method in methods:
        runs = _runs(results, task, method)
        if not runs:
            continue
        shares = [s for s in (top_share(r["reliance"]["drop"]) for r in runs) if s is not None]
        table[method] = {
            "seeds": sorted(r["seed"] for r in runs),
            "iterations": runs[0]["iterations"],
            "val": _by_seed(runs, lambda r: r["scores"]["val"][key]),
            "test": _by_seed(runs, lambda r: r["scores"]["test"][key]),
            "test_scores": {k: summary([r["scores"]["test"][k] for r in runs]) for k in task.score_keys},
            "weak_head": {split: _by_seed(runs, lambda r, s=split: r["head_scores"][s][weak])
                          for split in ("val", "test")},
            "collapsed": sum(task.collapsed(r["scores"]["test"]) for r in runs),
            "drop": {m: summary([r["reliance"]["drop"][m] for r in runs]) for m in task.modalities},
            "top_share": _median_or_none(shares),
            **_cost(_timed(results, task, method)),
        }
    base = table.get(BASELINE)
    for entry in table.values():
        has_time = base is not None and entry["step_s"] is not None and base["step_s"] is not None
        entry["time_ratio"] = entry["step_s"] / base["step_s"] if has_time else None
        has_memory = base is not None and entry["peak_mib"] is not None and (base["peak_mib"] or 0) > 0
        entry["memory_ratio"] = entry["peak_mib"] / base["peak_mib"] if has_memory else None
        if base:
            entry["vs_joint"] = _paired(entry["test"], base["test"])
            entry["weak_head_vs_joint"] = _paired(entry["weak_head"]["test"], base["weak_head"]["test"])
    return table


def _cost(runs: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Median over runs of the median steady-state step time, and the median peak memory."""
    if not runs:
        return {"step_s": None, "peak_mib": None}
    return {"step_s": statistics.median(statistics.median(steady_state(r["step_times"]) or r["step_times"])
                                        for r in runs),
            "peak_mib": statistics.median(r["peak_mib"] for r in runs)}


def _paired(method: Mapping[int, float], baseline: Mapping[int, float]) -> PairedDifference | None:
    try:
        return paired_difference(method, baseline)
    except ValueError:  # no seed in common
        return None


def headroom(task: Task, table: Mapping[str, dict]) -> dict[str, Any]:
    """The headroom check on the validation split (rules on the page): its two comparisons and verdict."""
    unimodal, base, oracle = table.get("unimodal_weak"), table.get(BASELINE), table.get("oracle")
    if not (unimodal and base and oracle):
        return {"passed": False, "weak_head": None, "oracle": None,
                "reason": "needs the joint, unimodal_weak and oracle runs"}
    weak_head = _paired(unimodal["weak_head"]["val"], base["weak_head"]["val"])
    oracle_gain = _paired(oracle["val"], base["val"])
    passed = bool(weak_head and oracle_gain) and weak_head.verdict == oracle_gain.verdict == "above"
    return {"passed": passed, "weak_head": weak_head, "oracle": oracle_gain, "reason": None}


def choose_default(table: Mapping[str, dict]) -> str | None:
    """The CGGM row with the highest mean validation score (ties: the first in table order)."""
    rows = [m for m in table if m.startswith("cggm")]
    return max(rows, key=lambda m: statistics.fmean(table[m]["val"].values()), default=None)


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
            f"{_ratio(entry['time_ratio'])} | {_ratio(entry['memory_ratio'])} |")
    return lines


def ablation_table(table: Mapping[str, dict]) -> list[str]:
    """The paper's ablation: CGGM parts (rows) x estimator sets (columns), test Δ vs joint [95% CI]."""
    lines = ["| CGGM part | " + " | ".join(ESTIMATORS) + " |",
             "|---|" + "---|" * len(ESTIMATORS)]
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


def joint_curve(results: Sequence[dict[str, Any]], task: Task) -> tuple[list[int], list[float]]:
    """Joint training's validation curve, mean over seeds (epochs of the first seed's run)."""
    runs = _runs(results, task, BASELINE)
    curves = [r["validation_curve"] for r in runs if r["validation_curve"]["values"]]
    if not curves:
        return [], []
    length = min(len(c["values"]) for c in curves)
    values = [statistics.fmean(c["values"][i] for c in curves) for i in range(length)]
    return curves[0]["epochs"][:length], values


def plot_task(results: Sequence[dict[str, Any]], task: Task, table: Mapping[str, dict],
              folder: Path) -> dict[str, Path]:
    """Validation curves (all methods, mean over seeds), per-iteration utilisation and coefficient curves
    of the lowest seed, reliance bars over all seeds."""
    plots = {}
    validation = {}
    for method in [m for m in VALIDATION_CURVES if m in table]:
        curves = [r["validation_curve"] for r in _runs(results, task, method)
                  if r["validation_curve"]["values"]]
        if curves:
            length = min(len(c["values"]) for c in curves)
            validation[method] = (curves[0]["epochs"][:length],
                                  [statistics.fmean(c["values"][i] for c in curves) for i in range(length)])
    if validation:
        plots["validation"] = line_panels({f"{task.name}: validation {task.score_label}": validation},
                                          folder / f"{task.name}_validation.png", "epoch", task.score_label)
    seed = min(s for entry in table.values() for s in entry["seeds"])
    runs = {method: run for method in table for run in _runs(results, task, method) if run["seed"] == seed}
    smooth = max(1, max(e["iterations"] for e in table.values()) // 15)
    for kind, label in CURVES.items():
        panels = {}
        for method in table:
            curves = runs.get(method, {}).get("curves", {})
            series = {m: (list(range(1, len(c) + 1)), c) for m in task.modalities
                      if (c := curves.get(f"{kind}/{m}"))}
            if series:
                panels[method] = series
        if panels:
            plots[kind] = line_panels(
                panels, folder / f"{task.name}_{kind}.png", "iteration", label, smooth=smooth, columns=4,
                suptitle=f"{task.name}: per-modality {label} during training (seed {seed}, moving average "
                         f"of {smooth})", ylim=robust_limits(panels) if kind == "coeff" else None)
    methods = list(table)
    bars = {m: ([table[v]["drop"][m].mean for v in methods], [table[v]["drop"][m].std for v in methods])
            for m in task.modalities}
    plots["reliance"] = grouped_bars(methods, bars, folder / f"{task.name}_reliance.png",
                                     f"{task.score_label} lost",
                                     title=f"{task.name}: score lost without each modality")
    return plots


CAPTIONS = {
    "validation": "Validation score over training (mean over seeds)",
    "utilisation": "Per-modality head scores (utilisation) over training",
    "coeff": "Per-modality coefficients over training (CGGM: B_i; OGM-GE: k_i)",
    "reliance": "Score lost when each modality is blanked (mean ± std over seeds)",
}


def task_section(task: Task, table: Mapping[str, dict], check: Mapping[str, Any], curve: tuple[list, list],
                 plots: Mapping[str, Path], doc_dir: Path, missing: Sequence[str] = ()) -> list[str]:
    """The task's part of the page; ``missing``: requested methods without a finished run on this task."""
    iterations = sorted({e["iterations"] for e in table.values()})
    epochs, values = curve
    plateau = (f"joint training's validation {task.score_label} by epoch: "
               + ", ".join(f"{e}: {v:.3f}" for e, v in zip(epochs, values))
               + f" — {'plateaued' if plateaued(values) else 'NOT plateaued'} (rule above).") if values else \
        "no validation curve recorded."
    robust = ", ".join(f"`{k}: {v}`" for k, v in task.robust.items())
    lines = [
        f"## {task.name}", "", task.describe(), "",
        f"Training iterations per run: {', '.join(map(str, iterations))}. Seeds: "
        f"{', '.join(map(str, next(iter(table.values()))['seeds']))}. Robust estimators on this task: "
        f"{robust}.",
        "", "### Headroom check", "", *headroom_lines(task, check), "", f"Plateau: {plateau}", "",
        f"### Scores ({task.score_label}) against joint training, and cost", "",
        *(f"- **{name}**: {variant.summary}" for name, variant in task.variants().items() if name in table),
        *([f"- Not run on this task (no finished runs): {', '.join(f'`{m}`' for m in missing)}."]
          if missing else []),
        "", *score_table(task, table), "",
        "### Ablation in the paper's form (test Δ vs joint [95% CI])", "", *ablation_table(table), "",
    ]
    for kind, path in plots.items():
        lines += [f"![{CAPTIONS[kind]}]({path.relative_to(doc_dir).as_posix()})", ""]
    return lines


def _against(verdict: str) -> str:
    """``above``/``below`` read as they are before "joint training"; ``inconclusive`` needs "against"."""
    return verdict if verdict in ("above", "below") else f"{verdict} against"


def conclusion(task: Task, table: Mapping[str, dict], check: Mapping[str, Any]) -> list[str]:
    """The task's line in the summary: headroom, the default chosen on validation, its test interval."""
    chosen = choose_default(table)
    if chosen is None:
        return [f"- **{task.name}**: no CGGM row was run."]
    diff = table[chosen].get("vs_joint")
    head = table[chosen].get("weak_head_vs_joint")
    ranked = "headroom check passed" if check["passed"] else "headroom check FAILED (does not rank methods)"
    return [f"- **{task.name}** ({ranked}): the CGGM row with the best validation score is **{chosen}**; on "
            f"the test split it is {_against(diff.verdict) if diff else '— against'} joint training "
            f"({_interval(diff)}, {diff.wins if diff else 0}/{diff.n if diff else 0} seeds better, "
            f"{table[chosen]['collapsed']} collapsed), weak-modality head {_interval(head)}, step time "
            f"{_ratio(table[chosen]['time_ratio'])}."]


def answer(tasks: Sequence[Task], numbers: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The page's answer, by the rules above: does a CGGM setting help where joint training has
    headroom, and which part of CGGM (magnitude, direction, estimators) moves the score which way."""
    ranked = [t for t in tasks if numbers[t.name]["headroom"]["passed"]]
    chosen = {t.name: numbers[t.name]["table"].get(numbers[t.name]["default"], {}) for t in ranked}
    wins = [name for name, entry in chosen.items()
            if entry.get("vs_joint") and entry["vs_joint"].verdict == "above"]
    if wins:
        lines = [f"A CGGM setting chosen on validation data is above joint training on the test split of "
                 f"{', '.join(wins)} (a task with headroom); the lines above give the setting and interval."]
    else:
        on_passed = ("; on those the CGGM default chosen on validation is not above joint training on the "
                     "test split") if ranked else ""
        on_failed = ("; on each task that failed it, at least one of the check's two comparisons was not "
                     "above 0 (its section shows which), so no method is ranked there") \
            if len(ranked) < len(tasks) else ""
        lines = [f"**No CGGM setting is shown to improve on joint training here.** {len(ranked)} of "
                 f"{len(tasks)} tasks passed the headroom check{on_passed}{on_failed}."]
    lines += ["", "What each part of CGGM did to the test score against joint training (paired 95% "
              "intervals, every task, ranked or not):", ""]
    for part in PARTS:
        for estimators, suffix in ESTIMATORS.items():
            row = f"cggm_{part}{suffix}"
            verdicts = [f"{t.name} {e['vs_joint'].verdict} ({e['vs_joint'].mean:+.3f})" for t in tasks
                        if (e := numbers[t.name]["table"].get(row)) and e.get("vs_joint")]
            if verdicts:
                lines.append(f"- {part}, {estimators} (`{row}`): {'; '.join(verdicts)}")
    return lines


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {**{k: _jsonable(getattr(value, k)) for k in value.__dataclass_fields__},
                **({"verdict": value.verdict} if isinstance(value, PairedDifference) else {})}
    return value


def write_benchmark(results: Sequence[dict[str, Any]], tasks: Sequence[Task], methods: Sequence[str],
                    out: Path, command: str, machine: dict[str, Any], wall_s: float,
                    quick: bool) -> list[Path]:
    """Write the markdown report, its PNG plots and ``results.json``; returns the files written."""
    out = Path(out)
    folder = out.parent / "benchmark"
    body: list[str] = []
    conclusions: list[str] = []
    numbers: dict[str, Any] = {}
    for task in tasks:
        table = aggregate(results, task, methods)
        check = headroom(task, table)
        curve = joint_curve(results, task)
        plots = plot_task(results, task, table, folder)
        missing = [m for m in methods if m not in table]
        body += task_section(task, table, check, curve, plots, out.parent, missing)
        conclusions += conclusion(task, table, check)
        numbers[task.name] = {"table": table, "headroom": check, "default": choose_default(table)}
    gpu = f", GPU {machine['gpu']}" if machine.get("gpu") else ""
    cost_only = sum(bool(r.get("cost_only")) for r in results)
    header = [
        "# Modality-balance benchmark", "",
        "Written by `cggm-seg benchmark`; rerun the command to reproduce or update it, do not edit by hand.",
        *([""] + ["**`--quick` run: a smoke test of the pipeline on tiny data; these numbers mean nothing.**"]
          if quick else []),
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine['cpu']}, nproc {machine['nproc']}, {machine['threads']} torch thread(s) per "
        f"run, {machine.get('jobs', 1)} run(s) at a time{gpu}; Python {machine['python']}, "
        f"torch {machine['torch']}, MONAI {machine['monai']}",
        f"- Date: {datetime.date.today().isoformat()}; wall time {wall_s / 60:.1f} min for "
        f"{len(results) - cost_only} scored runs" + (f" and {cost_only} cost-only runs" if cost_only else ""),
        "", "## Rules, fixed before the results", "", RULES,
        "## Results in one line per task", "", *conclusions, "",
        "## The answer", "", *answer(tasks, numbers), "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    text = "\n".join(header + body + ["## Methods and measurements", "", METHOD_NOTES])
    out.write_text(text.rstrip() + "\n")
    data = folder / "results.json"
    runs = [{k: v for k, v in r.items() if k not in ("curves", "step_times")} for r in results]
    data.write_text(json.dumps(_jsonable({"command": command, "machine": machine, "wall_s": wall_s,
                                          "summary": numbers, "runs": runs}), indent=1) + "\n")
    return [out, data, *sorted(folder.glob("*.png"))]
