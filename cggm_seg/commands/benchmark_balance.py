"""`cggm-seg benchmark balance`: methods x seeds x tasks -> BENCHMARK.md."""

from __future__ import annotations

import argparse
import shlex
import tempfile
import time
from pathlib import Path

from cggm_seg.benchmark.aggregation import BASELINE
from cggm_seg.benchmark.balance import load_runs, run_benchmark
from cggm_seg.benchmark.document import write_benchmark
from cggm_seg.benchmark.tasks import DEFAULT_TASKS, TASKS, BratsTask
from cggm_seg.benchmark.timing import machine
from cggm_seg.errors import UserError

DEFAULT_OUT = Path("docs/BENCHMARK.md")


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run, every choice spelled out."""
    words = ["cggm-seg", "benchmark", "balance"] + (["--quick"] if args.quick else [])
    words += [
        "--seeds",
        str(args.seeds),
        "--tasks",
        *args.tasks,
        "--methods",
        *args.methods,
        "--threads",
        str(args.threads),
        "--jobs",
        str(args.jobs),
        "--out",
        str(args.out),
    ]
    return " ".join(shlex.quote(w) for w in words)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    names = list(BratsTask.variants())
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny data and schedules: a smoke test of the pipeline for CI (minutes)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"markdown report to write; plots go to OUT's folder/benchmark (default {DEFAULT_OUT})",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="seeds 0..N-1, each with its own data set (default 5; 1 with --quick)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=names,
        default=names,
        metavar="METHOD",
        help=f"methods to compare, '{BASELINE}' included (default all: {' '.join(names)})",
    )
    parser.add_argument(
        "--tasks",
        nargs="+",
        choices=list(TASKS),
        default=list(DEFAULT_TASKS),
        metavar="TASK",
        help=f"tasks to run, from {' '.join(TASKS)} (default: {' '.join(DEFAULT_TASKS)}, the two built to "
        "have headroom)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per run (default 1: on a shared machine more threads stall "
        "each other and make step times unstable)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at a time (default 1). With N > 1 (e.g. one per core with --threads 1) the runs share "
        "the machine, so their step times are not quoted: a cost pass follows in which every method "
        "trains a few epochs alone",
    )
    parser.add_argument(
        "--rewrite-report",
        action="store_true",
        help="train nothing: rewrite the report from the finished runs in --work (after a change to the "
        "report itself; the runs' numbers are used as they are, and the wall time is the sum of their "
        "own times, more than the wall time of a run with --jobs above 1)",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help="keep the data and run folders (TensorBoard logs, checkpoints) here; "
        "default: a temporary folder, removed at the end",
    )


def main(args: argparse.Namespace) -> int:
    if args.seeds is None:
        args.seeds = 1 if args.quick else 5
    if args.seeds < 1:
        raise UserError(f"--seeds: expected at least 1, got {args.seeds}")
    if args.threads < 1:
        raise UserError(f"--threads: expected at least 1, got {args.threads}")
    if args.jobs < 1:
        raise UserError(f"--jobs: expected at least 1, got {args.jobs}")
    if BASELINE not in args.methods:
        raise UserError(
            f"--methods: include '{BASELINE}': scores and costs are compared against joint training"
        )
    needed = {v.init_from for v in BratsTask.variants().values() if v.name in args.methods and v.init_from}
    if needed - set(args.methods):
        raise UserError(f"--methods: the oracle starts from {sorted(needed)}; include it too")
    args.methods = list(dict.fromkeys(args.methods))
    setting = "quick" if args.quick else "full"
    if args.rewrite_report:
        return _rewrite(args, setting)
    if args.work is not None and args.work.exists() and any(args.work.iterdir()):
        raise UserError(f"--work: {args.work} is not empty; give a new folder for the data and runs")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cggm-benchmark-") as scratch:
        work = args.work or Path(scratch)
        tasks, results = run_benchmark(
            args.tasks, args.methods, args.seeds, setting, args.threads, work, args.jobs
        )
    written = write_benchmark(
        results,
        tasks,
        args.methods,
        args.out,
        command=command_line(args),
        machine={**machine(), "threads": args.threads, "jobs": args.jobs},
        wall_s=time.perf_counter() - started,
        quick=args.quick,
    )
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def _rewrite(args: argparse.Namespace, setting: str) -> int:
    """``--rewrite-report``: the report of the runs already in ``--work``; the wall time is their sum."""
    if args.work is None or not args.work.is_dir():
        raise UserError("--rewrite-report: give the --work folder of a finished benchmark")
    tasks, results = load_runs(args.work, args.tasks, setting)
    if not results:
        raise UserError(f"--rewrite-report: no finished runs (*/runs/*/result.json) in {args.work}")
    written = write_benchmark(
        results,
        tasks,
        args.methods,
        args.out,
        command=command_line(args),
        machine={**machine(), "threads": args.threads, "jobs": args.jobs},
        wall_s=sum(r.total_s for r in results),
        quick=args.quick,
    )
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0
