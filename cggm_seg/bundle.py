"""Where the bundles are, and the small functions their configs call: datalist folds, the checkpoint
to evaluate, output names (resuming is in :mod:`cggm_seg.checkpoint`).

Kept out of the JSON so each piece has a docstring, a test and a clear error message.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monai.data import load_decathlon_datalist

from cggm_seg.brats_labels import case_id_from_filename
from cggm_seg.errors import UserError

logger = logging.getLogger(__name__)

#: what the bundles' CheckpointSavers write: a training state every epoch (the resumable checkpoints),
#: the best validation model and the last training state
CHECKPOINT_PATTERN = re.compile(r"checkpoint_epoch=(\d+)\.pt$")
BEST_MODEL, FINAL_CHECKPOINT = "model.pt", "checkpoint_final.pt"


def bundles_root() -> Path:
    """The folder holding the shipped bundles: package data in a wheel, ``bundles/`` in a checkout."""
    return Path(str(importlib.resources.files("cggm_seg") / "bundles")).resolve()


def config_label(config: str | Path) -> str:
    """A shipped bundle's config as ``bundles/NAME/configs/FILE`` (the same on every machine, so a
    measurement's JSON names it the same way everywhere), any other config as given."""
    path = Path(config).resolve()
    root = bundles_root()
    return f"bundles/{path.relative_to(root).as_posix()}" if path.is_relative_to(root) else str(config)


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
        raise UserError(
            f"datalist: {path} does not exist; write it with `cggm-seg prepare brats --root DIR --out {path}`"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"datalist: {path} is not valid JSON ({err})") from None


def _first_image(entries: list) -> str | None:
    """The first image path of a datalist list (entries are dicts, or bare paths as in MSD's ``test``)."""
    for entry in entries:
        image = entry.get("image") if isinstance(entry, dict) else entry
        if isinstance(image, list):
            image = image[0] if image else None
        if isinstance(image, str) and image:
            return image
    return None


def datalist_base(datalist: str | Path, dataset_dir: str | Path, entries: list) -> str:
    """The folder the datalist's relative paths start from.

    Its own folder, as MONAI's ``load_decathlon_datalist`` reads it; or, deprecated since 0.6.0 and
    removed in 0.7.0, ``dataset_dir`` for datalists written before 0.2.0 (paths relative to the BraTS
    root). The first entry's image decides; neither folder holding it is a one-line error.
    """
    own = Path(os.path.abspath(datalist)).parent  # lexical, as MONAI joins
    first = _first_image(entries)
    if first is None or (own / first).exists():
        return str(own)
    if (Path(dataset_dir) / first).exists():
        warnings.warn(
            f"datalist: {datalist} lists paths relative to dataset_dir {dataset_dir}, not to "
            "its own folder as MONAI reads them (deprecated since 0.6.0, refused from 0.7.0): "
            "rewrite it with `cggm-seg prepare brats`",
            FutureWarning,
            stacklevel=2,
        )
        return str(dataset_dir)
    raise UserError(
        f"datalist: {datalist} lists {first}, which is neither under the datalist's folder {own} "
        f"nor under dataset_dir {dataset_dir}"
    )


def _entries(datalist: str | Path, dataset_dir: str | Path, key: str) -> list[dict]:
    content = read_datalist(datalist)
    if key not in content:
        raise UserError(f"data_list_key: the datalist {datalist} has no {key!r} list")
    base = datalist_base(datalist, dataset_dir, content[key])
    entries = load_decathlon_datalist(str(datalist), data_list_key=key, base_dir=base)
    for entry in entries:  # MONAI joins every existing relative path, the case-id folder included
        if "case_id" in entry:
            entry["case_id"] = Path(entry["case_id"]).name
    refuse_colliding_names(entries, f"{datalist} ({key!r})")
    return entries


def prediction_name(entry: dict) -> str:
    """The file inference writes for ``entry``: ``<case_id>.nii.gz``, the id read from its first image's
    name, as :func:`case_name_formatter` names it."""
    image = entry["image"][0] if isinstance(entry["image"], (list, tuple)) else entry["image"]
    return f"{case_id_from_filename(image)}.nii.gz"


