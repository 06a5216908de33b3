"""Validate a BraTS folder and write a k-fold MONAI decathlon-style datalist.

Three layouts are recognised, detected from the folder itself:

- ``brats2021``: ``ROOT/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz``, labels 0/1/2/4;
- ``brats2023`` (GLI): ``ROOT/<case>/<case>-{t2f,t1n,t1c,t2w,seg}.nii.gz``, labels 0/1/2/3;
- ``msd`` (Task01_BrainTumour): ``ROOT/imagesTr/<case>.nii.gz``, 4-D with channels FLAIR, T1w, T1gd,
  T2w, and ``ROOT/labelsTr/<case>.nii.gz``, labels 0/1/2/3 (1 oedema, 2 non-enhancing, 3 enhancing).

Every case is checked (``brats_validation``) before anything is written; all problems are reported
together, one line each, and no datalist is written unless ``--skip-invalid`` asks to leave the bad
cases out.

Each ``"training"`` entry holds ``image`` (the four sequences in the order flair, t1, t1ce, t2; for
MSD the one 4-D file), ``label``, ``fold``, ``case_id`` and ``label_convention``. Paths are relative
to the datalist's own folder, which is where MONAI starts them from, so wherever the file is written
``monai.data.load_decathlon_datalist(FILE, data_list_key="training")`` finds the images (or absolute,
with ``absolute=True``, for a datalist that is moved on its own). MONAI also joins the base folder
onto any other string that names an existing path: in the folder layouts the case id is the case
folder's name, so a datalist written in ROOT loads its ``case_id`` as that folder's path (take its name).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cggm_seg.brats_labels import SEQUENCES
from cggm_seg.errors import UserError
from cggm_seg.preflight import check_writable
from data_prep.brats_validation import CaseFiles, check_case

logger = logging.getLogger(__name__)

MSD_IMAGES, MSD_LABELS = "imagesTr", "labelsTr"
LABEL_KEY = "label"


@dataclass(frozen=True)
class FolderLayout:
    """One folder per case, each file named ``<case id><separator><suffix>.nii.gz``."""

    name: str
    separator: str
    suffixes: dict[str, str]  # each sequence of SEQUENCES, and LABEL_KEY -> file-name suffix

    def file_name(self, case_id: str, key: str) -> str:
        return f"{case_id}{self.separator}{self.suffixes[key]}.nii.gz"


FOLDER_LAYOUTS: dict[str, FolderLayout] = {
    "brats2021": FolderLayout(
        "brats2021", "_", {"flair": "flair", "t1": "t1", "t1ce": "t1ce", "t2": "t2", LABEL_KEY: "seg"}
    ),
    "brats2023": FolderLayout(
        "brats2023", "-", {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w", LABEL_KEY: "seg"}
    ),
}
# Every layout's name is also the name of its label convention in cggm_seg.brats_labels.
LAYOUTS = (*FOLDER_LAYOUTS, "msd")
_EXAMPLES = (
    "case folders such as BraTS2021_00000/BraTS2021_00000_flair.nii.gz or "
    f"BraTS-GLI-00000-000/BraTS-GLI-00000-000-t2f.nii.gz, or {MSD_IMAGES}/ and {MSD_LABELS}/ (MSD)"
)


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a hidden temporary name beside ``path``; it replaces ``path`` only if the block succeeds.

    Readers never see a half-written file, and an interrupted run leaves the old file (if any) intact.
    The temporary name keeps ``path``'s extensions, so writers that choose a format by name still work.
    """
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{''.join(path.suffixes)}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _stem(name: str) -> str | None:
    """File name without its NIfTI extension, or None for anything that is not visible NIfTI."""
    if name.startswith("."):  # hidden files, e.g. the ._* AppleDouble files in the MSD archive
        return None
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return None


def _nifti_files(folder: Path) -> dict[Path, str]:
    return {p: stem for p in sorted(folder.iterdir()) if p.is_file() and (stem := _stem(p.name)) is not None}


def _layout_matches(files: dict[Path, str], layout: FolderLayout) -> dict[str, list[Path]]:
    """The files of a case folder that carry each of ``layout``'s suffixes."""
    return {
        key: [p for p, stem in files.items() if stem.endswith(layout.separator + suffix)]
        for key, suffix in layout.suffixes.items()
    }


