"""Where the bundles are, and the small functions their configs call: datalist folds, resume
checkpoints, output names, command-line overrides.

Kept out of the JSON so each piece has a docstring, a test and a clear error message.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monai.data import load_decathlon_datalist

from cggm_seg.brats_labels import case_id_from_filename
from cggm_seg.errors import UserError

CHECKPOINT_PATTERN = re.compile(r"checkpoint_epoch=(\d+)\.pt$")


def bundles_root() -> Path:
    """The folder holding the shipped bundles: package data in a wheel, ``bundles/`` in a checkout."""
    return Path(str(importlib.resources.files("cggm_seg") / "bundles")).resolve()


def bundle_names() -> list[str]:
    """The shipped bundles, by folder name."""
    return sorted(p.name for p in bundles_root().iterdir() if (p / "configs" / "metadata.json").is_file())


def bundle_dir(name: str) -> Path:
    """The root folder of the shipped bundle ``name`` (it holds ``configs/`` and ``docs/``)."""
    path = bundles_root() / name
    if not (path / "configs").is_dir():
        raise UserError(f"bundle: no bundle named {name!r}; the shipped bundles are {bundle_names()}")
    return path


def read_datalist(datalist: str | Path) -> dict[str, Any]:
    """The datalist JSON as a dict, with a clear error for a missing or broken file."""
    path = Path(datalist)
    if not path.is_file():
        raise UserError(f"datalist: {path} does not exist; write it with `cggm-seg prepare brats --root DIR "
                        f"--out {path}`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"datalist: {path} is not valid JSON ({err})") from None


def _entries(datalist: str | Path, dataset_dir: str | Path, key: str) -> list[dict]:
    if key not in read_datalist(datalist):
        raise UserError(f"data_list_key: the datalist {datalist} has no {key!r} list")
    entries = load_decathlon_datalist(str(datalist), data_list_key=key, base_dir=str(dataset_dir))
    for entry in entries:  # MONAI joins every existing relative path, the case-id folder included
        if "case_id" in entry:
            entry["case_id"] = Path(entry["case_id"]).name
    return entries


def fold_split(datalist: str | Path, dataset_dir: str | Path, fold: int) -> tuple[list[dict], list[dict]]:
    """(training, validation) entries: fold ``fold`` validates, the others train; paths made absolute."""
    entries = _entries(datalist, dataset_dir, "training")
    folds = sorted({int(e["fold"]) for e in entries})
    if fold not in folds:
        raise UserError(f"fold: {fold} is not in the datalist {datalist} (folds {folds})")
    return [e for e in entries if int(e["fold"]) != fold], [e for e in entries if int(e["fold"]) == fold]


def select_entries(datalist: str | Path, dataset_dir: str | Path, key: str = "training",
                   fold: int | None = None) -> list[dict]:
    """Entries of list ``key`` (all of them, or only fold ``fold``) for evaluation or inference."""
    entries = _entries(datalist, dataset_dir, key)
    if fold is None:
        return entries
    chosen = [e for e in entries if int(e.get("fold", -1)) == fold]
    if not chosen:
        raise UserError(f"fold: no entry of {key!r} in {datalist} has fold {fold}")
    return chosen


def datalist_convention(datalist: str | Path) -> str:
    """The label convention the datalist records (``brats2021``, ``brats2023`` or ``msd``)."""
    return str(read_datalist(datalist).get("label_convention", "brats2021"))


def latest_checkpoint(output_dir: str | Path) -> str | None:
    """The newest ``checkpoint_epoch=N.pt`` in ``output_dir``; ``None`` starts from scratch."""
    found = [(int(m.group(1)), p) for p in Path(output_dir).glob("*.pt")
             if (m := CHECKPOINT_PATTERN.search(p.name))]
    return str(max(found)[1]) if found else None


def case_name_formatter(metadict: dict, saver: Any) -> dict[str, str]:
    """``SaveImage`` name formatter: ``<case_id>.nii.gz``, the name ``cggm-seg evaluate`` reads."""
    source = metadict.get("filename_or_obj", "") if metadict else ""
    if isinstance(source, (list, tuple)):
        source = source[0]
    return {"subject": case_id_from_filename(source)}


def region_output(index: int) -> Callable[[Any], tuple[list, list]]:
    """``output_transform`` for a per-region metric: channel ``index`` of every decollated pred/label."""

    def transform(output: Any) -> tuple[list, list]:
        items = output if isinstance(output, list) else [output]
        return ([i["pred"][index:index + 1] for i in items], [i["label"][index:index + 1] for i in items])

    return transform


def existing_file(path: str | Path, setting: str) -> str:
    """``path`` if it is a file, else a one-line error naming the config id ``setting``."""
    if not Path(path).is_file():
        raise UserError(f"{setting}: {path} does not exist (train first, or pass --{setting} PATH)")
    return str(path)


def bundle_override(text: str) -> tuple[str, Any]:
    """``ID=JSON`` command-line override -> (id, value); a value that is not JSON stays a string, so bundle
    expressions such as ``$torch.bfloat16`` pass through."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected ID=JSON, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value
