"""`cggm-seg synth food101`: synthetic UPMC-Food-101 lists, images and features.

The work is done by :mod:`data_prep.synth_food101`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from data_prep.synth_food101 import write_food101
from data_prep.synth_sequences import add_common_arguments

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="folder to fill")
    parser.add_argument(
        "--classes",
        type=int,
        default=4,
        help="how many of the 101 classes occur (default 4, so a few epochs learn them)",
    )
    add_common_arguments(parser, default_n=96)


def main(args: argparse.Namespace) -> int:
    sizes = write_food101(args.out, args.n, args.classes, args.seed, args.force)
    log.info("wrote %s (%s records, %d classes)", args.out, sizes, args.classes)
    return 0
