"""The benchmark's numbers per task: each method's statistics over seeds, paired against joint training,
its cost, the headroom check, the CGGM default and the validation curves averaged over seeds.

The rules these follow are stated on the page before the results (``templates/benchmark.md``): a method
is compared with joint training by paired per-seed differences and a bootstrap interval
(:mod:`cggm_seg.benchmark.stats`); a task ranks methods only when its headroom check passes; the CGGM
default is the CGGM row with the best mean *validation* score. Everything here is computed once per
task (:func:`summarise`) and only read by the page and its plots.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cggm_seg.benchmark.records import Curve, RunRecord
from cggm_seg.benchmark.stats import PairedDifference, paired_difference, summary
from cggm_seg.benchmark.tasks import Task
from cggm_seg.benchmark.timing import steady_state

BASELINE = "joint"


def _of(records: Sequence[RunRecord], task: Task, method: str) -> list[RunRecord]:
    return [r for r in records if r.task == task.name and r.variant == method]


def scored_runs(records: Sequence[RunRecord], task: Task, method: str) -> list[RunRecord]:
    """The method's scored runs on the task (cost-only runs left out)."""
    return [r for r in _of(records, task, method) if not r.cost_only]


def _timed(records: Sequence[RunRecord], task: Task, method: str) -> list[RunRecord]:
    """The method's runs on the task whose cost is quoted: made alone, with their step times (a run read
    back from ``results.json`` has none)."""
    return [r for r in _of(records, task, method) if r.alone and r.step_times]


def _by_seed(runs: Sequence[RunRecord], value) -> dict[int, float]:
    return {r.seed: float(value(r)) for r in runs}


def top_share(drops: Mapping[str, float]) -> float | None:
    """Share of the positive reliance taken by the most relied-on modality (``None`` if none is positive)."""
    positive = [max(v, 0.0) for v in drops.values()]
    return max(positive) / sum(positive) if sum(positive) > 0 else None


def _median_or_none(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def aggregate(records: Sequence[RunRecord], task: Task, methods: Sequence[str]) -> dict[str, dict]:
    """Per method (in ``methods`` order): statistics over seeds, paired differences and cost ratios.

    Plain dicts: they are ``results.json``'s ``summary`` tables as they are.
    """
    table: dict[str, dict] = {}
    key, weak = task.score_key, task.weak
    for method in methods:
        runs = scored_runs(records, task, method)
        if not runs:
            continue
        shares = [s for s in (top_share(r.reliance["drop"]) for r in runs) if s is not None]
        table[method] = {
            "seeds": sorted(r.seed for r in runs),
            "iterations": runs[0].iterations,
            "val": _by_seed(runs, lambda r: r.scores["val"][key]),
            "test": _by_seed(runs, lambda r: r.scores["test"][key]),
            "test_scores": {k: summary([r.scores["test"][k] for r in runs]) for k in task.score_keys},
            "weak_head": {
                split: _by_seed(runs, lambda r, s=split: r.head_scores[s][weak]) for split in ("val", "test")
            },
            "collapsed": sum(task.collapsed(r.scores["test"]) for r in runs),
            "drop": {m: summary([r.reliance["drop"][m] for r in runs]) for m in task.modalities},
            "top_share": _median_or_none(shares),
            **_cost(_timed(records, task, method)),
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


def _cost(runs: Sequence[RunRecord]) -> dict[str, float | None]:
    """Median over runs of the median steady-state step time, and the median peak memory."""
    if not runs:
        return {"step_s": None, "peak_mib": None}
    return {
        "step_s": statistics.median(
            statistics.median(steady_state(r.step_times) or r.step_times) for r in runs
        ),
        "peak_mib": statistics.median(r.peak_mib for r in runs),
    }


def _paired(method: Mapping[int, float], baseline: Mapping[int, float]) -> PairedDifference | None:
    try:
        return paired_difference(method, baseline)
    except ValueError:  # no seed in common
        return None


def headroom(task: Task, table: Mapping[str, dict]) -> dict[str, Any]:
    """The headroom check on the validation split (rules on the page): its two comparisons and verdict."""
    unimodal, base, oracle = table.get("unimodal_weak"), table.get(BASELINE), table.get("oracle")
    if not (unimodal and base and oracle):
        return {
            "passed": False,
            "weak_head": None,
            "oracle": None,
            "reason": "needs the joint, unimodal_weak and oracle runs",
        }
    weak_head = _paired(unimodal["weak_head"]["val"], base["weak_head"]["val"])
    oracle_gain = _paired(oracle["val"], base["val"])
    passed = bool(weak_head and oracle_gain) and weak_head.verdict == oracle_gain.verdict == "above"
    return {"passed": passed, "weak_head": weak_head, "oracle": oracle_gain, "reason": None}


def choose_default(table: Mapping[str, dict]) -> str | None:
    """The CGGM row with the highest mean validation score (ties: the first in table order)."""
    rows = [m for m in table if m.startswith("cggm")]
    return max(rows, key=lambda m: statistics.fmean(table[m]["val"].values()), default=None)


def mean_curve(runs: Sequence[RunRecord]) -> Curve | None:
    """The runs' validation curves averaged over seeds, cut to the shortest (epochs of the first run);
    ``None`` when no run recorded one."""
    curves = [r.validation_curve for r in runs if r.validation_curve and r.validation_curve.values]
    if not curves:
        return None
    length = min(len(c.values) for c in curves)
    return Curve(
        curves[0].epochs[:length], [statistics.fmean(c.values[i] for c in curves) for i in range(length)]
    )


@dataclass(frozen=True)
class TaskSummary:
    """One task's numbers, computed once; ``missing``: requested methods without a finished run here."""

    table: dict[str, dict]
    headroom: dict[str, Any]
    default: str | None
    validation: dict[str, Curve]  # method -> validation curve, mean over seeds
    missing: list[str]

    def saved(self) -> dict[str, Any]:
        """The task's entry in ``results.json``'s ``summary``."""
        return {"table": self.table, "headroom": self.headroom, "default": self.default}


def summarise(records: Sequence[RunRecord], task: Task, methods: Sequence[str]) -> TaskSummary:
    """Everything the page and the plots show of ``task``."""
    table = aggregate(records, task, methods)
    curves = {m: mean_curve(scored_runs(records, task, m)) for m in table}
    return TaskSummary(
        table=table,
        headroom=headroom(task, table),
        default=choose_default(table),
        validation={m: c for m, c in curves.items() if c is not None},
        missing=[m for m in methods if m not in table],
    )
