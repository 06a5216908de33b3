"""`cggm-seg benchmark gpu`: the BraTS bundle's loader, training-step and inference costs on a GPU, as JSON.

See :mod:`cggm_seg.benchmark.gpu` and docs/PERFORMANCE.md. On a CPU at tiny sizes it checks the bench
itself, e.g. ``--device cpu --size 32,32,24 --roi 16 --steps 3 --cases 2``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from cggm_seg.benchmark.gpu import DEFAULT_CONFIG, run
from cggm_seg.commands.options import add_override_option, parse_shape, print_json
from cggm_seg.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument(
        "--size", type=parse_shape, default=(240, 240, 155), help="volume shape (default 240,240,155)"
    )
    parser.add_argument(
        "--roi",
        type=int,
        default=128,
        help="edge of the training crop and of the sliding window (default 128)",
    )
    parser.add_argument("--batch", type=int, default=2, help="training batch size (default 2)")
    parser.add_argument(
        "--steps",
        type=int,
        default=30,
        help="timed training steps per mode, after the shared warm-up (default 30)",
    )
    parser.add_argument("--cases", type=int, default=8, help="synthetic cases (default 8)")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: the config's)")
    parser.add_argument("--loader-epochs", type=int, default=2, help="timed loader epochs per variant")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="bundle train.json")
    add_override_option(
        parser,
        "override a config id, as on the monai.bundle command line (repeatable), "
        'e.g. --set \'train#trainer#amp_kwargs={"dtype": "$torch.bfloat16"}\'',
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON document here")


def main(args: argparse.Namespace) -> int:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but torch sees no GPU; pass --device cpu")
    if args.cases < args.batch:
        raise UserError(f"--cases {args.cases} is fewer than one batch of {args.batch}")
    logging.getLogger().setLevel(logging.INFO)
    print_json(run(args), args.out)
    return 0
