"""What a bundle run checks before it builds anything that writes, and the booleans it reads.

A setting found wrong after the TensorBoard writer and the checkpoint savers have started leaves
files that look like a run, and one found wrong hours in costs the hours: the bundles call these
checks first in ``initialize``, and each failure is one line (``UserError``) naming the setting or
the file.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

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


def user_error_in(error: BaseException | None) -> UserError | None:
    """The ``UserError`` behind ``error`` (itself or a cause MONAI wrapped it in), if there is one."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, UserError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _one_line_user_errors(kind: type, error: BaseException, trace: Any, fallback=sys.excepthook) -> None:
    """``sys.excepthook`` for a bundle run: a user's mistake is its one line, anything else a traceback.

    ``python -m monai.bundle run`` lets every config error escape wrapped in MONAI's "Failed to
    evaluate ..." traceback, burying the line that names the setting or file at the top.
    """
    mistake = user_error_in(error)
    if mistake is None:
        fallback(kind, error, trace)
    else:
        print(f"error: {mistake}", file=sys.stderr)


def check_run(flags: Mapping[str, bool], folders: Mapping[str, str | Path]) -> bool:
    """First step of every bundle run: ``flags`` (the bundle's booleans, parsed by :func:`flag` as the
    bundle resolves them) and the output ``folders`` (config id -> folder) are settled before anything
    is built, and from here a user's mistake that ends the run is reported as its one line. Logs the
    booleans as read; returns True."""
    sys.excepthook = _one_line_user_errors
    logger.info("settings: %s", ", ".join(f"{name}={value}" for name, value in flags.items()))
    for setting, folder in folders.items():
        check_writable(folder, setting)
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
    missing = [(entry, path) for entry in [*train, *validation] for path in _entry_files(entry)
               if not Path(path).is_file()]
    if missing:
        (entry, path), more = missing[0], len(missing) - 1
        raise UserError(f"datalist: case {entry.get('case_id', '?')}: {path} does not exist"
                        + (f" ({more} more listed file(s) missing)" if more else ""))
    if batch_size > len(train):
        raise UserError(f"batch_size: {batch_size} is more than the {len(train)} training case(s); "
                        "incomplete batches are dropped, so nothing would train (lower --batch_size)")
    logger.info("data: %d training and %d validation cases, every listed file present", len(train),
                len(validation))
    return True