def _single(case_id: str, key: str, found: list[Path], expected: str, problems: list[str]) -> Path | None:
    """The one file found for ``key``; a missing or duplicated file is reported and gives None."""
    if len(found) == 1:
        return found[0]
    if not found:
        problems.append(f"{case_id}: {expected}: missing {key} file")
    else:
        names = ", ".join(p.name for p in found)
        problems.append(f"{case_id}: {names}: {len(found)} {key} files, expected one")
    return None


def _folder_case(
    folder: Path, layout: FolderLayout, matches: dict[str, list[Path]], files: dict[Path, str]
) -> tuple[CaseFiles, list[str]]:
    case_id, problems = folder.name, []
    picked = {
        key: _single(case_id, key, found, layout.file_name(case_id, key), problems)
        for key, found in matches.items()
    }
    matched = {p for found in matches.values() for p in found}
    for path, stem in files.items():
        if path not in matched and ("seg" in stem.lower() or "label" in stem.lower()):
            problems.append(
                f"{case_id}: {path.name}: extra label-like file beside "
                f"{layout.file_name(case_id, LABEL_KEY)}; remove it or move it away"
            )
    return CaseFiles(case_id, tuple(picked[s] for s in SEQUENCES), picked[LABEL_KEY]), problems


def _scan_folders(root: Path) -> tuple[str | None, list[CaseFiles], dict[str, list[str]]]:
    """Cases of the folder layouts: each sub-folder is read as the layout most of its files follow."""
    found: dict[str, list[tuple[CaseFiles, list[str]]]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = _nifti_files(folder)
        matches = {name: _layout_matches(files, layout) for name, layout in FOLDER_LAYOUTS.items()}
        name = max(matches, key=lambda n: sum(map(bool, matches[n].values())))
        if not any(matches[name].values()):
            logger.debug("%s: no BraTS files, not a case", folder)
            continue
        found.setdefault(name, []).append(_folder_case(folder, FOLDER_LAYOUTS[name], matches[name], files))
    if len(found) > 1:
        counts = ", ".join(f"{len(v)} {k}" for k, v in sorted(found.items()))
        raise UserError(f"{root} mixes case layouts ({counts}); expected one layout per root")
    if not found:
        return None, [], {}
    ((name, results),) = found.items()
    return name, [case for case, _ in results], {case.case_id: probs for case, probs in results if probs}


def _scan_msd(root: Path) -> tuple[list[CaseFiles], dict[str, list[str]]]:
    """Cases of the MSD layout: images and labels paired by file name."""
    labels_dir = root / MSD_LABELS
    images = _nifti_files(root / MSD_IMAGES)
    labels = _nifti_files(labels_dir) if labels_dir.is_dir() else {}
    by_id: dict[str, dict[str, list[Path]]] = {}
    for files, folder in ((images, MSD_IMAGES), (labels, MSD_LABELS)):
        for path, stem in files.items():
            by_id.setdefault(stem, {MSD_IMAGES: [], MSD_LABELS: []})[folder].append(path)
    cases, problems = [], {}
    for case_id, found in sorted(by_id.items()):
        wrong: list[str] = []
        image, label = (
            _single(case_id, what, found[folder], f"{folder}/{case_id}.nii.gz", wrong)
            for what, folder in (("image", MSD_IMAGES), (LABEL_KEY, MSD_LABELS))
        )
        cases.append(CaseFiles(case_id, (image,), label))
        if wrong:
            problems[case_id] = wrong
    return cases, problems


def scan_root(root: Path) -> tuple[str, list[CaseFiles], dict[str, list[str]]]:
    """Layout, every case found and the scan's problems by case id; root-level problems raise UserError."""
    if not root.exists():
        raise UserError(f"BraTS root {root} does not exist")
    if not root.is_dir():
        raise UserError(f"BraTS root {root} is not a folder")
    if not any(not p.name.startswith(".") for p in root.iterdir()):
        raise UserError(f"BraTS root {root} is empty; expected {_EXAMPLES}")
    if (root / MSD_IMAGES).is_dir():
        layout: str | None = "msd"
        cases, problems = _scan_msd(root)
    else:
        layout, cases, problems = _scan_folders(root)
    if layout is None or not (cases or problems):
        raise UserError(f"no BraTS cases found in {root}; expected {_EXAMPLES}")
    return layout, cases, problems


def assign_folds(case_ids: list[str], folds: int, seed: int) -> dict[str, int]:
    """Fold of each case: a shuffle fixed by ``seed``, dealt round-robin so fold sizes differ by at most 1."""
    order = sorted(case_ids)
    shuffled = np.random.default_rng(seed).permutation(len(order))
    return {order[j]: position % folds for position, j in enumerate(shuffled)}


def _problem_report(headline: str, problems: list[str]) -> str:
    return "\n".join([headline, *(f"  {p}" for p in problems)])


def _path(path: Path, base: Path | None) -> str:
    """``path`` as the datalist stores it: relative to ``base`` (lexically, as MONAI joins) or absolute."""
    absolute = os.path.abspath(path)
    return Path(absolute if base is None else os.path.relpath(absolute, os.path.abspath(base))).as_posix()


def _entry(case: CaseFiles, base: Path | None, layout: str, fold: int) -> dict:
    images = [_path(p, base) for p in case.images]
    return {
        "image": images if len(images) > 1 else images[0],
        "label": _path(case.label, base),
        "fold": fold,
        "case_id": case.case_id,
        "label_convention": layout,
    }


def build_datalist(
    root: Path,
    folds: int,
    seed: int = 0,
    skip_invalid: bool = False,
    base_dir: Path | None = None,
    absolute: bool = False,
) -> tuple[dict, list[str]]:
    """Validate every case under ``root`` and build the datalist of the valid ones.

    Paths are relative to ``base_dir`` (default ``root``), where the datalist will be, or absolute.
    Returns the datalist and the problems of the cases left out. Any problem raises ``UserError``
    listing them all unless ``skip_invalid``; no valid case at all raises in any event.
    """
    root = Path(root)
    if folds < 1:
        raise UserError(f"--folds must be at least 1, got {folds}")
    layout, cases, problems = scan_root(root)
    for case in tqdm(cases, desc="validating", unit="case", disable=None):
        found = check_case(case, layout)
        if found:
            problems[case.case_id] = problems.get(case.case_id, []) + found
    listed = [p for case_id in sorted(problems) for p in problems[case_id]]
    valid = [case for case in cases if case.case_id not in problems]
    if not valid:
        raise UserError(_problem_report(f"no valid {layout} case in {root}; no datalist written:", listed))
    if listed and not skip_invalid:
        raise UserError(
            _problem_report(
                f"{len(listed)} problem(s) in {len(problems)} of {len(cases)} cases under {root}; "
                "no datalist written (fix them, or pass --skip-invalid to leave those cases out):",
                listed,
            )
        )
    if folds > len(valid):
        raise UserError(f"--folds {folds} is more than the {len(valid)} valid case(s) in {root}")
    fold_of = assign_folds([case.case_id for case in valid], folds, seed)
    datalist = {
        "layout": layout,
        "label_convention": layout,
        "sequences": list(SEQUENCES),
        "num_folds": folds,
        "training": [
            _entry(case, None if absolute else base_dir or root, layout, fold_of[case.case_id])
            for case in valid
        ],
    }
    return datalist, listed


def write_datalist(
    root: Path,
    out: Path,
    folds: int,
    seed: int = 0,
    skip_invalid: bool = False,
    force: bool = False,
    absolute: bool = False,
) -> tuple[dict, list[str]]:
    """Build the datalist of ``root`` and write it to ``out`` as JSON; an existing ``out`` needs ``force``.

    Paths are relative to ``out``'s folder, as MONAI reads them (absolute with ``absolute``). Where
    ``out`` goes is checked first: validating every case of a large root takes a while.
    """
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; expected a JSON file name")
    if out.exists() and not force:
        raise UserError(f"--out {out} already exists; pass --force to overwrite it")
    check_writable(out.parent, "--out")
    datalist, problems = build_datalist(root, folds, seed, skip_invalid, out.parent, absolute)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out) as tmp:
        tmp.write_text(json.dumps(datalist, indent=2) + "\n")
    return datalist, problems
