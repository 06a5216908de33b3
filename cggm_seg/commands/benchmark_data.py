"""`cggm-seg benchmark data`: seconds of one core and bytes per BraTS case for each ``data_cache``, as JSON.

See :mod:`cggm_seg.benchmark.data_bench` and docs/PERFORMANCE.md. At tiny sizes it checks the bench
itself, e.g. ``--size 32,32,24 --roi 16 --cases 2``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cggm_seg.benchmark.data_bench import run
from cggm_seg.benchmark.gpu import DEFAULT_CONFIG
from cggm_seg.commands.options import add_override_option, parse_shape, print_json
from cggm_seg.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--size", type=parse_shape, default=(240, 240, 155), help="volume shape (default 240,240,155)"
    )
    parser.add_argument("--roi", type=int, default=128, help="edge of the training crop (default 128)")
    parser.add_argument("--batch", type=int, default=2, help="training batch size (default 2)")
    parser.add_argument("--cases", type=int, default=4, help="synthetic cases (default 4)")
    parser.add_argument("--repeats", type=int, default=5, help="timed augmentations per case (default 5)")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: the config's)")
    parser.add_argument("--loader-epochs", type=int, default=2, help="timed loader epochs per data path")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="bundle train.json")
    add_override_option(
        parser,
        "override a config id, as on the monai.bundle command line (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON document here")


def main(args: argparse.Namespace) -> int:
    if args.cases < args.batch:
        raise UserError(f"--cases {args.cases} is fewer than one batch of {args.batch}")
    logging.getLogger().setLevel(logging.INFO)
    print_json(run(args), args.out)
    return 0
