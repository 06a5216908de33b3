"""`cggm-seg benchmark balance`: methods x seeds x tasks -> BENCHMARK.md, on the built-in synthetic tasks or,
with ``--bundle``, on a user's data set."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shlex
import tempfile
import time
from pathlib import Path
from typing import Any

from cggm_seg.benchmark.aggregation import BASELINE
from cggm_seg.benchmark.balance import benchmark_runs, load_runs, run_benchmark, run_devices, visible_gpus
from cggm_seg.benchmark.document import write_benchmark
from cggm_seg.benchmark.own_data import OWN_DATA_TASKS, own_data_task
from cggm_seg.benchmark.plan import plan_lines, schedule
from cggm_seg.benchmark.records import RunRecord
from cggm_seg.benchmark.tasks import DEFAULT_TASKS, SETTINGS, TASKS, BratsTask, Task, Variant
from cggm_seg.benchmark.timing import machine
from cggm_seg.benchmark.work import check_work, configuration, finished_record, prepare_data, work_folder
from cggm_seg.commands.options import add_override_option
from cggm_seg.errors import UserError

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("docs/BENCHMARK.md")
#: the options that describe a user's data set, refused without ``--bundle``
OWN_DATA_OPTIONS = ("dataset_dir", "datalist", "set", "weak_modality", "dominant_modality")


def method_variants() -> dict[str, Variant]:
    """Every method's row; the names and the runs each starts from are the same on every task."""
    return BratsTask(SETTINGS["brats"]["full"]).variants()


def default_work(bundle: str) -> Path:
    """Where a benchmark on a user's data keeps its runs by default: a rerun of the command continues it."""
    return Path("runs") / f"benchmark_{bundle}"


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run, every choice spelled out."""
    words = ["cggm-seg", "benchmark", "balance"] + (["--quick"] if args.quick else [])
    words += ["--seeds", str(args.seeds)]
    if args.bundle:
        words += ["--bundle", args.bundle, "--dataset_dir", str(args.dataset_dir)]
        words += ["--datalist", str(args.datalist)] if args.datalist else []
        words += [w for key, value in args.set for w in ("--set", f"{key}={_value_text(value)}")]
        words += ["--weak-modality", args.weak_modality] if args.weak_modality else []
        words += ["--dominant-modality", args.dominant_modality] if args.dominant_modality else []
    else:
        words += ["--tasks", *args.tasks]
    words += ["--methods", *args.methods, "--threads", str(args.threads), "--jobs", str(args.jobs)]
    words += ["--out", str(args.out)]
    return " ".join(shlex.quote(w) for w in words)


def _value_text(value: Any) -> str:
    """An override's value as ``--set`` reads it back: JSON, or a string that is not JSON as it is."""
    if isinstance(value, str):
        try:
            json.loads(value)
        except json.JSONDecodeError:
            return value
    return json.dumps(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    names = list(method_variants())
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny data and schedules: a smoke test of the pipeline for CI (minutes)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"markdown report to write; plots go to OUT's folder/benchmark (default {DEFAULT_OUT}; with "
        "--bundle WORK/BENCHMARK.md)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="seeds 0..N-1, on the built-in tasks each with its own data set (default 5; 1 with --quick)",
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
        default=None,
        metavar="TASK",
        help=f"built-in tasks to run, from {' '.join(TASKS)} (default: {' '.join(DEFAULT_TASKS)}, the two "
        "built to have headroom)",
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
        help="runs at a time (default 1): one GPU each on a machine with GPUs, else one core each with "
        "--threads 1. With N > 1 the runs share the machine, so their step times are not quoted: a cost "
        "pass follows in which every method trains a few epochs alone",
    )
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print every run the benchmark would make, finished or not, with the bundle's epochs and "
        "training iterations, and the time left estimated from the finished runs; train nothing",
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
        help="keep the data and run folders (TensorBoard logs, checkpoints) here; the same command run "
        "again continues in it, never redoing a finished run (default: a temporary folder, removed at "
        "the end; with --bundle runs/benchmark_BUNDLE)",
    )
    own = parser.add_argument_group(
        "a user's data set (instead of the built-in tasks)",
        "the bundle runs as `python -m monai.bundle run --dataset_dir D --ID VALUE` would run it",
    )
    own.add_argument("--bundle", choices=list(OWN_DATA_TASKS), default=None, help="the bundle to benchmark")
    own.add_argument(
        "--dataset_dir",
        type=Path,
        default=None,
        help="the bundle's dataset_dir: a BraTS folder with its datalist (`cggm-seg prepare brats`), or "
        "the folder of a sequence bundle's data file",
    )
    own.add_argument(
        "--datalist",
        type=Path,
        default=None,
        help="brats_cggm's datalist (default DATASET_DIR/datalist.json): fold 0 tests, fold 1 validates, "
        "the other folds train",
    )
    add_override_option(
        own,
        "override a config id of the bundle, as --ID VALUE on the monai.bundle command line "
        "(repeatable), e.g. --set epochs=100 --set 'roi_size=[96,96,96]'",
    )
    own.add_argument(
        "--weak-modality",
        default=None,
        metavar="NAME",
        help="the modality of the headroom check, unimodal_weak and oracle (default: flair for BraTS, audio "
        "for the sequence bundles)",
    )
    own.add_argument(
        "--dominant-modality",
        default=None,
        metavar="NAME",
        help="the modality whose learning rate mslr halves (default: t1ce for BraTS, text otherwise)",
    )


