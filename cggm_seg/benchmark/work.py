"""The benchmark's work folder, what a killed benchmark continues from without redoing a finished run.

It holds the configuration its runs were made with (:data:`CONFIG`: each task's setting and each
method's settings), a snapshot of the bundles, the synthetic data and one folder per run. A run is
finished when its :data:`RESULT` exists: the run writes it last, atomically. A benchmark started again
with the same ``--work`` skips the finished runs and redoes an unfinished one from scratch (its step
times and curves must cover the whole run); more seeds, methods or tasks may be added. Runs of another
configuration are refused, naming the first difference, and a folder that holds no benchmark is never
written into. One benchmark at a time holds the folder (:class:`~cggm_seg.run_lock.RunLock`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from cggm_seg.benchmark.records import RunRecord
from cggm_seg.benchmark.tasks import Task
from cggm_seg.bundle import bundle_dir
from cggm_seg.errors import UserError
from cggm_seg.io import write_json
from cggm_seg.run_lock import LOCK_NAME, RunLock

logger = logging.getLogger(__name__)

CONFIG = "benchmark.json"
RESULT = "result.json"


def configuration(tasks: Sequence[Task], methods: Sequence[str]) -> dict[str, Any]:
    """What the runs' numbers depend on, as JSON reads it back: each task's setting and methods."""
    config = {
        task.name: {
            "setting": task.setting,
            "methods": {
                name: {"method": v.method, "settings": v.settings, "init_from": v.init_from}
                for name, v in task.variants().items()
                if name in methods
            },
        }
        for task in tasks
    }
    return json.loads(json.dumps({"tasks": config}))


_UNSET = object()


def first_difference(there: Any, here: Any, where: str) -> str | None:
    """The first entry in which two JSON values differ, as ``where.key: A there, B now``."""
    if isinstance(there, dict) and isinstance(here, dict):
        for key in dict.fromkeys([*there, *here]):
            found = first_difference(there.get(key, _UNSET), here.get(key, _UNSET), f"{where}.{key}")
            if found:
                return found
        return None
    if there == here:
        return None
    return f"{where}: {_text(there)} there, {_text(here)} now"


def _text(value: Any) -> str:
    return "not set" if value is _UNSET else json.dumps(value)


def _conflict(stored: Mapping[str, Any], config: Mapping[str, Any]) -> str | None:
    """The first difference between the settings of the tasks and methods both configurations hold."""
    for name in sorted(stored["tasks"].keys() & config["tasks"].keys()):
        there, here = stored["tasks"][name], config["tasks"][name]
        shared = sorted(there["methods"].keys() & here["methods"].keys())
        pairs = [(there["setting"], here["setting"], name)]
        pairs += [(there["methods"][m], here["methods"][m], f"{name} {m}") for m in shared]
        for old, new, where in pairs:
            found = first_difference(old, new, where)
            if found:
                return found
    return None


def check_work(work: Path, config: Mapping[str, Any], new_or_own: bool = True) -> dict[str, Any] | None:
    """Refuse ``work`` when it holds runs of another configuration or, with ``new_or_own``, when it is
    neither empty nor a benchmark's work folder; the configuration stored there, if any."""
    path = work / CONFIG
    if path.is_file():
        stored = json.loads(path.read_text())
        found = _conflict(stored, config)
        if found:
            raise UserError(
                f"--work: {work} holds runs made with another configuration ({found}); give the options "
                "those runs had, or a new --work"
            )
        return stored
    if (
        new_or_own
        and work.exists()
        and (not work.is_dir() or any(p.name != LOCK_NAME for p in work.iterdir()))
    ):
        raise UserError(
            f"--work: {work} is not empty; give a new folder for the data and runs (or the --work of an "
            "earlier benchmark, to continue it)"
        )
    return None


@contextlib.contextmanager
def work_folder(work: Path, config: Mapping[str, Any]) -> Iterator[None]:
    """Hold ``work`` for one benchmark: checked, locked, and the configuration recorded (added to the one
    already there) before any run starts."""
    stored = check_work(work, config)
    lock = RunLock({"work": work})
    lock.acquire()
    try:
        tasks = {**(stored or {}).get("tasks", {})}
        for name, entry in config["tasks"].items():
            methods = {**tasks.get(name, {}).get("methods", {}), **entry["methods"]}
            tasks[name] = {"setting": entry["setting"], "methods": methods}
        write_json(work / CONFIG, {"tasks": tasks}, overwrite=True)
        yield
    finally:
        lock.release()


def _complete(final: Path, write: Callable[[Path], Any]) -> None:
    """Run ``write(folder)`` on a scratch folder beside ``final`` and rename it into place when done, so
    a killed benchmark never leaves half of it under the final name; nothing to do if ``final`` exists."""
    if final.exists():
        return
    partial = final.with_name(f".{final.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    write(partial)
    os.replace(partial, final)


def snapshot_bundles(names: Sequence[str], work: Path) -> Path:
    """Copy the tasks' bundles into ``work/bundles`` once: every run, continued ones too, reads the same
    configs even if the checkout changes (the modules are fixed by the fork server's preload)."""
    root = work / "bundles"
    for name in dict.fromkeys(names):
        source = bundle_dir(name)
        _complete(root / name, lambda copy, source=source: shutil.copytree(source, copy, dirs_exist_ok=True))
    return root


def prepare_data(task: Task, seed: int, root: Path) -> None:
    """Write the synthetic data set of ``seed`` under ``root`` once (nothing for a user's data set)."""
    data_dir = task.data_dir(root, seed)
    if data_dir is not None and not data_dir.exists():
        logger.info("writing the %s data of seed %d to %s", task.name, seed, data_dir)
        _complete(data_dir, lambda folder: task.prepare(folder, seed))


def finished_record(run_dir: Path) -> RunRecord | None:
    """The record of the run in ``run_dir`` if it finished, else None."""
    path = run_dir / RESULT
    return RunRecord.from_dict(json.loads(path.read_text())) if path.is_file() else None


def clear_unfinished(run_dir: Path) -> None:
    """Remove what an unfinished run left in its own folder (a benchmark killed during it), so the run
    starts again from scratch."""
    if run_dir.exists():
        logger.warning("%s holds an unfinished run: it is run again from the start", run_dir)
        shutil.rmtree(run_dir)
