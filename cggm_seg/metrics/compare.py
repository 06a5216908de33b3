"""Is run B better than run A on the same cases? Paired comparison of per-case score tables.

The BraTS challenges rank teams per case, not per mean: two runs' means can differ by noise that
a per-case comparison sees through. Every run is a per-case table (``case_id`` and one column per
metric, as ``cggm-seg evaluate`` and the bundles' ``evaluate.json`` write it); a method may have
several runs (seeds), whose scores are averaged per case. For each metric, against the first
method: the mean per-case difference, a 95% bootstrap interval that resamples cases and, with
several seeds, each method's seeds too; the Wilcoxon signed-rank p-value on the per-case
differences; and the cases each method wins, ties and loses.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon

from cggm_seg.errors import UserError

#: per-case tables as the project writes them, in the order a run folder is searched
TABLE_NAMES = ("eval/scores.csv", "scores.csv", "brats_scores.csv", "predictions/brats_scores.csv")
#: metrics (by prefix) where lower is better: distances and lesion false positives/negatives
LOWER_IS_BETTER = ("hd95", "lesion_hd95", "fp", "fn")
#: the summary keys that must agree for two tables to be comparable (the rules they were scored by)
RULE_KEYS = (
    "scheme",
    "challenge",
    "dilation_factor",
    "lesion_volume_thresh",
    "nsd_tolerance_mm",
    "label_convention",
)


@dataclass(frozen=True)
class ScoreTable:
    """One run's per-case scores, and the scoring rules its summary records."""

    source: Path
    scores: dict[str, dict[str, float]]  # case id -> metric -> score
    rules: dict[str, object]


@dataclass(frozen=True)
class Comparison:
    """``candidate - reference`` on one metric over the cases both were scored on."""

    metric: str
    reference: str
    candidate: str
    n_cases: int
    mean_difference: float
    low: float
    high: float
    p_value: float
    wins: int
    ties: int
    losses: int

    @property
    def verdict(self) -> str:
        """``better``/``worse`` when the whole interval is on one side of 0, else ``inconclusive``."""
        if self.n_cases < 2 or self.low <= 0 <= self.high:
            return "inconclusive"
        improved = self.low > 0
        return "better" if improved != lower_is_better(self.metric) else "worse"


def lower_is_better(metric: str) -> bool:
    return metric.startswith(LOWER_IS_BETTER)


def find_table(run: Path) -> Path:
    """The per-case table of ``run``: the CSV itself, or the first of :data:`TABLE_NAMES` in the folder."""
    if run.is_file():
        return run
    for name in TABLE_NAMES:
        if (run / name).is_file():
            return run / name
    raise UserError(
        f"compare: {run} is neither a per-case CSV nor a run folder holding one of "
        f"{', '.join(TABLE_NAMES)} (score it with `cggm-seg evaluate` or evaluate.json)"
    )


def _summary_of(table: Path) -> dict:
    """The summary JSON written beside ``table`` (``summary.json`` or ``<stem>_summary.json``), if any."""
    for candidate in (table.with_name(f"{table.stem}_summary.json"), table.with_name("summary.json")):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    return {}


def read_table(run: Path) -> ScoreTable:
    """Read one run's per-case table; a duplicate or missing case id, or a non-number, is one line."""
    path = find_table(run)
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "case_id" not in rows[0]:
        raise UserError(f"compare: {path} has no rows with a case_id column")
    scores: dict[str, dict[str, float]] = {}
    for row in rows:
        case = row["case_id"]
        if case in scores:
            raise UserError(f"compare: {path} lists case {case} twice")
        try:
            scores[case] = {k: float(v) for k, v in row.items() if k != "case_id" and _is_metric(k, v)}
        except ValueError as err:
            raise UserError(f"compare: {path}, case {case}: {err}") from None
    summary = _summary_of(path)
    return ScoreTable(path, scores, {k: summary[k] for k in RULE_KEYS if k in summary})


