"""What a bundle run checks before it builds anything that writes, and the booleans it reads.

A setting found wrong after the TensorBoard writer and the checkpoint savers have started leaves
files that look like a run, and one found wrong hours in costs the hours: the bundles call these
checks first in ``initialize``, and each failure is one line (``UserError``) naming the setting or
the file.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cggm_seg.errors import UserError

logger = logging.getLogger(__name__)

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def flag(value: Any, name: str) -> bool:
    """``value`` of the boolean config id ``name`` as a bool.

    ``python -m monai.bundle run --amp false`` hands the bundle the string ``'false'`` (``fire`` reads
    only Python literals, so ``False`` and ``0`` arrive as a bool and an int), and a non-empty string is
    true. Every boolean id therefore goes through here: what users write parses, anything else is refused.
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise UserError(f"{name}: {value!r} is not a boolean; write true or false (yes/no, on/off, 1/0 work too)")


def check_writable(folder: str | Path, setting: str) -> None:
    """Refuse a ``folder`` that cannot be created or written, before any work is done for it.

    The nearest existing folder on the way is tried with a nameless temporary file, which also catches
    read-only mounts, where permission bits (and ``os.access`` as root) say nothing.
    """
    existing = Path(folder).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{setting}: cannot create {folder}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise UserError(f"{setting}: cannot write in {existing} ({err.strerror or err})") from None


#: how a DataLoader worker's error reaches the main process: its traceback as text, whose last
#: ``cggm_seg.errors.UserError: <message>`` line is the user's mistake
_WORKER_USER_ERROR = re.compile(
    r"Original Traceback.*^cggm_seg\.errors\.UserError: (.*?)$", re.DOTALL | re.MULTILINE
)