def refuse_colliding_names(entries: list[dict], where: str) -> None:
    """Two entries whose label maps would get one file name (the same case in two folders) are refused,
    naming both: otherwise one prediction silently replaces the other and its case is scored twice."""
    seen: dict[str, dict] = {}
    for entry in entries:
        name = prediction_name(entry)
        if name in seen:
            first, second = (_first_image([e]) for e in (seen[name], entry))
            raise UserError(
                f"datalist: {where} lists two cases whose predictions would both be {name}: "
                f"{first} and {second}; rename one case (its folder and files)"
            )
        seen[name] = entry


def fold_split(datalist: str | Path, dataset_dir: str | Path, fold: int) -> tuple[list[dict], list[dict]]:
    """(training, validation) entries: fold ``fold`` validates, the others train; paths made absolute
    (see :func:`datalist_base` for where relative ones start)."""
    entries = _entries(datalist, dataset_dir, "training")
    folds = sorted({int(e["fold"]) for e in entries})
    if fold not in folds:
        raise UserError(f"fold: {fold} is not in the datalist {datalist} (folds {folds})")
    return [e for e in entries if int(e["fold"]) != fold], [e for e in entries if int(e["fold"]) == fold]


#: the fold value that selects every entry; ``python -m monai.bundle run`` drops overrides that are None
ALL_FOLDS = "all"


def select_entries(
    datalist: str | Path,
    dataset_dir: str | Path,
    key: str = "training",
    fold: int | str | None = None,
    setting: str = "fold",
) -> list[dict]:
    """Entries of list ``key`` for evaluation or inference: those of fold ``fold``, or all of them when
    ``fold`` is None or ``"all"``; a fold without entries is a one-line error naming the config id
    ``setting``."""
    entries = _entries(datalist, dataset_dir, key)
    if fold is None or fold == ALL_FOLDS:
        return entries
    chosen = [e for e in entries if int(e.get("fold", -1)) == fold]
    if not chosen:
        folds = sorted({int(e["fold"]) for e in entries if "fold" in e})
        raise UserError(
            f"{setting}: no entry of {key!r} in {datalist} has fold {fold!r} (folds {folds}, "
            f"or {ALL_FOLDS!r} for every entry)"
        )
    return chosen


def datalist_convention(datalist: str | Path) -> str:
    """The label convention the datalist records (``brats2021``, ``brats2023`` or ``msd``)."""
    return str(read_datalist(datalist).get("label_convention", "brats2021"))


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
        return ([i["pred"][index : index + 1] for i in items], [i["label"][index : index + 1] for i in items])

    return transform


def trained_checkpoint(ckpt_dir: str | Path, setting: str = "checkpoint", required: bool = True) -> str:
    """The weights evaluation and inference load, and a log line saying which.

    ``model.pt`` (best validation score) when there is one, else ``checkpoint_final.pt``: a run that
    stopped before its first validation (``epochs < val_interval``) still has trained weights. Neither
    is a one-line error naming the config id ``setting``; with ``required=False`` it is the path
    ``model.pt`` will have, for a ``CheckpointLoader`` that is built before anything is trained and is
    never run (MONAI FL disables the bundle's loaders and sends the weights itself), so that whoever
    loads the file checks it.
    """
    best, final = Path(ckpt_dir) / BEST_MODEL, Path(ckpt_dir) / FINAL_CHECKPOINT
    if best.is_file():
        logger.info("%s: %s (best validation score)", setting, best)
        return str(best)
    if final.is_file():
        logger.info(
            "%s: %s (final weights; no %s, training stopped before its first validation)",
            setting,
            final,
            BEST_MODEL,
        )
        return str(final)
    if not required:
        return str(best)
    raise UserError(
        f"{setting}: neither {BEST_MODEL} nor {FINAL_CHECKPOINT} in {ckpt_dir} "
        f"(train first, or pass --{setting} PATH)"
    )
