"""`cggm-seg synth mosi`: synthetic CMU-MOSI pickles in the MulT or MMSA layout.

The work is done by :mod:`data_prep.synth_mosi`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from data_prep.synth_mosi import FORMATS, write_mosi
from data_prep.synth_sequences import add_common_arguments

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="pickle to write, e.g. mosi_data_noalign.pkl")
    parser.add_argument(
        "--format", choices=FORMATS, default="mult", help="MulT or MMSA layout (default mult)"
    )
    add_common_arguments(parser, default_n=96)


def main(args: argparse.Namespace) -> int:
    sizes = write_mosi(args.out, args.format, args.n, args.seed, args.force)
    log.info("wrote %s (%s layout, %s samples)", args.out, args.format, sizes)
    return 0