def _check_options(args: argparse.Namespace) -> None:
    if args.seeds is None:
        args.seeds = 1 if args.quick else 5
    for option in ("seeds", "threads", "jobs"):
        if getattr(args, option) < 1:
            raise UserError(f"--{option}: expected at least 1, got {getattr(args, option)}")
    if BASELINE not in args.methods:
        raise UserError(
            f"--methods: include '{BASELINE}': scores and costs are compared against joint training"
        )
    needed = {v.init_from for v in method_variants().values() if v.name in args.methods and v.init_from}
    if needed - set(args.methods):
        raise UserError(f"--methods: the oracle starts from {sorted(needed)}; include it too")
    args.methods = list(dict.fromkeys(args.methods))
    if args.bundle is None:
        given = [name for name in OWN_DATA_OPTIONS if getattr(args, name)]
        if given:
            option = given[0].replace("_modality", "-modality")
            raise UserError(f"--{option}: a setting of a user's data set; give --bundle too")
        args.tasks = args.tasks or list(DEFAULT_TASKS)
        return
    for option in ("quick", "tasks"):
        if getattr(args, option):
            raise UserError(
                f"--{option}: the built-in tasks' option; with --bundle set the bundle with --set"
            )
    if args.dataset_dir is None:
        raise UserError("--dataset_dir: give the folder of the data set to benchmark the bundle on")


def _tasks(args: argparse.Namespace) -> list[Task]:
    if args.bundle is None:
        setting = "quick" if args.quick else "full"
        return [TASKS[name](SETTINGS[name][setting]) for name in args.tasks]
    options = (args.datalist, args.set, args.methods, args.weak_modality, args.dominant_modality)
    return [own_data_task(args.bundle, args.dataset_dir, *options)]


def main(args: argparse.Namespace) -> int:
    _check_options(args)
    tasks = _tasks(args)
    work = args.work or (default_work(args.bundle) if args.bundle else None)
    args.out = args.out or (work / "BENCHMARK.md" if args.bundle else DEFAULT_OUT)
    if args.rewrite_report:
        return _rewrite(args, tasks, work)
    config = configuration(tasks, args.methods)
    if args.plan:
        return _plan(args, tasks, work, config)
    gpus = visible_gpus()
    run_devices(args.jobs, gpus)  # refuses more runs at a time than GPUs before anything starts
    if args.bundle:  # reads the user's data as the runs will: a mistake shows now, in one line
        logger.info(schedule(tasks[0], None).describe(tasks[0].name))
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        work = work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cggm-benchmark-")))
        with work_folder(work, config):
            earlier = [
                r for r in (finished_record(Path(s["run_dir"])) for s in _runs(args, tasks, work)) if r
            ]
            tasks, results = run_benchmark(
                tasks, args.methods, args.seeds, args.threads, work, args.jobs, gpus
            )
    return _write(args, tasks, results, time.perf_counter() - started + sum(r.total_s for r in earlier))


def _runs(args: argparse.Namespace, tasks: list[Task], work: Path) -> list[dict[str, Any]]:
    sequences, cost = benchmark_runs(
        tasks, args.methods, args.seeds, args.threads, work / "bundles", work, args.jobs
    )
    return [spec for _, specs in sequences for spec in specs] + [spec for _, spec in cost]


def _plan(args: argparse.Namespace, tasks: list[Task], work: Path | None, config: dict[str, Any]) -> int:
    """``--plan``: the runs and their state, read from ``work``; the built-in tasks' training length is
    read from the data of seed 0, written to a temporary folder."""
    if work is not None:
        check_work(work, config)
    with tempfile.TemporaryDirectory(prefix="cggm-benchmark-plan-") as scratch:
        root = Path(scratch)
        for task in tasks:
            prepare_data(task, 0, root)
        schedules = {task.name: schedule(task, task.data_dir(root, 0)) for task in tasks}
        print("\n".join(plan_lines(_runs(args, tasks, work or root), schedules, work or root, args.jobs)))
    return 0


def _rewrite(args: argparse.Namespace, tasks: list[Task], work: Path | None) -> int:
    """``--rewrite-report``: the report of the runs already in ``work``; the wall time is their sum."""
    if work is None or not work.is_dir():
        raise UserError("--rewrite-report: give the --work folder of a finished benchmark")
    check_work(work, configuration(tasks, args.methods), new_or_own=False)
    tasks, results = load_runs(work, tasks)
    if not results:
        raise UserError(f"--rewrite-report: no finished runs (*/runs/*/result.json) in {work}")
    return _write(args, tasks, results, sum(r.total_s for r in results))


def _write(args: argparse.Namespace, tasks: list[Task], results: list[RunRecord], wall_s: float) -> int:
    written = write_benchmark(
        results,
        tasks,
        args.methods,
        args.out,
        command=command_line(args),
        machine={**machine(), "threads": args.threads, "jobs": args.jobs},
        wall_s=wall_s,
        quick=args.quick,
    )
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0
