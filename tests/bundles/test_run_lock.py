"""One training at a time in an output folder (cggm_seg.run_lock): a second run is refused in one line
and writes nothing, a lock left by a dead run is taken over with a warning, and the lock goes when a
run ends, whether it completes or stops on a user's mistake."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ignite.engine import Engine
from test_bundle_brats import _nan_case
from tiny_brats import CONFIGS, TINY, prepared_brats

from cggm_seg.errors import UserError
from cggm_seg.run_lock import LOCK_NAME, RunLock


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return prepared_brats(tmp_path_factory.mktemp("brats"))


def _bundle_run(
    dataset: Path, out: Path, configs: tuple[str, ...] = ("train.json",), torchrun: bool = False, **settings
) -> subprocess.CompletedProcess:
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] if torchrun else []
    files = json.dumps([str(CONFIGS / c) for c in configs])
    args = [f"--{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in {**TINY, **settings}.items()]
    command = [
        sys.executable,
        *launcher,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        files,
        "--logging_file",
        str(CONFIGS / "logging.conf"),
        f"--dataset_dir={dataset}",
        f"--output_dir={out}",
        *args,
    ]
    return subprocess.run(
        command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300
    )


def _files(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in folder.rglob("*")
        if p.is_file()
    }


def _lock_of(pid: int, since: float, host: str | None = None) -> str:
    return json.dumps(
        {
            "pid": pid,
            "host": host or socket.gethostname(),
            "time": since,
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)),
        }
    )


def _in_use(out: Path, lock: bytes) -> str:
    """The refusal of a run into ``out``, held by the run that wrote ``lock``."""
    holder = json.loads(lock)
    return (
        f"output_dir: {out} is in use by process {holder['pid']} on {holder['host']} (started "
        f"{holder['started']}); wait for it or choose another --output_dir (remove {out / LOCK_NAME} if "
        "that run is gone)"
    )


def _ended_process() -> int:
    """The pid of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# -------------------------------------------------------------------------------- the lock itself
def test_a_held_folder_is_refused_naming_holder_and_lock(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_NAME).write_text(_lock_of(holder.pid, time.time() + 5))
        before = _files(out)
        with pytest.raises(UserError) as info:
            RunLock({"output_dir": out, "ckpt_dir": out}).acquire()
        assert str(info.value) == _in_use(out, before[LOCK_NAME][1])
        assert _files(out) == before
    finally:
        holder.kill()
        holder.wait()
    (out / LOCK_NAME).write_text(_lock_of(1234, time.time() - 3600, host="elsewhere"))  # can't tell: in use
    with pytest.raises(UserError) as info:
        RunLock({"output_dir": out}).acquire()
    assert str(info.value) == _in_use(out, (out / LOCK_NAME).read_bytes())


@pytest.mark.parametrize("left", ["ended process", "reused pid", "unwritten"])
def test_a_lock_left_by_a_dead_run_is_taken_over_with_a_warning(tmp_path, caplog, left):
    out = tmp_path / "run"
    out.mkdir()
    hour_ago = time.time() - 3600
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = {
            "ended process": _lock_of(_ended_process(), hour_ago),
            "reused pid": _lock_of(sleeper.pid, hour_ago),  # running, but started after the lock
            "unwritten": "",
        }[left]
        (out / LOCK_NAME).write_text(stale)
        os.utime(out / LOCK_NAME, (hour_ago, hour_ago))
        lock = RunLock({"output_dir": out})
        with caplog.at_level(logging.WARNING, logger="cggm_seg.run_lock"):
            lock.acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    [warning] = [r.getMessage() for r in caplog.records if r.name == "cggm_seg.run_lock"]
    assert warning.startswith(f"output_dir: taking over {out / LOCK_NAME}, ")
    if left != "unwritten":
        assert f"left by process {json.loads(stale)['pid']} on {socket.gethostname()}" in warning
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (out / LOCK_NAME).exists()


def test_a_lock_being_written_is_not_taken(tmp_path):
    (tmp_path / LOCK_NAME).write_text("")  # created this instant by a run that is about to write it
    with pytest.raises(UserError, match=f"^output_dir: {re.escape(str(tmp_path))} is being locked by"):
        RunLock({"output_dir": tmp_path}).acquire()
    assert (tmp_path / LOCK_NAME).read_text() == ""


def test_the_lock_goes_when_the_trainer_completes_and_leaves_a_newer_holders_lock(tmp_path):
    lock = RunLock({"output_dir": tmp_path / "new" / "run"})
    lock.acquire()
    assert (tmp_path / "new" / "run" / LOCK_NAME).is_file()
    trainer = Engine(lambda engine, batch: None)
    lock.attach(trainer)
    trainer.run([0], max_epochs=1)
    assert not (tmp_path / "new" / "run" / LOCK_NAME).exists()

    lock.acquire()  # again in this process: a lock this process wrote is its own
    RunLock({"output_dir": tmp_path / "new" / "run"}).acquire()
    lock.release()  # the file is the second lock's now
    assert (tmp_path / "new" / "run" / LOCK_NAME).is_file()


def test_the_lock_goes_at_exit_after_a_user_error(tmp_path):
    script = (
        "import sys; from cggm_seg.preflight import check_run; from cggm_seg.errors import UserError\n"
        "from cggm_seg.run_lock import RunLock\n"
        f"check_run({{}}, {{}}); RunLock({{'output_dir': {str(tmp_path)!r}}}).acquire()\n"
        "raise UserError('setting: wrong')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.splitlines() == ["error: setting: wrong"]
    assert not (tmp_path / LOCK_NAME).exists()


# --------------------------------------------------------------------------------- bundle runs
@pytest.mark.slow
def test_a_second_training_into_a_busy_folder_is_one_line_and_writes_nothing(dataset, tmp_path):
    out = tmp_path / "run"
    finished = _bundle_run(dataset, out, epochs=1)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert not (out / LOCK_NAME).exists()  # released by the run that completed

    running = RunLock({"output_dir": out})  # a training in progress, as far as the next run can tell
    running.acquire()
    before = _files(out)
    for torchrun in (False, True):
        refused = _bundle_run(dataset, out, torchrun=torchrun, epochs=2)
        assert refused.returncode != 0
        errors = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
        expected = f"error: {_in_use(out, before[LOCK_NAME][1])}"
        if torchrun:  # each rank prints the line; two processes writing one pipe may interleave them
            assert expected in errors and all("is in use by process" in line for line in errors), errors
        else:
            assert errors == [expected], f"{errors!r} != [{expected!r}]"
            assert refused.stderr.splitlines()[-1] == expected
            assert "Traceback" not in refused.stderr
        assert _files(out) == before
    running.release()


@pytest.mark.slow
def test_a_training_stopped_by_a_user_error_leaves_no_lock(dataset, tmp_path):
    out = tmp_path / "run"
    stopped = _bundle_run(_nan_case(dataset, tmp_path), out, epochs=2)
    assert stopped.returncode == 1
    assert stopped.stderr.splitlines()[-1].startswith("error: training: the loss is nan at epoch 1")
    assert "Traceback" not in stopped.stderr + stopped.stdout  # MONAI's StatsHandler logs it in one line
    assert out.is_dir() and not (out / LOCK_NAME).exists()
