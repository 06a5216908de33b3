"""What a benchmark will run, said before anything starts, and how far it has got while it runs.

``--plan`` lists every run with its state in the work folder and each task's epochs and training
iterations as the bundle's own DataLoader makes them: the bundle is parsed with the runs' overrides, its
training cases counted and cut into batches of its ``batch_size``, the last partial batch dropped where
its loader drops it. While the benchmark runs, each run finished (or found finished) logs the runs done
and left and the time left, estimated from the finished runs' mean wall time.
"""

from __future__ import annotations

import logging
import math
import statistics
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cggm_seg.benchmark.run import bundle_parser
from cggm_seg.benchmark.tasks import Task
from cggm_seg.benchmark.work import finished_record
from cggm_seg.preflight import user_error_in

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Schedule:
    """A task's training length, read from its bundle with the runs' overrides."""

    epochs: int
    cases: int
    batch_size: int
    drop_last: bool

    @property
    def per_epoch(self) -> int:
        """Iterations an epoch, as the bundle's DataLoader makes them."""
        return self.cases // self.batch_size if self.drop_last else math.ceil(self.cases / self.batch_size)

    def describe(self, name: str) -> str:
        dropped = ", the last partial batch dropped" if self.drop_last else ""
        return (
            f"{name}: {_count(self.epochs, 'epoch')} of {_count(self.per_epoch, 'iteration')} ({self.cases} "
            f"training cases, batch {self.batch_size}{dropped}) = {self.epochs * self.per_epoch} training "
            "iterations a run"
        )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def schedule(task: Task, data_dir: Path | None) -> Schedule:
    """The training length of the task's runs (its data in ``data_dir``, or the user's); reading the
    training cases checks the data as the runs will read it, a mistake in one line."""
    parser = bundle_parser([task.train_config], task.train_overrides(data_dir, Path("plan")))
    loader = "train#dataloader#"
    try:
        drop_last = (
            parser.get_parsed_content(loader + "drop_last") if loader + "drop_last" in parser else False
        )
        return Schedule(
            epochs=int(parser.get_parsed_content("epochs")),
            cases=len(parser.get_parsed_content(task.train_data_id)),
            batch_size=int(parser.get_parsed_content(loader + "batch_size")),
            drop_last=bool(drop_last),
        )
    except Exception as err:  # MONAI wraps what a config expression raises
        mistake = user_error_in(err)
        if mistake is None:
            raise
        raise mistake from None


def duration(seconds: float) -> str:
    minutes = max(1, round(seconds / 60))
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def time_left(seconds: Sequence[float], left: int, jobs: int) -> str | None:
    """How long ``left`` more runs take, ``jobs`` at a time, at the finished runs' mean wall time."""
    if not seconds or not left:
        return None
    return duration(statistics.fmean(seconds) * left / min(jobs, left))


def plan_lines(
    specs: Sequence[dict[str, Any]], schedules: Mapping[str, Schedule], work: Path, jobs: int
) -> list[str]:
    """Each task's schedule, then every run in the order it starts with its state in ``work``."""
    lines = [schedules[name].describe(name) for name in schedules]
    finished = []
    for spec in specs:
        run_dir = Path(spec["run_dir"])
        record = finished_record(run_dir)
        if record:
            finished.append(record.total_s)
        state = "finished" if record else "unfinished, to run again" if run_dir.exists() else "to run"
        cost = spec.get("cost_epochs")
        epochs = cost or schedules[spec["task"]].epochs
        lines.append(
            f"  {run_dir.relative_to(work)}: {spec['variant']}, seed {spec['seed']}"
            f"{', cost only' if cost else ''}, {_count(epochs, 'epoch')} = "
            f"{epochs * schedules[spec['task']].per_epoch} training iterations: {state}"
        )
    left = len(specs) - len(finished)
    eta = time_left(finished, left, jobs)
    estimate = f"; about {eta} left, {jobs} at a time (the finished runs' mean wall time)" if eta else ""
    return [*lines, f"{len(specs)} runs: {len(finished)} finished, {left} to run{estimate}"]


class Progress:
    """Logs each run as it finishes or is found finished: runs done and left, and the time left."""

    def __init__(self, total: int, jobs: int) -> None:
        self.total, self.jobs = total, jobs
        self.seconds: list[float] = []
        self._lock = threading.Lock()

    def log(self, run: str, outcome: str, seconds: float) -> None:
        with self._lock:
            self.seconds.append(seconds)
            done = len(self.seconds)
            eta = time_left(self.seconds, self.total - done, self.jobs)
            logger.info(
                "[%d/%d] %s: %s (%.0f s); %d left%s",
                done,
                self.total,
                run,
                outcome,
                seconds,
                self.total - done,
                f", about {eta} to go" if eta else "",
            )
