"""`cggm-seg benchmark`: does CGGM balance the modalities here, and at what cost?

Runs every chosen method (``--methods``) with every seed on each task — synthetic BraTS phantoms
whose T1ce is much easier to learn from than the other sequences, and a synthetic CMU-MOSI task
whose text carries most of the sentiment — through the tasks' own MONAI bundles, then writes
``docs/BENCHMARK.md`` (scores mean ± std over seeds, modality reliance, head scores, step-time and
peak-memory ratios against joint training) and PNG plots beside it in ``docs/benchmark/``.

Runs go one at a time, seeds outermost, so slow drifts of a shared machine's load hit every method
alike; each run is its own process (:mod:`cggm_seg.benchmark_run`). ``--quick`` shrinks everything
to a CI smoke test of the whole pipeline; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import shlex
import tempfile
import time
from pathlib import Path
from typing import Any

import monai
import torch

from cggm_seg.benchmark_doc import BASELINE, write_benchmark
from cggm_seg.benchmark_run import child_main
from cggm_seg.benchmark_tasks import SETTINGS, TASKS, BratsTask, Task
from cggm_seg.errors import UserError

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("docs/BENCHMARK.md")


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        model = names[0] if names else model
    info = {
        "cpu": model,
        "nproc": os.cpu_count(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
        "gpu": None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run, every choice spelled out."""
    words = ["cggm-seg", "benchmark"] + (["--quick"] if args.quick else [])
    words += [
        "--seeds",
        str(args.seeds),
        "--tasks",
        *args.tasks,
        "--methods",
        *args.methods,
        "--threads",
        str(args.threads),
        "--out",
        str(args.out),
    ]
    return " ".join(shlex.quote(w) for w in words)


def _project_modules(config: Any) -> list[str]:
    """Modules a bundle config names: its ``$import`` lines and the modules of ``cggm_seg.*`` targets."""
    if isinstance(config, dict):
        return [m for value in config.values() for m in _project_modules(value)]
    if isinstance(config, list):
        return [m for value in config for m in _project_modules(value)]
    if isinstance(config, str) and config.startswith("$import "):
        return [config.split()[1]]
    if isinstance(config, str) and config.startswith("cggm_seg."):
        return [config.rsplit(".", 1)[0]]
    return []


def preload_modules(tasks: list[Task]) -> list[str]:
    """The run module and every module the tasks' bundles use: loaded once, before any run starts, so
    all runs use the same code even if files change while the benchmark runs."""
    modules = ["cggm_seg.benchmark_run"]
    for task in tasks:
        for config in (task.train_config, task.eval_config):
            modules += _project_modules(json.loads(config.read_text()))
    return list(dict.fromkeys(modules))


def _child_context(tasks: list[Task]) -> multiprocessing.context.BaseContext:
    """Fork-server processes: each run starts clean, without paying torch's and MONAI's import again."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(preload_modules(tasks))
    return context


def run_one(context: Any, spec: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """One run in a child process; its result dict, or an error quoting the end of its log."""
    run_dir.mkdir(parents=True, exist_ok=True)
    result, log = run_dir / "result.json", run_dir / "run.log"
    process = context.Process(target=child_main, args=(spec, str(result), str(log)))
    process.start()
    process.join()
    if process.exitcode != 0 or not result.is_file():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:]) if log.is_file() else ""
        raise RuntimeError(
            f"benchmark run {spec['task']}/{spec['variant']}/seed {spec['seed']} failed "
            f"(exit code {process.exitcode}); end of {log}:\n{tail}"
        )
    return json.loads(result.read_text())


def run_benchmark(
    tasks: list[Task], methods: list[str], seeds: int, setting: str, threads: int, work: Path
) -> list[dict[str, Any]]:
    """Prepare each task's data, then run methods x seeds; returns every run's result."""
    for task in tasks:
        logger.info("writing the %s data to %s", task.name, work / task.name / "data")
        task.prepare(work / task.name / "data")
    plan = [(seed, task, method) for seed in range(seeds) for task in tasks for method in methods]
    context = _child_context(tasks)
    results = []
    for number, (seed, task, method) in enumerate(plan, start=1):
        started = time.perf_counter()
        spec = {
            "task": task.name,
            "setting": setting,
            "variant": method,
            "seed": seed,
            "threads": threads,
            "data_dir": str(work / task.name / "data"),
            "run_dir": str(work / task.name / "runs" / f"{method}_seed{seed}"),
        }
        result = run_one(context, spec, Path(spec["run_dir"]))
        results.append(result)
        logger.info(
            "[%d/%d] %s %s seed %d: %s %.4f (%.0f s)",
            number,
            len(plan),
            task.name,
            method,
            seed,
            task.score_key,
            result["scores"][task.score_key],
            time.perf_counter() - started,
        )
    return results


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
        "--seeds", type=int, default=None, help="training seeds 0..N-1 (default 3; 1 with --quick)"
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
        default=list(TASKS),
        metavar="TASK",
        help=f"tasks to run (default all: {' '.join(TASKS)})",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per run (default 1: on a shared machine more threads stall "
        "each other and make step times unstable)",
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
        args.seeds = 1 if args.quick else 3
    if args.seeds < 1:
        raise UserError(f"--seeds: expected at least 1, got {args.seeds}")
    if args.threads < 1:
        raise UserError(f"--threads: expected at least 1, got {args.threads}")
    if BASELINE not in args.methods:
        raise UserError(
            f"--methods: include '{BASELINE}': scores and costs are compared against joint training"
        )
    if args.work is not None and args.work.exists() and any(args.work.iterdir()):
        raise UserError(f"--work: {args.work} is not empty; give a new folder for the data and runs")
    args.methods = list(dict.fromkeys(args.methods))
    setting = "quick" if args.quick else "full"
    tasks = [TASKS[name](SETTINGS[name][setting]) for name in args.tasks]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cggm-benchmark-") as scratch:
        work = args.work or Path(scratch)
        results = run_benchmark(tasks, args.methods, args.seeds, setting, args.threads, work)
    written = write_benchmark(
        results,
        tasks,
        args.methods,
        args.out,
        command=command_line(args),
        machine={**machine(), "threads": args.threads},
        wall_s=time.perf_counter() - started,
        quick=args.quick,
    )
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0
