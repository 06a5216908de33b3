"""Turn benchmark runs into ``docs/BENCHMARK.md``, its plots and a JSON copy of the numbers.

Aggregation is plain arithmetic over seeds: mean and sample standard deviation of the held-out
scores, the reliance drops and the head scores; medians of the per-run median step time and of the
per-run peak memory, divided by joint training's. The verdicts in the text follow fixed rules
(:func:`verdict`, :func:`recommendation`) from those numbers, so a rerun rewrites them
consistently; nothing in the file is written by hand.
"""

from __future__ import annotations

import datetime
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cggm_seg.benchmark.tasks import Task
from cggm_seg.benchmark.timing import WARMUP_STEPS, steady_state
from cggm_seg.plots import grouped_bars, line_panels, robust_limits

BASELINE = "joint"
#: score differences below this are reported as level
LEVEL = 5e-4
#: curve kind -> axis label
CURVES = {"utilisation": "head score (utilisation)", "coeff": "coefficient"}
Stat = tuple[float, float | None]

METHOD_NOTES = """\
- **joint**: the bundle with `modulation: none`. Methods without heads of their own (joint, mslr,
  unimodal) get a `HeadMonitor`: the bundle's heads trained on the detached encoder outputs after
  each optimizer step, for the utilisation curves and head scores only; it changes no gradient and
  runs outside the timed step and after the graph is freed, so it costs these methods nothing here.
- **cggm\\***: `CGGMHandler` with the bundle's `rho` and `lambda`, one setting changed per row.
- **ogm_ge**: OGM-GE (Peng et al., CVPR 2022) generalised to M modalities. Modality i's score is its
  head's utilisation metric (mean Dice / sign accuracy) on the batch — the late-fusion
  decomposition OGM-GE scores with does not exist for a U-Net or a fusion transformer. Ratio
  `rho_i = s_i / mean_{j != i} s_j` (the paper's `s_u / s_v` for M = 2), coefficient
  `1 - tanh(alpha * rho_i)` when `rho_i > 1`, else 1 (the paper's rule, jump at 1 included);
  generalisation enhancement: Gaussian noise with each gradient tensor's own standard deviation
  added to every encoder's gradients, from one seeded generator.
- **mslr**: modality-specific learning rates. The encoder's optimizer update is scaled (parameters
  set to `before + s * (after - before)` around `optimizer.step()`), which equals a parameter group
  with learning rate `s * lr` for SGD with momentum and weight decay, Adam and AdamW (the update is
  linear in `lr`, the state does not depend on it); scaling the gradient would not be (weight decay
  stays unscaled, Adam divides the scale away).
- **unimodal**: the same network, every other encoder fed zeros (`UnimodalHandler`); evaluation
  blanks the same encoders.

The schedules are short (the iteration counts are given per task): the numbers describe the first
few hundred steps of training on small synthetic data, not converged models.

Scores are those of the final weights on a held-out split, from the bundle's own `evaluate.json`;
no checkpoint is picked on validation data. **Reliance** is the score lost when one modality's
input is replaced by zeros at its encoder (after BraTS's per-channel normalisation that is the
brain's mean intensity); **top-modality share** is the largest positive drop over the sum of the
positive drops (1/M: evenly relied on; 1: one modality carries the model; single-modality ablation
does not see redundancy, e.g. FLAIR and T2 both showing the oedema). **Head scores** are the
per-modality heads' utilisation metric on the held-out split. **Step time** is the median wall time
of a training iteration (forward, loss, backward, the method's handlers, optimizer step; first
{warmup} iterations dropped), median over seeds; **peak memory** is the peak resident set above the
level before training on a CPU (the CUDA allocator's peak on a GPU), median over seeds; both as a
multiple of joint training's, measured in the same benchmark process on the same machine.
""".replace("{warmup}", str(WARMUP_STEPS))


def mean_std(values: Sequence[float]) -> Stat:
    """Mean and sample standard deviation (``None`` for a single value)."""
    values = [float(v) for v in values]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def fmt(stat: Stat | None, digits: int = 3) -> str:
    if stat is None:
        return "—"
    mean, std = stat
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def top_share(drops: dict[str, float]) -> float | None:
    """Share of the positive reliance taken by the most relied-on modality (``None`` if none is positive)."""
    positive = [max(v, 0.0) for v in drops.values()]
    return max(positive) / sum(positive) if sum(positive) > 0 else None


