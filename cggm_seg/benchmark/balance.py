"""The modality-balance benchmark (``cggm-seg benchmark balance``): does CGGM balance the modalities here,
and at what cost?

Runs every chosen method (``--methods``) with every seed on each task — synthetic BraTS phantoms
whose T1ce is much easier to learn from than the other sequences, and a synthetic CMU-MOSI task
whose text carries most of the sentiment — through the tasks' own MONAI bundles, then writes
``docs/BENCHMARK.md`` (scores mean ± std over seeds, modality reliance, head scores, step-time and
peak-memory ratios against joint training) and PNG plots beside it in ``docs/benchmark/``.

Each run is its own process (:mod:`cggm_seg.benchmark.run`), seeds outermost, so slow drifts of a
shared machine's load hit every method alike. With ``--jobs N`` the seeds' run sequences go N at a
time (one core and one torch thread each is the fast way to use a small CPU machine); the runs then
share the machine, so their step times are not quoted: a cost pass follows, in which every method
trains a few epochs alone, :data:`~cggm_seg.benchmark.timing.COST_REPEATS` times in turn, and the
page quotes those.
``--quick`` shrinks everything to a CI smoke test of the whole pipeline; its numbers mean nothing.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cggm_seg.benchmark.records import RunRecord
from cggm_seg.benchmark.run import child_main
from cggm_seg.benchmark.tasks import SETTINGS, TASKS, Task
from cggm_seg.benchmark.timing import COST_REPEATS
from cggm_seg.bundle import bundle_dir

logger = logging.getLogger(__name__)


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
    modules = ["cggm_seg.benchmark.run"]
    for task in tasks:
        for config in (task.train_config, task.eval_config):
            modules += _project_modules(json.loads(config.read_text()))
    return list(dict.fromkeys(modules))


def _child_context(tasks: list[Task]) -> multiprocessing.context.BaseContext:
    """Fork-server processes: each run starts clean, without paying torch's and MONAI's import again."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(preload_modules(tasks))
    return context


def run_one(context: Any, spec: dict[str, Any], run_dir: Path) -> RunRecord:
    """One run in a child process; its record, or an error quoting the end of its log."""
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
    return RunRecord.from_dict(json.loads(result.read_text()))


def snapshot_bundles(names: list[str], work: Path) -> Path:
    """Copy the tasks' bundles into ``work/bundles``: every run reads the same configs, even if the
    checkout changes while the benchmark runs (the modules are fixed by the fork server's preload)."""
    root = work / "bundles"
    for name in dict.fromkeys(names):
        shutil.copytree(bundle_dir(name), root / name, dirs_exist_ok=True)
    return root


def ordered_methods(task: Task, methods: list[str]) -> list[str]:
    """``methods`` with every variant after the variant whose weights it starts from."""
    variants = task.variants()
    ordered: list[str] = []
    for method in methods:
        source = variants[method].init_from
        if source is not None and source not in ordered:
            ordered.append(source)
        if method not in ordered:
            ordered.append(method)
    return ordered


class _Progress:
    """Numbers the finished runs for the log, from whichever worker finishes them."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self._lock = threading.Lock()

    def log(self, spec: dict[str, Any], task: Task, result: RunRecord, seconds: float) -> None:
        with self._lock:
            self.done += 1
            what = (
                f"cost {result.iterations} iterations"
                if result.cost_only
                else f"validation {task.score_key} {result.scores['val'][task.score_key]:.4f}, "
                f"test {result.scores['test'][task.score_key]:.4f}"
            )
            logger.info(
                "[%d/%d] %s %s seed %d: %s (%.0f s)",
                self.done,
                self.total,
                task.name,
                spec["variant"],
                spec["seed"],
                what,
                seconds,
            )


def _spec(
    task: Task, method: str, seed: int, setting: str, threads: int, bundles: Path, work: Path, **extra: Any
) -> dict[str, Any]:
    """What a child process needs for one run; ``extra`` adds to it or replaces a default (``run_dir``)."""
    runs = work / task.name / "runs"
    source = task.variants()[method].init_from
    return {
        "task": task.name,
        "setting": setting,
        "variant": method,
        "seed": seed,
        "threads": threads,
        "bundles": str(bundles),
        "data_dir": str(work / task.name / "data" / f"seed{seed}"),
        "run_dir": str(runs / f"{method}_seed{seed}"),
        "init_checkpoint": str(runs / f"{source}_seed{seed}" / "checkpoint_final.pt") if source else None,
        **extra,
    }


def run_benchmark(
    task_names: list[str],
    methods: list[str],
    seeds: int,
    setting: str,
    threads: int,
    work: Path,
    jobs: int = 1,
) -> tuple[list[Task], list[RunRecord]]:
    """Run methods x seeds on every task, each seed on its own data set; the tasks and every run's result.

    Each (seed, task) is one sequence of runs, the oracle after the run it starts from; ``jobs``
    sequences run at once. With ``jobs`` > 1 the results also hold the cost pass's records.
    """
    classes = [TASKS[name] for name in task_names]
    bundles = snapshot_bundles([cls.bundle for cls in classes], work)
    tasks = [cls(SETTINGS[cls.name][setting], bundles) for cls in classes]
    sequences = [(seed, task) for seed in range(seeds) for task in tasks]
    cost_repeats = COST_REPEATS if jobs > 1 else 0
    progress = _Progress(
        sum(len(ordered_methods(t, methods)) for _, t in sequences) + cost_repeats * len(tasks) * len(methods)
    )
    context = _child_context(tasks)

    def run(spec: dict[str, Any], task: Task) -> RunRecord:
        started = time.perf_counter()
        result = run_one(context, spec, Path(spec["run_dir"]))
        progress.log(spec, task, result, time.perf_counter() - started)
        return result

    def sequence(seed: int, task: Task) -> list[RunRecord]:
        data_dir = work / task.name / "data" / f"seed{seed}"
        logger.info("writing the %s data of seed %d to %s", task.name, seed, data_dir)
        task.prepare(data_dir, seed)
        return [
            run(_spec(task, method, seed, setting, threads, bundles, work, alone=jobs == 1), task)
            for method in ordered_methods(task, methods)
        ]

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(sequence, seed, task) for seed, task in sequences]
        try:
            results = [result for future in futures for result in future.result()]
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    for repeat in range(cost_repeats):  # one at a time, methods in turn, so drifts hit each alike
        for task in tasks:
            for method in methods:
                cost_dir = work / task.name / "cost" / f"{method}_{repeat}"
                spec = _spec(
                    task,
                    method,
                    0,
                    setting,
                    threads,
                    bundles,
                    work,
                    cost_epochs=task.setting["cost_epochs"],
                    run_dir=str(cost_dir),
                )
                results.append(run(spec, task))
    return tasks, results


def load_runs(work: Path, task_names: list[str], setting: str) -> tuple[list[Task], list[RunRecord]]:
    """The tasks and the finished runs' results of an earlier benchmark in ``work`` (nothing is trained)."""
    paths = sorted(work.glob("*/runs/*/result.json")) + sorted(work.glob("*/cost/*/result.json"))
    results = [RunRecord.from_dict(json.loads(path.read_text())) for path in paths]
    names = [name for name in task_names if any(r.task == name for r in results)]
    tasks = [TASKS[name](SETTINGS[name][setting], work / "bundles") for name in names]
    return tasks, [r for r in results if r.task in names]
