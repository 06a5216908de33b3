"""One training at a time in an output folder: a lock file naming the run that holds it.

Two trainings started into one ``output_dir`` (the same command twice, a second terminal) write the
same checkpoints and ``model.pt``, and resume from each other's; with other seeds the folder ends up
holding the checkpoints of one run and the model of the other. A training bundle takes this lock
before its first write; a second run into the folder is refused in one line, having written nothing.
The lock goes when the trainer completes, and at exit however the run ends (``atexit``: an exception,
a ``UserError``); one left by a process that was killed (``SIGKILL``, out of memory, a power cut) names
a process that no longer runs on this host and is taken over with a warning. Under DDP rank 0 takes
it and the other ranks learn the outcome from it. Evaluation and inference take no lock: they read
the trained weights and write only their own new files, and may run while a training goes on.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path

import torch.distributed as dist
from ignite.engine import Engine, Events

from cggm_seg.errors import UserError

logger = logging.getLogger(__name__)

LOCK_NAME = ".cggm-seg.lock"
#: an unreadable lock older than this was left by a process killed between creating and writing it
_UNWRITTEN_GRACE_S = 10.0
#: the process a lock names started at most this long after the lock (clock granularity): else a reused pid
_START_SLACK_S = 2.0


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), where ``/proc`` says; None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, StopIteration, IndexError, ValueError):
        return None
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def _running(pid: int, since: float) -> bool:
    """Whether the process that took a lock at ``since`` still runs as ``pid`` on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    started = _process_start(pid)
    return started is None or started <= since + _START_SLACK_S


class RunLock:
    """The lock on each distinct folder of ``folders`` (config id -> folder) for one training run."""

    def __init__(self, folders: Mapping[str, str | Path]) -> None:
        self.folders: dict[Path, str] = {}
        for setting, folder in folders.items():
            self.folders.setdefault(Path(folder).absolute(), setting)
        self._held: dict[Path, bytes] = {}  # lock file -> what this run wrote in it

    def acquire(self) -> bool:
        """Take the lock on every folder, or raise one ``UserError`` line and leave them as they were.

        Under DDP only rank 0 takes it; every rank waits for rank 0's outcome and fails with it. Returns
        True (a bundle's ``initialize`` step).
        """
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        refusal = None
        if not distributed or dist.get_rank() == 0:
            try:
                for folder, setting in self.folders.items():
                    self._take(folder, setting)
            except UserError as err:
                self.release()
                refusal = str(err)
        if distributed:
            outcome = [refusal]
            dist.broadcast_object_list(outcome, src=0)
            refusal = outcome[0]
        if refusal:
            raise UserError(refusal)
        if self._held:
            atexit.register(self.release)
        return True

    def attach(self, trainer: Engine) -> None:
        """Release the lock once ``trainer`` completes, after the handlers attached earlier (final save)."""
        trainer.add_event_handler(Events.COMPLETED, lambda _: self.release())

    def release(self) -> None:
        """Remove the lock files this run still holds (a file another run has since written stays)."""
        for path, content in list(self._held.items()):
            with contextlib.suppress(OSError):
                if path.read_bytes() == content:
                    path.unlink()
            del self._held[path]

    def _take(self, folder: Path, setting: str) -> None:
        path = folder / LOCK_NAME
        folder.mkdir(parents=True, exist_ok=True)
        content = json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "time": time.time(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            }
        ).encode()
        while True:
            try:
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                self._take_over_or_refuse(path, folder, setting)
                continue
            try:
                os.write(descriptor, content)
            finally:
                os.close(descriptor)
            self._held[path] = content
            return

    def _take_over_or_refuse(self, path: Path, folder: Path, setting: str) -> None:
        """Remove the lock at ``path`` when its run is gone (or is this process); else refuse in one line."""
        try:
            found = path.read_bytes()
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:  # released meanwhile
            return
        try:
            holder = json.loads(found)
            pid, host, since, started = holder["pid"], holder["host"], holder["time"], holder["started"]
        except (ValueError, KeyError, TypeError):
            if age < _UNWRITTEN_GRACE_S:  # being written by a run starting right now
                raise UserError(
                    f"{setting}: {folder} is being locked by another run starting now; wait for "
                    f"it or choose another --{setting}"
                ) from None
            logger.warning("%s: taking over %s, an unreadable lock left by a killed run", setting, path)
        else:
            ours = pid == os.getpid() and host == socket.gethostname()
            if not ours and (host != socket.gethostname() or _running(pid, since)):
                raise UserError(
                    f"{setting}: {folder} is in use by process {pid} on {host} (started {started}); wait for "
                    f"it or choose another --{setting} (remove {path} if that run is gone)"
                )
            if not ours:
                logger.warning(
                    "%s: taking over %s, left by process %d on %s (started %s), which is no longer running",
                    setting,
                    path,
                    pid,
                    host,
                    started,
                )
        with contextlib.suppress(FileNotFoundError):
            if path.read_bytes() == found:  # not replaced by a run that took it over meanwhile
                path.unlink()
