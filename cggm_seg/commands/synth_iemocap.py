"""`cggm-seg synth iemocap`: synthetic IEMOCAP in the MulT pickle or h5 feature layout.

The work is done by :mod:`data_prep.synth_iemocap`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from data_prep.synth_iemocap import FORMATS, REAL_DIMS, SPECS, parse_dims, write_iemocap
from data_prep.synth_sequences import add_common_arguments

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="pickle to write (--format mult) or folder to fill (--format h5)",
    )
    parser.add_argument(
        "--format", choices=FORMATS, default="mult", help="MulT pickle or h5 folder (default mult)"
    )
    parser.add_argument(
        "--cv", type=int, default=1, help="fold folder under target/ for --format h5 (default 1)"
    )
    parser.add_argument(
        "--dims",
        default="",
        metavar="TEXT,AUDIO,VISION",
        help=f"feature sizes (default {','.join(str(s.dim) for s in SPECS)}; "
        f"the real features: {','.join(map(str, REAL_DIMS))})",
    )
    add_common_arguments(parser, default_n=96)


def main(args: argparse.Namespace) -> int:
    # a Namespace built by hand (tests, scripts) may leave out --dims: the small default sizes
    specs = parse_dims(getattr(args, "dims", ""))
    sizes = write_iemocap(args.out, args.format, args.n, args.seed, args.cv, args.force, specs)
    log.info(
        "wrote %s (%s layout, %s samples, feature sizes %s)",
        args.out,
        args.format,
        sizes,
        {spec.name: spec.dim for spec in specs},
    )
    return 0
