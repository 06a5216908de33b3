"""`cggm-seg prepare brats`: validate a BraTS folder, write a k-fold datalist and, with ``--cache``, fill
the bundle's disk cache of prepared cases (``data_cache: disk``) ahead of training.

The datalist is :mod:`data_prep.brats_datalist`'s; the cache is the one training reads
(:mod:`cggm_seg.data_cache`), built from the bundle's own ``train#prepare`` with the same ``--set``
overrides a training run would get, so the keys match.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np
from monai.bundle import ConfigParser

from cggm_seg.bundle import ALL_FOLDS, bundle_dir, select_entries
from cggm_seg.commands.options import add_override_option
from cggm_seg.data_cache import PreparedCaseDataset, fill_cache
from cggm_seg.errors import UserError
from data_prep.brats_datalist import write_datalist

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root", type=Path, required=True, help="BraTS folder (2021, 2023 GLI or MSD Task01)"
    )
    parser.add_argument("--out", type=Path, required=True, help="datalist JSON to write")
    parser.add_argument(
        "--folds", type=int, default=5, help="number of cross-validation folds, at least 2 (default 5)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold shuffle (default 0)")
    parser.add_argument(
        "--skip-invalid",
        action="store_true",
        help="leave out cases with problems (listed as warnings) instead of failing",
    )
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    parser.add_argument(
        "--absolute",
        action="store_true",
        help="write absolute image paths (default: relative to --out's folder, as MONAI reads them)",
    )
    cache = parser.add_argument_group("disk cache (the BraTS bundle's data_cache: disk)")
    cache.add_argument("--cache", action="store_true", help="prepare every case into the bundle's cache")
    cache.add_argument(
        "--cache_dir",
        default=None,
        help="cache folder (default: the bundle's, $CGGM_SEG_CACHE_DIR or ~/.cache/cggm-seg)",
    )
    cache.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)"
    )
    add_override_option(
        cache,
        "an override of the training run that changes train#prepare, so the keys match (repeatable)",
    )


def fill_bundle_cache(args: argparse.Namespace) -> None:
    """Prepare every case of the datalist just written with the bundle's ``train#prepare``."""
    parser = ConfigParser()
    parser.read_config(str(bundle_dir("brats_cggm") / "configs" / "train.json"))
    parser.update({"dataset_dir": str(args.root), "datalist": str(args.out), **dict(args.set)})
    if args.cache_dir is not None:
        parser["cache_dir"] = args.cache_dir
    entries = select_entries(args.out, args.root, "training", ALL_FOLDS)
    cache = PreparedCaseDataset(
        entries, parser.get_parsed_content("train#prepare"), parser.get_parsed_content("cache_dir")
    )
    size = fill_cache(cache, args.workers)
    per_case = size / len(entries) / 2**20
    print(
        f"cache {cache.cache_dir}: {len(entries)} cases, {size / 2**30:.2f} GiB ({per_case:.1f} MiB a case)"
    )


def main(args: argparse.Namespace) -> int:
    if args.folds < 2:
        raise UserError(
            f"--folds must be at least 2, got {args.folds}: training validates on one fold and "
            "trains on the others"
        )
    datalist, problems = write_datalist(
        args.root, args.out, args.folds, args.seed, args.skip_invalid, args.force, args.absolute
    )
    for problem in problems:
        logger.warning("skipped %s", problem)
    sizes = np.bincount([e["fold"] for e in datalist["training"]], minlength=args.folds).tolist()
    print(
        f"wrote {args.out}: {len(datalist['training'])} {datalist['layout']} cases, "
        f"{args.folds} folds of {sizes}" + (f", {len(problems)} problem(s) skipped" if problems else "")
    )
    if args.cache:
        fill_bundle_cache(args)
    return 0
