"""What is written of a scoring run: the summary statistics over cases, its text table, the per-case
CSV, the summary JSON and the box plots, and where they go next to the CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cggm_seg.io import check_new_outputs, write_atomic, write_json
from cggm_seg.metrics.brats import DICE_KEYS, HD95_KEYS
from cggm_seg.metrics.lesionwise import CASE_REGIONS
from cggm_seg.metrics.scoring import MISSING_KEY, Scheme, as_scheme

# brats2023 lesion counts per region: written as integers, like the missing-prediction flag.
_COUNTS = ("tp", "fp", "fn")


def _with_means(row: dict) -> dict:
    """The row plus the per-case means over the three regions (what the paper reports as mean Dice)."""
    return {
        **row,
        "dice_mean": float(np.mean([row[k] for k in DICE_KEYS])),
        "hd95_mean": float(np.mean([row[k] for k in HD95_KEYS])),
    }


def _table_rows(rows: Sequence[dict], scheme: Scheme) -> list[dict]:
    """The rows with every column of ``scheme.metrics`` (brats2021 adds the per-case means)."""
    return [dict(row) for row in rows] if scheme.lesionwise else [_with_means(row) for row in rows]


def summarise(rows: list[dict], scheme: Scheme | str = "brats2021") -> dict:
    """Per metric over the cases: mean (``<metric>``), population std, median, 25th and 75th percentile
    (``_std``, ``_median``, ``_p25``, ``_p75``), and ``n_cases``; brats2023 also records its rules
    (``Scheme.info``) and the cases that had no prediction (``missing_cases``).

    The population std (ddof=0) is kept from earlier releases for both schemes, so their summaries
    compare; the percentiles interpolate linearly (numpy's default).
    """
    if not rows:
        raise ValueError("no cases to summarise")
    scheme = as_scheme(scheme)
    metrics = scheme.metrics
    table = np.array([[r[m] for m in metrics] for r in _table_rows(rows, scheme)], dtype=np.float64)
    summary: dict = {**scheme.info()}
    summary.update({m: float(v) for m, v in zip(metrics, table.mean(0), strict=True)})
    summary["n_cases"] = len(rows)
    if scheme.lesionwise:
        summary["missing_cases"] = [r["case_id"] for r in rows if r.get(MISSING_KEY)]
    summary.update({f"{m}_std": float(v) for m, v in zip(metrics, table.std(0), strict=True)})
    summary.update({f"{m}_median": float(v) for m, v in zip(metrics, np.median(table, 0), strict=True)})
    for q in (25, 75):
        percentile = np.percentile(table, q, axis=0)
        summary.update({f"{m}_p{q}": float(v) for m, v in zip(metrics, percentile, strict=True)})
    return summary


def _digits(metric: str) -> int:
    """Dice-like scores (fractions) to 4 decimals; distances (mm) and lesion counts to 2."""
    return 4 if metric.startswith(("dice", "lesion_dice", "nsd")) else 2


def format_summary(summary: dict) -> str:
    """The summary as a small text table: one metric a line; mean, std, median, 25th/75th percentile."""
    scheme = Scheme(summary.get("scheme", "brats2021"))
    columns = ("", "_std", "_median", "_p25", "_p75")
    width = max(10, *(len(m) + 1 for m in scheme.metrics))
    lines = [f"{'metric':<{width}}" + "".join(f"{c.strip('_') or 'mean':>10}" for c in columns)]
    for m in scheme.metrics:
        lines.append(
            f"{m:<{width}}"
            + "".join(f"{summary[m + c]:>10.{_digits(m)}f}" for c in columns if m + c in summary)
        )
    if summary.get("missing_cases"):
        lines.append(f"no prediction (scored empty): {', '.join(summary['missing_cases'])}")
    lines.append(f"n cases: {summary['n_cases']}")
    return "\n".join(lines)


def output_paths(csv_path: Path, scheme: Scheme | str = "brats2021") -> tuple[Path, list[Path]]:
    """The summary JSON and the box-plot PNGs that go next to ``csv_path`` (``<stem>_summary.json``,
    ``<stem>_<metric>.png``), so a second table in the same folder does not overwrite the first's."""
    csv_path = Path(csv_path)
    stem = csv_path.name.removesuffix(".csv")
    plots = [csv_path.with_name(f"{stem}_{m}.png") for m in as_scheme(scheme).plot_metrics]
    return csv_path.with_name(f"{stem}_summary.json"), plots


def _csv_text(rows: Sequence[dict], scheme: Scheme) -> str:
    """The per-case table: scores to 6 decimals, lesion counts and the missing flag as integers."""
    columns = [*scheme.metrics, *((MISSING_KEY,) if scheme.lesionwise else ())]
    integers = {f"{c}_{r.lower()}" for c in _COUNTS for r in CASE_REGIONS} | {MISSING_KEY}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case_id", *columns])
    for row in _table_rows(rows, scheme):
        writer.writerow(
            [row["case_id"], *(f"{int(row[c])}" if c in integers else f"{row[c]:.6f}" for c in columns)]
        )
    return buffer.getvalue()


def write_scores(
    rows: Sequence[dict],
    csv_path: Path,
    summary_path: Path,
    force: bool = False,
    scheme: Scheme | str = "brats2021",
    plots: bool = True,
) -> dict:
    """Write the per-case CSV, the summary JSON and (``plots``) one box plot per metric next to the
    CSV (``output_paths``); returns the summary. Nothing is written if any output exists already,
    unless ``force``."""
    scheme = as_scheme(scheme)
    plot_paths = output_paths(csv_path, scheme)[1] if plots else []
    check_new_outputs((csv_path, summary_path, *plot_paths), force)  # all, before writing any
    summary = summarise(list(rows), scheme)
    text = _csv_text(rows, scheme)
    write_atomic(csv_path, lambda tmp: tmp.write_text(text), overwrite=force)
    write_json(summary_path, summary, overwrite=force)
    if plots:
        from cggm_seg.plots import box_plots  # matplotlib only when plotting, as before the plots moved

        stem = Path(csv_path).name.removesuffix(".csv")
        box_plots(
            _table_rows(rows, scheme),
            scheme.plot_metrics,
            Path(csv_path).parent,
            prefix=f"{stem}_",
            regions=CASE_REGIONS,
        )
    return summary
