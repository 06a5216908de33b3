"""Hugging Face ``transformers`` objects from local model folders, with one-line errors.

``transformers`` is the optional ``food101`` extra, so it is imported only when a folder is
loaded: the package, and every bundle setting that does not need it, works without it.
Folders are what ``save_pretrained`` writes; ``local_files_only=True`` means nothing is
ever downloaded at run time.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any

from cggm_seg.errors import UserError


def transformers_module(setting: str) -> ModuleType:
    """``transformers``, or a one-line error saying that ``setting`` needs the extra."""
    try:
        import transformers
    except ImportError as err:
        raise UserError(f"{setting} needs transformers: pip install 'cggm-seg[food101]'") from err
    return transformers


def from_local(class_name: str, folder: str | os.PathLike | None, setting: str, **kwargs: Any) -> Any:
    """``transformers.<class_name>.from_pretrained(folder, local_files_only=True, **kwargs)``.

    Errors name ``setting`` (the config id or option that gave ``folder``) and the folder.
    """
    if not folder or not Path(folder).is_dir():
        raise UserError(f"{setting} {folder}: not a folder (expected one written by save_pretrained)")
    loader = getattr(transformers_module(setting), class_name)
    try:
        return loader.from_pretrained(str(folder), local_files_only=True, **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(
            f"{setting} {folder}: cannot load it from the local folder (a {class_name}: {err})"
        ) from err
