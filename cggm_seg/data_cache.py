"""Where the BraTS bundle's prepared cases live between epochs: the ``data_cache`` setting.

Reading, reorienting, normalising and cropping four 240x240x155 sequences costs more than a second of
one core per case, every epoch, when nothing is cached; a float32 copy of a case in memory is about
240 MiB. The bundle therefore splits its transforms in two (``prepare``: deterministic, ending in the
brain's bounding box as float16 images and uint8 regions; ``augment``: random crop first, then the
rest on the crop) and keeps the prepared cases

* ``none``: nowhere (prepared again each time a case is drawn);
* ``memory``: in a MONAI ``CacheDataset`` (about a sixth of a float32 copy);
* ``disk``: in :class:`PreparedCaseDataset`, files under ``cache_dir`` that later runs share.

All three give the network the same tensors: only where ``prepare``'s result is kept differs.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.data.utils import pickle_hashing
from monai.transforms import Compose
from monai.utils import convert_to_tensor
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset
from tqdm import tqdm

from cggm_seg.errors import UserError
from cggm_seg.io import atomic_path

DATA_CACHES = ("none", "memory", "disk")
#: environment variable that moves the default cache folder (e.g. to fast local disk in a container)
CACHE_ENV = "CGGM_SEG_CACHE_DIR"


def default_cache_dir() -> str:
    """``$CGGM_SEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/cggm-seg``, else ``~/.cache/cggm-seg``."""
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "cggm-seg")


def case_files_hash(item: dict[str, Any]) -> bytes:
    """The cache key of one datalist entry: its files' paths, sizes and modification times.

    A case whose file is replaced in place (same path, new contents) gets a new key, so the cache never
    serves what the datalist no longer names.
    """

    def describe(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [describe(v) for v in value]
        if isinstance(value, (str, os.PathLike)) and os.path.isfile(value):
            stat = os.stat(value)
            return [os.path.abspath(value), stat.st_size, stat.st_mtime_ns]
        return value

    text = json.dumps({str(k): describe(v) for k, v in sorted(item.items())}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest().encode()


def _check_writable(folder: Path) -> None:
    """A cache folder that cannot be written is one line naming it, not a loader worker's traceback."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    except OSError as err:
        raise UserError(
            f"cache_dir {folder}: cannot write there ({err.strerror or err}); "
            "set --cache_dir to a writable folder, or --data_cache memory"
        ) from None


class PreparedCaseDataset(PersistentDataset):
    """MONAI's ``PersistentDataset`` with the three things a full BraTS set on a GPU machine needs.

    * The key of a case includes its files' sizes and modification times (:func:`case_files_hash`) and
      the deterministic transforms (MONAI's ``hash_transform``), so an edited pipeline or a replaced
      file is prepared again, never served stale.
    * A case file appears whole or not at all: it is written beside its final name and renamed
      (``PersistentDataset`` writes in the system's temporary folder and moves the file, a copy when
      that is another file system, so a kill can leave a truncated file that fails every later load).
    * Cases are read memory-mapped: the random crop that follows touches only the pages it needs.
    """

    def __init__(self, data: Sequence, transform: Callable, cache_dir: str | os.PathLike) -> None:
        _check_writable(Path(cache_dir))
        super().__init__(data, transform, cache_dir, hash_func=case_files_hash, hash_transform=pickle_hashing)

    def cache_file(self, item: dict[str, Any]) -> Path:
        return Path(self.cache_dir) / f"{self.hash_func(item).decode()}{self.transform_hash}.pt"

    def prepare(self, index: int) -> Path:
        """The cache file of case ``index``, prepared and written first if it is not there yet."""
        self._cachecheck(self.data[index])
        return self.cache_file(self.data[index])

    def _cachecheck(self, item_transformed: dict[str, Any]) -> Any:
        path = self.cache_file(item_transformed)
        if path.is_file():
            return torch.load(path, mmap=True, weights_only=True)
        # plain tensors (no MetaTensor, no numpy): what ``weights_only`` loading reads back, on every draw
        prepared = convert_to_tensor(self._pre_transform(dict(item_transformed)), track_meta=False)
        with atomic_path(path, overwrite=True) as temporary:
            torch.save(prepared, temporary)
        return prepared


class _Preparation(TorchDataset):
    """Prepares one case per item and yields its file's size, so a loader's workers fill the cache."""

    def __init__(self, cache: PreparedCaseDataset) -> None:
        self.cache = cache

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int) -> int:
        return self.cache.prepare(index).stat().st_size


def fill_cache(cache: PreparedCaseDataset, workers: int) -> int:
    """Prepare every case of ``cache`` not prepared yet, in ``workers`` processes, with a progress bar;
    the bytes its cases take. A killed fill leaves only whole files: the next one goes on from there."""
    loader = DataLoader(_Preparation(cache), batch_size=None, num_workers=workers)
    return sum(tqdm(loader, total=len(cache), desc="preparing cases", unit="case"))


def case_dataset(
    data_cache: str,
    data: Sequence,
    prepare: Callable,
    augment: Callable | None,
    cache_dir: str | os.PathLike,
    cache_rate: float = 1.0,
    num_workers: int = 0,
) -> Dataset:
    """The dataset ``data_cache`` names: ``prepare`` kept there, then ``augment`` on every draw."""
    if data_cache == "none":
        prepared = Dataset(data, prepare)
    elif data_cache == "memory":
        prepared = CacheDataset(data, prepare, cache_rate=cache_rate, num_workers=num_workers, progress=False)
    elif data_cache == "disk":
        if not cache_dir:
            raise UserError("data_cache 'disk' needs a cache_dir: set --cache_dir DIR")
        prepared = PreparedCaseDataset(data, prepare, cache_dir)
    else:
        raise UserError(f"data_cache must be one of {', '.join(DATA_CACHES)}, not {data_cache!r}")
    return Dataset(prepared, augment or Compose([]))
