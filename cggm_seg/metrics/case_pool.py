"""Scoring's process pool: a function run over cases in worker processes, one torch thread each, with
the results in case order whatever the number of workers."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import torch
from tqdm import tqdm

from cggm_seg.errors import UserError


def default_workers() -> int:
    """CPUs this process may run on (the affinity mask, which containers and ``taskset`` narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run the block on one torch thread, then restore the count.

    Scoring runs only small torch ops (MONAI's Dice and HD95 on cropped boxes), where intra-op
    threads cost more than they give, most of all when several workers share the cores.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _limit_threads() -> None:
    """Worker initializer: one torch thread per process, so N workers do not fight over N x N threads."""
    torch.set_num_threads(1)


def _pool_context() -> multiprocessing.context.BaseContext | None:
    """``fork`` where the platform has it: workers start at once with the parent's imports, where
    ``spawn`` would re-import torch and MONAI in each (about 6 s). The parent has run no torch work
    when the CLI forks; the workers use one thread each (``_limit_threads``)."""
    return multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None


def map_cases(function: Callable[..., dict], jobs: Sequence[tuple], workers: int = 1) -> list[dict]:
    """``function(*job)`` for every job, in job order, on ``workers`` processes.

    Each job's first item is its case id. The first failing job in case order raises its own error
    (a ``UserError`` naming the case), as a serial run would; pending jobs are cancelled.
    """
    workers = max(1, min(int(workers), len(jobs)))
    progress = {"desc": "scoring", "unit": "case", "disable": None, "total": len(jobs)}
    if workers == 1:
        with _one_torch_thread():
            return [function(*job) for job in tqdm(jobs, **progress)]
    executor = ProcessPoolExecutor(workers, mp_context=_pool_context(), initializer=_limit_threads)
    try:
        futures = [executor.submit(function, *job) for job in jobs]
        rows = []
        for job, future in tqdm(zip(jobs, futures, strict=True), **progress):
            try:
                rows.append(future.result())
            except BrokenProcessPool:
                raise UserError(
                    f"case {job[0]}: a scoring process died (out of memory?); try fewer --workers"
                ) from None
        return rows
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
