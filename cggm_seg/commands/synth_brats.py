"""`cggm-seg synth brats`: synthetic BraTS phantoms in the public file layouts.

The work is done by :mod:`data_prep.synth_brats`.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from data_prep.brats_datalist import LAYOUTS
from data_prep.synth_brats import DEFAULT_NOISE, parse_sequence_values, write_brats_dataset

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, required=True, help="folder to write (must be empty unless --force)"
    )
    parser.add_argument("--cases", type=int, default=10, help="number of cases (default 10)")
    parser.add_argument(
        "--size", type=int, default=64, help="edge of the cubic volume in voxels (default 64)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--layout", choices=LAYOUTS, default="brats2021", help="file layout (default brats2021)"
    )
    parser.add_argument(
        "--noise",
        default="",
        metavar="SEQ=STD,...",
        help=f"per-sequence noise std in T1 white-matter units (default {DEFAULT_NOISE})",
    )
    parser.add_argument(
        "--contrast",
        default="",
        metavar="SEQ=FACTOR,...",
        help="per-sequence lesion contrast factor; 0 hides the tumour (default 1)",
    )
    parser.add_argument(
        "--texture",
        default="",
        metavar="SEQ,...",
        help="sequences that show the lesion as texture (a random sign per voxel), not "
        "brightness: learnable only through a nonlinear feature (default none)",
    )
    parser.add_argument(
        "--misplaced",
        default="",
        metavar="SEQ=SHARE,...",
        help="per-sequence share of cases in which it shows the tumour in the wrong place "
        "and nothing where it is: a partial shortcut (default 0)",
    )
    parser.add_argument("--force", action="store_true", help="write into a non-empty --out")


def main(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    written = write_brats_dataset(
        args.out,
        args.cases,
        args.size,
        args.seed,
        args.layout,
        parse_sequence_values(args.noise, "--noise"),
        parse_sequence_values(args.contrast, "--contrast"),
        args.force,
        tuple(name for name in args.texture.split(",") if name),
        parse_sequence_values(args.misplaced, "--misplaced"),
    )
    logger.info("synthesised %d cases in %.1f s", len(written), time.perf_counter() - start)
    print(f"wrote {len(written)} {args.layout} cases of {args.size}^3 voxels to {args.out}")
    return 0
