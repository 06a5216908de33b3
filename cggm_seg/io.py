"""Safe reading of downloaded data files and atomic writing of outputs.

The public CMU-MOSI and IEMOCAP releases are Python pickles, and ``pickle.load`` runs
whatever code a file names. Every pickle (and every ``.npy`` holding an object array,
which is a pickle inside) is therefore read through :func:`safe_load_pickle` /
:func:`safe_load_npy`: they rebuild numpy arrays, numpy scalars and dtypes and plain
Python containers and nothing else. Object arrays of ``str``/``bytes`` (MMSA's ``id`` and
``raw_text``, MMIN's ``int2name``) are allowed: their elements are pickled natively and
need no global besides the numpy ones.

Outputs are written to a temporary file beside the target, flushed to disk and renamed into
place, so an interrupted run (a kill, a power cut) never leaves a half-written file under the
final name. They get the mode the umask gives any new file, as ``open`` would.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import io
import json
import math
import os
import pickle
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cggm_seg.errors import UserError

# numpy moved its internals from numpy.core to numpy._core in 2.0; pickles name either.
_NUMPY_GLOBALS = {
    ("multiarray", "_reconstruct"),
    ("multiarray", "scalar"),
    ("numeric", "_frombuffer"),  # protocol 5 rebuilds contiguous arrays from a buffer
}
_BUILTINS = {
    "dict",
    "list",
    "tuple",
    "set",
    "frozenset",
    "bytearray",
    "bytes",
    "str",
    "int",
    "float",
    "complex",
    "bool",
}


def _numpy_internal(submodule: str, name: str) -> Any:
    for package in ("numpy._core", "numpy.core"):
        with contextlib.suppress(ImportError, AttributeError):
            return getattr(importlib.import_module(f"{package}.{submodule}"), name)
    raise AttributeError(f"numpy has no {submodule}.{name}")


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Protocol-2 pickles store ``bytes`` as ``_codecs.encode(str, 'latin1')``; nothing else is allowed."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _allowed_global(module: str, name: str) -> Any | None:
    """The object a pickle may name as ``module.name``, or None when it is refused."""
    if module == "numpy" and name in ("ndarray", "dtype"):
        return getattr(np, name)
    for package in ("numpy._core.", "numpy.core."):
        if module.startswith(package) and (module[len(package) :], name) in _NUMPY_GLOBALS:
            return _numpy_internal(module[len(package) :], name)
    if module in ("builtins", "__builtin__") and name in _BUILTINS:
        return getattr(builtins, name)
    if (module, name) == ("collections", "OrderedDict"):
        return OrderedDict
    if (module, name) == ("_codecs", "encode"):
        return _latin1_encode
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, source: Path) -> None:
        # latin1 lets Python-2 era numpy pickles load; it does not affect Python-3 pickles.
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        found = _allowed_global(module, name)
        if found is None:
            raise UserError(
                f"{self._source}: refused to unpickle global '{module}.{name}'; only numpy arrays, "
                "numpy scalars/dtypes and plain containers are allowed (is this the right file?)"
            )
        return found


def _unpickle(stream: io.BufferedIOBase, source: Path) -> Any:
    try:
        return _RestrictedUnpickler(stream, source).load()
    except UserError:
        raise
    except Exception as err:  # any decoding failure means "not a pickle we can read"
        raise UserError(f"{source}: not a readable pickle ({type(err).__name__}: {err})") from err


def _open(path: str | os.PathLike, what: str) -> io.BufferedReader:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found (expected a file)")
    return path.open("rb")


def safe_load_pickle(path: str | os.PathLike) -> Any:
    """Unpickle ``path`` allowing only numpy arrays/scalars/dtypes and builtin containers.

    Anything else (a class, a function such as ``os.system``) raises :class:`UserError`
    naming the file and the refused global before it can run.
    """
    with _open(path, "pickle file") as stream:
        return _unpickle(stream, Path(path))


def safe_load_npy(path: str | os.PathLike, mmap: bool = False) -> np.ndarray:
    """Load a ``.npy`` file; object arrays go through the restricted unpickler, never ``allow_pickle``.

    ``mmap=True`` memory-maps numeric arrays (feature files larger than memory).
    """
    source = Path(path)
    with _open(source, ".npy file") as stream:
        try:
            version = np.lib.format.read_magic(stream)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            _, _, dtype = read_header(stream)
            if dtype.hasobject:  # an object .npy is its header followed by a pickle of the array
                array = _unpickle(stream, source)
                if not isinstance(array, np.ndarray):
                    raise UserError(f"{source}: expected an array, found {type(array).__name__}")
                return array
        except ValueError as err:
            raise UserError(f"{source}: not a readable .npy file ({err})") from err
    try:
        return np.load(source, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as err:
        raise UserError(f"{source}: not a readable .npy file ({err})") from err


def check_new_outputs(paths: Iterable[str | os.PathLike], overwrite: bool = False) -> bool:
    """Refuse to run when an output exists and overwriting was not asked for; returns True.

    Bundles call it first, so a run never clobbers results it did not make.
    """
    if not overwrite:
        for path in paths:
            if Path(path).exists():
                raise UserError(
                    f"{path} already exists; pass --force (command line) or "
                    "--overwrite true (bundles) to replace it"
                )
    return True


def _new_file_beside(target: Path) -> Path:
    """A new empty hidden file beside ``target`` with its suffix, so libraries that look at it (``np.save``)
    behave; created with the umask's mode, as ``open`` would (``tempfile.mkstemp`` gives 0600)."""
    while True:
        path = target.with_name(f".{target.stem}.{secrets.token_hex(4)}{target.suffix}")
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return path
        except FileExistsError:
            continue


def _sync(path: Path) -> None:
    """Flush ``path`` (a file, or a folder's entries) to disk: a rename is as durable as what it names.

    A file that cannot be flushed is a failed write (a full disk often says so only here); a folder
    that cannot be is not: some file systems cannot fsync a folder.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    except OSError:
        if not path.is_dir():
            raise


def os_reason(error: BaseException) -> str | None:
    """The OS's words for why ``error`` happened (``No space left on device``), or None when no ``OSError``
    with an errno is behind it: torch and other libraries wrap a failed write in errors of their own."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno:
            return error.strerror or os.strerror(error.errno)
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is flushed to disk and renamed onto ``path``."""
    target = Path(path)
    check_new_outputs([target], overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = _new_file_beside(target)
    try:
        yield temporary
        _sync(temporary)
        os.replace(temporary, target)
        _sync(target.parent)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, writer: Callable[[Path], Any], overwrite: bool = False) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``path``."""
    with atomic_path(path, overwrite) as temporary:
        writer(temporary)
    return Path(path)


def _json_safe(data: Any) -> Any:
    """JSON has no NaN/inf: such floats become ``null``; numpy/torch scalars become Python numbers."""
    if isinstance(data, dict):
        return {str(key): _json_safe(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_json_safe(value) for value in data]
    if hasattr(data, "item") and callable(data.item) and getattr(data, "ndim", 1) == 0:
        data = data.item()
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data


def write_json(path: str | os.PathLike, data: Any, overwrite: bool = False) -> Path:
    """Write ``data`` as indented JSON (non-finite floats as ``null``), atomically; never replaces a file
    unless ``overwrite``."""
    text = json.dumps(_json_safe(data), indent=2, sort_keys=True, allow_nan=False) + "\n"
    return write_atomic(path, lambda tmp: tmp.write_text(text), overwrite)
