"""`cggm-seg compare A B [C ...]`: is B better than A on the same cases? (:mod:`cggm_seg.metrics.compare`)"""

from __future__ import annotations

import argparse
from pathlib import Path

from cggm_seg.errors import UserError
from cggm_seg.io import check_new_outputs, write_json
from cggm_seg.metrics.compare import Comparison, as_json, compare_methods, read_methods, seed_matrix
from cggm_seg.plots import paired_scatter


def method_runs(text: str) -> tuple[str, list[Path]]:
    """``NAME=RUN[,RUN...]`` (several seeds of one method) or a bare ``RUN`` named after its folder."""
    name, sep, runs = text.partition("=")
    if not sep:
        name, runs = Path(text).name or text, text
    paths = [Path(run) for run in runs.split(",") if run]
    if not name or not paths:
        raise argparse.ArgumentTypeError(f"expected RUN or NAME=RUN[,RUN...], got {text!r}")
    return name, paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs",
        nargs="+",
        type=method_runs,
        metavar="RUN",
        help="a scored run (its folder or per-case CSV), or NAME=RUN,RUN,... for several "
        "seeds of one method; the first is the reference the others are compared with",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("compare.json"),
        help="the comparison as JSON; the plot goes next to it as <name>.png (default: %(default)s)",
    )
    parser.add_argument(
        "--metrics",
        nargs="+",
        metavar="METRIC",
        help="only these columns (default: every score column the runs share)",
    )
    parser.add_argument(
        "--resamples", type=int, default=10000, help="bootstrap resamples (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out and its plot")


def format_table(comparisons: list[Comparison]) -> str:
    header = f"{'metric':<16} {'B - A':>9} {'95% interval':>20} {'p':>7} {'wins/ties/losses':>17}  verdict"
    lines = []
    for candidate in dict.fromkeys(c.candidate for c in comparisons):
        reference = comparisons[0].reference
        lines += ["", f"{candidate} (B) against {reference} (A), {comparisons[0].n_cases} cases", header]
        for c in (c for c in comparisons if c.candidate == candidate):
            interval = f"[{c.low:+.4f}, {c.high:+.4f}]"
            lines.append(
                f"{c.metric:<16} {c.mean_difference:>+9.4f} {interval:>20} {c.p_value:>7.3g} "
                f"{f'{c.wins}/{c.ties}/{c.losses}':>17}  {c.verdict}"
            )
    return "\n".join(lines[1:])


def main(args: argparse.Namespace) -> int:
    methods = dict(args.runs)
    if len(methods) < 2:
        raise UserError("compare: give at least two runs (or NAME=RUN methods); the first is the reference")
    if args.resamples < 100:
        raise UserError(f"--resamples: {args.resamples} is too few for a 95% interval; use at least 100")
    plot = args.out.with_suffix(".png")
    check_new_outputs([args.out, plot], args.force)
    tables = read_methods(methods)
    comparisons = compare_methods(tables, args.resamples, args.seed)
    if args.metrics:
        unknown = sorted(set(args.metrics) - {c.metric for c in comparisons})
        if unknown:
            raise UserError(f"--metrics: {', '.join(unknown)} not among the runs' score columns")
        comparisons = [c for c in comparisons if c.metric in args.metrics]
    print(format_table(comparisons))
    write_json(
        args.out,
        {
            "runs": {name: [str(p) for p in paths] for name, paths in methods.items()},
            "comparisons": as_json(comparisons),
        },
        args.force,
    )
    reference, candidate = list(tables)[:2]
    cases = sorted(tables[reference][0].scores)
    shown = [c.metric for c in comparisons if c.candidate == candidate][:6]
    paired_scatter(
        {
            m: (
                seed_matrix(tables[reference], cases, m).mean(axis=1),
                seed_matrix(tables[candidate], cases, m).mean(axis=1),
            )
            for m in shown
        },
        plot,
        xlabel=f"{reference} (per case)",
        ylabel=f"{candidate} (per case)",
    )
    print(f"wrote {args.out} and {plot}")
    return 0