def aggregate(results: Sequence[dict[str, Any]], task: Task, methods: Sequence[str]) -> dict[str, dict]:
    """Per method (in ``methods`` order): statistics over seeds and cost ratios against joint training."""
    summary: dict[str, dict] = {}
    for method in methods:
        runs = [r for r in results if r["task"] == task.name and r["variant"] == method]
        if not runs:
            continue
        shares = [s for s in (top_share(r["reliance"]["drop"]) for r in runs) if s is not None]
        summary[method] = {
            "seeds": sorted(r["seed"] for r in runs),
            "iterations": runs[0]["iterations"],
            "scores": {k: mean_std([r["scores"][k] for r in runs]) for k in task.score_keys},
            "drop": {m: mean_std([r["reliance"]["drop"][m] for r in runs]) for m in task.modalities},
            "heads": {m: mean_std([r["head_scores"][m] for r in runs]) for m in task.modalities},
            "top_share": mean_std(shares) if shares else None,
            "step_s": statistics.median(
                statistics.median(steady_state(r["step_times"]) or r["step_times"]) for r in runs
            ),
            "peak_mib": statistics.median(r["peak_mib"] for r in runs),
        }
    base = summary.get(BASELINE)
    for entry in summary.values():
        entry["time_ratio"] = entry["step_s"] / base["step_s"] if base else None
        entry["memory_ratio"] = (
            entry["peak_mib"] / base["peak_mib"] if base and base["peak_mib"] > 0 else None
        )
    return summary


def verdict(entry: dict, base: dict, key: str) -> str:
    """A method's mean score against joint training's, with the difference judged against the seed spread.

    "within the seed spread" when the difference is no larger than the bigger of the two standard
    deviations over the seeds; "level with" when it is below 0.0005; otherwise "above"/"below"
    (higher scores are better).
    """
    (mean, std), (base_mean, base_std) = entry["scores"][key], base["scores"][key]
    diff = mean - base_mean
    spread = max(std or 0.0, base_std or 0.0)
    if abs(diff) < LEVEL:
        return f"level with joint training ({diff:+.3f})"
    if len(entry["seeds"]) > 1 and abs(diff) <= spread:
        return f"within the seed spread of joint training ({diff:+.3f}; spread {spread:.3f})"
    return f"{'above' if diff > 0 else 'below'} joint training ({diff:+.3f})"


def recommendation(task: Task, summary: dict[str, dict]) -> list[str]:
    """The CGGM setting with the highest mean score, its settings, and whether it beats joint training."""
    cggm = sorted((m for m in summary if m.startswith("cggm")),
                  key=lambda m: -summary[m]["scores"][task.score_key][0])
    if not cggm or BASELINE not in summary:
        return [f"CGGM and joint training were not both run on {task.name}: no recommendation."]
    key, best = task.score_key, cggm[0]
    variant = task.variants()[best]
    settings = ", ".join(f"`{k}={v}`" for k, v in variant.settings.items())
    judged = verdict(summary[best], summary[BASELINE], key)
    lines = [
        f"CGGM settings ranked by {task.score_label} on {task.name} (mean over seeds): "
        + ", ".join(f"{m} {fmt(summary[m]['scores'][key])}" for m in cggm)
        + f" (joint training: {fmt(summary[BASELINE]['scores'][key])}).",
        "",
        f"**Recommended default: `{best}`** ({variant.summary}; handler settings {settings} on top of the "
        f"bundle's): the highest {task.score_label} of the CGGM settings measured; it is {judged}. "
        "`rho` was not varied (the bundle's value).",
    ]
    if not judged.startswith("above"):
        lines += ["", f"No CGGM setting beats joint training on {task.name} by more than the seed spread in "
                      "this benchmark: the default is the best of the CGGM settings, not a setting shown to "
                      "improve on joint training."]
    return lines


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def score_table(task: Task, summary: dict[str, dict]) -> list[str]:
    keys = task.score_keys
    lines = [
        "| method | " + " | ".join(keys) + " | step time vs joint | peak memory vs joint | setting |",
        "|---" * (len(keys) + 4) + "|",
    ]
    for method, entry in summary.items():
        cells = [fmt(entry["scores"][k], 2 if k.startswith(("hd95", "mae")) else 3) for k in keys]
        lines.append(
            f"| {method} | " + " | ".join(cells) + f" | {_ratio(entry['time_ratio'])} | "
            f"{_ratio(entry['memory_ratio'])} | {task.variants()[method].summary} |"
        )
    return lines


def reliance_table(task: Task, summary: dict[str, dict]) -> list[str]:
    mods = task.modalities
    lines = [
        "| method | "
        + " | ".join(f"drop w/o {m}" for m in mods)
        + " | top-modality share | "
        + " | ".join(f"head {m}" for m in mods)
        + " |",
        "|---" * (2 * len(mods) + 2) + "|",
    ]
    for method, entry in summary.items():
        lines.append(
            f"| {method} | "
            + " | ".join(fmt(entry["drop"][m]) for m in mods)
            + f" | {fmt(entry['top_share'], 2)} | "
            + " | ".join(fmt(entry["heads"][m]) for m in mods)
            + " |"
        )
    return lines


