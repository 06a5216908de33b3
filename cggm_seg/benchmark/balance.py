"""The modality-balance benchmark (``cggm-seg benchmark balance``): does CGGM balance the modalities here,
and at what cost?

Runs every chosen method (``--methods``) with every seed on each task — the built-in ones (synthetic
BraTS phantoms whose T1ce is much easier to learn from than the other sequences, a synthetic task whose
text is a partial shortcut), or a user's data set on its bundle (:mod:`cggm_seg.benchmark.own_data`) —
through the tasks' own MONAI bundles, then writes ``docs/BENCHMARK.md`` (scores mean ± std over seeds,
modality reliance, head scores, step-time and peak-memory ratios against joint training) and PNG plots
beside it in ``benchmark/``. A built-in task is its synthetic data plus bundle overrides; a user's is
the user's data plus the user's overrides; the runner is the same.

Each run is its own process (:mod:`cggm_seg.benchmark.run`), seeds outermost, so slow drifts of a
shared machine's load hit every method alike. With ``--jobs N`` the seeds' run sequences go N at a
time, each run on its own GPU where there are GPUs, else one core and one torch thread each (the fast way
to use a small CPU machine); the runs then share the machine, so their step times are not quoted: a cost
pass follows, in which every method trains a few epochs alone,
:data:`~cggm_seg.benchmark.timing.COST_REPEATS` times in turn, and the page quotes those. A benchmark run
again in its work folder skips the runs that finished (:mod:`cggm_seg.benchmark.work`).
``--quick`` shrinks everything to a CI smoke test of the whole pipeline; its numbers mean nothing.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import queue
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from cggm_seg.benchmark.plan import Progress
from cggm_seg.benchmark.records import RunRecord
from cggm_seg.benchmark.run import child_main
from cggm_seg.benchmark.tasks import Task
from cggm_seg.benchmark.timing import COST_REPEATS
from cggm_seg.benchmark.work import RESULT, clear_unfinished, finished_record, prepare_data, snapshot_bundles
from cggm_seg.errors import UserError

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
    result, log = run_dir / RESULT, run_dir / "run.log"
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


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` names them (none on a CPU machine)."""
    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(count)]
    return [name.strip() for name in listed.split(",") if name.strip()][:count]


def run_devices(jobs: int, gpus: Sequence[str]) -> list[str | None]:
    """The ``CUDA_VISIBLE_DEVICES`` of each of the ``jobs`` runs going at once: one GPU each, or None each
    on a machine without a GPU (the runs then share its cores, ``--threads`` torch threads each)."""
    if not gpus:
        return [None] * jobs
    if jobs > len(gpus):
        raise UserError(
            f"--jobs: {jobs} runs at a time need one GPU each; {len(gpus)} are visible ({', '.join(gpus)})"
        )
    return list(gpus[:jobs])


def _outcome(task: Task, result: RunRecord) -> str:
    if result.cost_only:
        return f"cost {result.iterations} iterations"
    return (
        f"validation {task.score_key} {result.scores['val'][task.score_key]:.4f}, "
        f"test {result.scores['test'][task.score_key]:.4f}"
    )


def _spec(
    task: Task, method: str, seed: int, threads: int, bundles: Path, work: Path, **extra: Any
) -> dict[str, Any]:
    """What a child process needs for one run; ``extra`` adds to it or replaces a default (``run_dir``)."""
    runs = work / task.name / "runs"
    source = task.variants()[method].init_from
    data_dir = task.data_dir(work, seed)
    return {
        "task": task.name,
        "setting": task.setting,
        "variant": method,
        "seed": seed,
        "threads": threads,
        "bundles": str(bundles),
        "data_dir": str(data_dir) if data_dir else None,
        "run_dir": str(runs / f"{method}_seed{seed}"),
        "init_checkpoint": str(runs / f"{source}_seed{seed}" / "checkpoint_final.pt") if source else None,
        **extra,
    }