def user_error_in(error: BaseException | None) -> UserError | None:
    """The ``UserError`` behind ``error``: itself, a cause MONAI wrapped it in, or one a DataLoader worker
    raised (re-raised in this process as text), if there is one."""
    seen = set()
    while error is not None and id(error) not in seen:
        worker = _WORKER_USER_ERROR.search(str(error))
        if worker:
            return UserError(worker.group(1))
        if isinstance(error, UserError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _one_line_user_errors(kind: type, error: BaseException, trace: Any, fallback=sys.excepthook) -> None:
    """``sys.excepthook`` for a bundle run: a user's mistake is its one line, anything else a traceback.

    ``python -m monai.bundle run`` lets every config error escape wrapped in MONAI's "Failed to
    evaluate ..." traceback, burying the line that names the setting or file at the top. The progress
    bars the error interrupted are closed first: Ignite's ``ProgressBar`` closes its bar only at the end
    of an epoch, and tqdm would draw it again at exit, after the line.
    """
    mistake = user_error_in(error)
    for bar in list(tqdm._instances):
        bar.close()
    if mistake is None:
        fallback(kind, error, trace)
    else:
        print(f"error: {mistake}", file=sys.stderr)


def _without_user_error_tracebacks(
    make_record: Callable[..., logging.LogRecord],
) -> Callable[..., logging.LogRecord]:
    """A log record factory whose records of a user's mistake keep their message and lose the traceback.

    MONAI's ``StatsHandler`` logs the exception that ends an engine with its traceback, once for each
    engine it passes through (evaluator, then trainer), on a logger of its own made when the trainer is
    built: a full disk at a validation's ``model.pt`` would print two pages above the one line.
    """

    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        if record.exc_info and user_error_in(record.exc_info[1]) is not None:
            record.exc_info = None
        return record

    make.user_errors_in_one_line = True
    return make


def check_run(flags: Mapping[str, bool], folders: Mapping[str, str | Path]) -> bool:
    """First step of every bundle run: ``flags`` (the bundle's booleans, parsed by :func:`flag` as the
    bundle resolves them) and the output ``folders`` (config id -> folder) are settled before anything
    is built, and from here a user's mistake that ends the run is reported as its one line (and logged
    without its traceback). Logs the booleans as read; returns True."""
    sys.excepthook = _one_line_user_errors
    if not getattr(logging.getLogRecordFactory(), "user_errors_in_one_line", False):
        logging.setLogRecordFactory(_without_user_error_tracebacks(logging.getLogRecordFactory()))
    logger.info("settings: %s", ", ".join(f"{name}={value}" for name, value in flags.items()))
    for setting, folder in folders.items():
        check_writable(folder, setting)
    return True


#: numeric bundle settings -> (what they must be, test); a setting no bundle has is never passed
_RANGES: dict[str, tuple[str, Callable[[float], bool]]] = {
    "positive integer": ("an integer >= 1", lambda v: float(v).is_integer() and v >= 1),
    "count": ("an integer >= 0", lambda v: float(v).is_integer() and v >= 0),
    "positive": ("a number > 0", lambda v: v > 0),
    "non-negative": ("a number >= 0", lambda v: v >= 0),
    "fraction": ("a number in [0, 1]", lambda v: 0 <= v <= 1),
    "below one": ("a number in [0, 1)", lambda v: 0 <= v < 1),
}
SETTING_RANGES = {
    "epochs": "positive integer",
    "val_interval": "positive integer",
    "batch_size": "positive integer",
    "sw_batch_size": "positive integer",
    "num_workers": "count",
    "warmup_epochs": "count",
    "learning_rate": "positive",
    "head_learning_rate": "positive",
    "grad_clip": "positive",
    "final_learning_rate": "non-negative",
    "weight_decay": "non-negative",
    "cache_rate": "fraction",
    "momentum": "below one",
    "sw_overlap": "below one",
}


def check_settings(**settings: Any) -> bool:
    """Every numeric setting is a finite number in its range, and ``roi_size`` lists edges >= 1, each
    refused in one line naming it, before anything is written; returns True.

    Without this ``--epochs -1`` or ``--batch_size 0`` ends in a page of traceback, ``--learning_rate
    nan`` reaches the optimizer as the string ``'nan'``, and MONAI reads a 0 in ``roi_size`` as "the
    whole volume", so a typo would silently train on whole volumes.
    """
    for name, value in settings.items():
        if name == "roi_size":
            if not (
                isinstance(value, (list, tuple))
                and value
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
            ):
                raise UserError(
                    f"roi_size: {value!r} must list the crop's edges in voxels, each >= 1, e.g. "
                    "[128, 128, 128]"
                )
            continue
        expected, holds = _RANGES[SETTING_RANGES[name]]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (number and math.isfinite(value) and holds(value)):
            raise UserError(f"{name}: {value!r} must be {expected}")
    return True


def built_before_writing(*components: Any) -> bool:
    """True, once its arguments are built, which checks them: a bundle passes the components whose
    constructors refuse a user's setting (the balancing handler: its method, ``cggm#rho``, ...) so that
    a refusal comes before the first file is written, not after the TensorBoard writer made its event file."""
    return True


def _entry_files(entry: Mapping[str, Any]) -> list[str]:
    files = []
    for key in ("image", "label"):
        value = entry.get(key)
        files.extend(value if isinstance(value, (list, tuple)) else [value] if value else [])
    return [str(f) for f in files]


def check_training_data(split: Sequence[Sequence[Mapping[str, Any]]], batch_size: int) -> bool:
    """Every file the (training, validation) ``split`` names exists, and a batch fits the training cases.

    Without this a missing file fails when the loader reaches it, possibly hours in, and a batch larger
    than the training set trains nothing at all: the loader drops the incomplete batch (``drop_last``).
    """
    train, validation = split
    missing = [
        (entry, path)
        for entry in [*train, *validation]
        for path in _entry_files(entry)
        if not Path(path).is_file()
    ]
    if missing:
        (entry, path), more = missing[0], len(missing) - 1
        raise UserError(
            f"datalist: case {entry.get('case_id', '?')}: {path} does not exist"
            + (f" ({more} more listed file(s) missing)" if more else "")
        )
    if batch_size > len(train):
        raise UserError(
            f"batch_size: {batch_size} is more than the {len(train)} training case(s); "
            "incomplete batches are dropped, so nothing would train (lower --batch_size)"
        )
    logger.info(
        "data: %d training and %d validation cases, every listed file present", len(train), len(validation)
    )
    return True