def plot_task(results: Sequence[dict[str, Any]], task: Task, summary: dict[str, dict],
              folder: Path) -> dict[str, Path]:
    """Utilisation and coefficient curves of the lowest seed, reliance bars over all seeds."""
    seed = min(s for entry in summary.values() for s in entry["seeds"])
    runs = {r["variant"]: r for r in results if r["task"] == task.name and r["seed"] == seed}
    smooth = max(1, max(e["iterations"] for e in summary.values()) // 15)
    plots = {}
    for kind, label in CURVES.items():
        panels = {}
        for method in summary:
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
    methods = list(summary)
    bars = {m: ([summary[v]["drop"][m][0] for v in methods],
                [summary[v]["drop"][m][1] or 0.0 for v in methods]) for m in task.modalities}
    plots["reliance"] = grouped_bars(methods, bars, folder / f"{task.name}_reliance.png",
                                     f"{task.score_label} lost",
                                     title=f"{task.name}: score lost without each modality")
    return plots


def task_section(
    task: Task, summary: dict[str, dict], plots: dict[str, Path], doc_dir: Path
) -> list[str]:
    iterations = sorted({e["iterations"] for e in summary.values()})
    lines = [
        f"## {task.name}",
        "",
        task.describe(),
        "",
        f"Training iterations per run: {', '.join(map(str, iterations))}. Seeds: "
        f"{', '.join(map(str, next(iter(summary.values()))['seeds']))}. Mean ± sample std over seeds.",
        "",
        f"### Held-out scores ({task.score_label} first) and cost",
        "",
        *score_table(task, summary),
        "",
        "### Modality reliance and head scores",
        "",
        *reliance_table(task, summary),
        "",
    ]
    captions = {
        "utilisation": "Per-modality head scores (utilisation) over training",
        "coeff": "Per-modality coefficients over training (CGGM: B_i; OGM-GE: k_i)",
        "reliance": "Score lost when each modality is blanked (mean ± std over seeds)",
    }
    for kind, path in plots.items():
        lines += [f"![{captions[kind]}]({path.relative_to(doc_dir).as_posix()})", ""]
    return lines


def _verdicts(task: Task, summary: dict[str, dict]) -> list[str]:
    if BASELINE not in summary:
        return []
    base = summary[BASELINE]
    lines = []
    for method, entry in summary.items():
        if method != BASELINE:
            lines.append(
                f"- {task.name} / **{method}**: {task.score_label} {fmt(entry['scores'][task.score_key])}, "
                f"{verdict(entry, base, task.score_key)}; top-modality share {fmt(entry['top_share'], 2)} "
                f"(joint {fmt(base['top_share'], 2)}); step time {_ratio(entry['time_ratio'])}."
            )
    return lines


def _runs_without_curves(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in ("curves", "step_times")} for r in results]


def write_benchmark(
    results: Sequence[dict[str, Any]],
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
    body: list[str] = []
    verdicts: list[str] = []
    recommended: list[str] = []
    numbers: dict[str, Any] = {}
    for task in tasks:
        summary = aggregate(results, task, methods)
        plots = plot_task(results, task, summary, folder)
        body += task_section(task, summary, plots, out.parent)
        verdicts += _verdicts(task, summary)
        if task.name == "brats":
            recommended = recommendation(task, summary)
        numbers[task.name] = summary
    gpu = f", GPU {machine['gpu']}" if machine.get("gpu") else ""
    header = [
        "# Modality-balance benchmark",
        "",
        "Written by `cggm-seg benchmark`; rerun the command to reproduce or update it, do not edit by hand.",
        *(
            [""]
            + ["**`--quick` run: a smoke test of the pipeline on tiny data; these numbers mean nothing.**"]
            if quick
            else []
        ),
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine['cpu']}, nproc {machine['nproc']}, {machine['threads']} torch thread(s) per run"
        f"{gpu}; Python {machine['python']}, torch {machine['torch']}, MONAI {machine['monai']}",
        f"- Date: {datetime.date.today().isoformat()}; wall time {wall_s / 60:.1f} min for "
        f"{len(results)} runs",
        "",
        "## Results in one line each",
        "",
        *verdicts,
        "",
        "## Recommended CGGM default for the BraTS bundle",
        "",
        *(recommended or ["BraTS was not run."]),
        "",
        "## Methods and measurements",
        "",
        METHOD_NOTES,
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(header + body).rstrip() + "\n")
    data = folder / "results.json"
    data.write_text(
        json.dumps(
            {
                "command": command,
                "machine": machine,
                "wall_s": wall_s,
                "summary": numbers,
                "runs": _runs_without_curves(results),
            },
            indent=1,
        )
        + "\n"
    )
    return [out, data, *sorted(folder.glob("*.png"))]