def benchmark_runs(
    tasks: Sequence[Task],
    methods: Sequence[str],
    seeds: int,
    threads: int,
    bundles: Path,
    work: Path,
    jobs: int,
) -> tuple[list[tuple[Task, list[dict[str, Any]]]], list[tuple[Task, dict[str, Any]]]]:
    """Every run of the benchmark, as the runner starts them and ``--plan`` lists them: one sequence of
    scored runs per (seed, task), the oracle after the run it starts from; with ``jobs`` > 1 then the
    cost pass, one run at a time, methods in turn, so drifts of the machine's load hit each alike."""
    sequences = [
        (
            task,
            [
                _spec(task, m, seed, threads, bundles, work, alone=jobs == 1)
                for m in ordered_methods(task, methods)
            ],
        )
        for seed in range(seeds)
        for task in tasks
    ]
    cost = [
        (
            task,
            _spec(
                task,
                method,
                0,
                threads,
                bundles,
                work,
                cost_epochs=task.setting["cost_epochs"],
                run_dir=str(work / task.name / "cost" / f"{method}_{repeat}"),
            ),
        )
        for repeat in range(COST_REPEATS if jobs > 1 else 0)
        for task in tasks
        for method in methods
    ]
    return sequences, cost


def run_benchmark(
    tasks: Sequence[Task],
    methods: Sequence[str],
    seeds: int,
    threads: int,
    work: Path,
    jobs: int = 1,
    gpus: Sequence[str] = (),
) -> tuple[list[Task], list[RunRecord]]:
    """Run methods x seeds on every task; the tasks (reading the bundles' snapshot) and every run's result.

    ``jobs`` sequences of runs go at once, each run on its own GPU of ``gpus`` if there are any. A run
    whose record is in ``work`` already is not run again. With ``jobs`` > 1 the results also hold the
    cost pass's records.
    """
    bundles = snapshot_bundles([task.bundle for task in tasks], work)
    tasks = [type(task)(task.setting, bundles) for task in tasks]
    for seed in range(seeds):
        for task in tasks:
            prepare_data(task, seed, work)
    sequences, cost = benchmark_runs(tasks, methods, seeds, threads, bundles, work, jobs)
    progress = Progress(sum(len(specs) for _, specs in sequences) + len(cost), jobs)
    devices: queue.SimpleQueue[str | None] = queue.SimpleQueue()
    for device in run_devices(jobs, gpus):
        devices.put(device)
    context = _child_context(tasks)

    def run(task: Task, spec: dict[str, Any]) -> RunRecord:
        run_dir = Path(spec["run_dir"])
        name = f"{task.name} {spec['variant']} seed {spec['seed']}"
        earlier = finished_record(run_dir)
        if earlier:
            progress.log(name, "finished earlier, not run again", earlier.total_s)
            return earlier
        clear_unfinished(run_dir)
        device = devices.get()
        started = time.perf_counter()
        try:
            result = run_one(context, {**spec, "gpu": device}, run_dir)
        finally:
            devices.put(device)
        progress.log(name, _outcome(task, result), time.perf_counter() - started)
        return result

    def sequence(task: Task, specs: list[dict[str, Any]]) -> list[RunRecord]:
        return [run(task, spec) for spec in specs]

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(sequence, task, specs) for task, specs in sequences]
        try:
            results = [result for future in futures for result in future.result()]
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    return tasks, results + [run(task, spec) for task, spec in cost]


def load_runs(work: Path, tasks: Sequence[Task]) -> tuple[list[Task], list[RunRecord]]:
    """The tasks with finished runs in ``work``, reading its bundles' snapshot, and those runs' records
    (nothing is trained)."""
    paths = sorted(work.glob(f"*/runs/*/{RESULT}")) + sorted(work.glob(f"*/cost/*/{RESULT}"))
    results = [RunRecord.from_dict(json.loads(path.read_text())) for path in paths]
    found = [type(t)(t.setting, work / "bundles") for t in tasks if any(r.task == t.name for r in results)]
    names = {t.name for t in found}
    return found, [r for r in results if r.task in names]
