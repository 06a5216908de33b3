"""`cggm-seg prepare brats`: validate a BraTS folder and write a k-fold datalist.

The work is done by :mod:`data_prep.brats_datalist`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

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
    return 0