def _is_metric(column: str, value: str) -> bool:
    """Score columns: numbers; flags such as ``pred_missing`` and text columns are not compared."""
    if column == "pred_missing":
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def check_comparable(tables: Sequence[ScoreTable]) -> list[str]:
    """The metrics every table has, after refusing tables scored on other cases or by other rules."""
    first = tables[0]
    for table in tables[1:]:
        only_first = sorted(first.scores.keys() - table.scores.keys())
        only_here = sorted(table.scores.keys() - first.scores.keys())
        if only_first or only_here:
            listed = "; ".join(
                part
                for part in (
                    f"only in {first.source}: {', '.join(only_first[:5])}" if only_first else "",
                    f"only in {table.source}: {', '.join(only_here[:5])}" if only_here else "",
                )
                if part
            )
            raise UserError(f"compare: the runs were scored on different cases ({listed})")
        for key in sorted(first.rules.keys() | table.rules.keys()):
            if first.rules.get(key) != table.rules.get(key):
                raise UserError(
                    f"compare: {first.source} was scored with {key}={first.rules.get(key)!r}, "
                    f"{table.source} with {key}={table.rules.get(key)!r}"
                )
    metrics = [
        m
        for m in next(iter(first.scores.values()))
        if all(m in scores for table in tables for scores in table.scores.values())
    ]
    if not metrics:
        raise UserError("compare: the tables share no score column")
    return metrics


def seed_matrix(tables: Sequence[ScoreTable], cases: Sequence[str], metric: str) -> np.ndarray:
    """``[case, seed]`` scores of one method's runs (a missing value, NaN, is refused)."""
    values = np.array([[table.scores[case][metric] for table in tables] for case in cases], dtype=np.float64)
    if not np.isfinite(values).all():
        case, seed = (int(i) for i in np.argwhere(~np.isfinite(values))[0])
        raise UserError(f"compare: {tables[seed].source}, case {cases[case]}: {metric} is not finite")
    return values


def compare_metric(
    reference: np.ndarray,
    candidate: np.ndarray,
    metric: str,
    names: tuple[str, str],
    resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Comparison:
    """``candidate - reference`` on ``[case, seed]`` score matrices of the same cases.

    The point estimate and the Wilcoxon test use each case's mean over seeds. The interval resamples
    the cases with replacement and, independently for each method, the seeds of each resampled case
    (a two-level bootstrap); with one seed per method it is the ordinary paired bootstrap over cases.
    """
    differences = candidate.mean(axis=1) - reference.mean(axis=1)
    n = differences.size
    rng = np.random.default_rng(seed)
    cases = rng.integers(0, n, size=(resamples, n))

    def resampled_means(matrix: np.ndarray) -> np.ndarray:
        seeds = rng.integers(0, matrix.shape[1], size=(resamples, n, matrix.shape[1]))
        return np.take_along_axis(matrix[cases], seeds, axis=2).mean(axis=2)

    boot = (resampled_means(candidate) - resampled_means(reference)).mean(axis=1)
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = (float(q) for q in np.percentile(boot, [tail, 100.0 - tail]))
    better = -differences if lower_is_better(metric) else differences
    nonzero = differences[differences != 0]
    p_value = float(wilcoxon(nonzero).pvalue) if nonzero.size else 1.0
    return Comparison(
        metric,
        names[0],
        names[1],
        n,
        float(differences.mean()),
        low,
        high,
        p_value if math.isfinite(p_value) else 1.0,
        int((better > 0).sum()),
        int((better == 0).sum()),
        int((better < 0).sum()),
    )


def read_methods(methods: dict[str, list[Path]]) -> dict[str, list[ScoreTable]]:
    """Every run's table, by method, checked comparable (:func:`check_comparable`)."""
    tables = {name: [read_table(run) for run in runs] for name, runs in methods.items()}
    check_comparable([table for runs in tables.values() for table in runs])
    return tables


def compare_methods(
    tables: dict[str, list[ScoreTable]], resamples: int = 10000, seed: int = 0
) -> list[Comparison]:
    """Every method against the first one, per metric, on the cases all runs were scored on."""
    every = [table for runs in tables.values() for table in runs]
    metrics, cases = check_comparable(every), sorted(every[0].scores)
    reference, *others = tables
    results = []
    for name in others:
        for metric in metrics:
            a, b = seed_matrix(tables[reference], cases, metric), seed_matrix(tables[name], cases, metric)
            results.append(compare_metric(a, b, metric, (reference, name), resamples, seed=seed))
    return results


def as_json(comparisons: Sequence[Comparison]) -> list[dict]:
    return [{**asdict(c), "verdict": c.verdict} for c in comparisons]
