"""`cggm-seg benchmark overhead`: CGGM's step-time and memory ratios against joint training, as JSON."""

from __future__ import annotations

import argparse
import json

import torch

from cggm_seg.benchmark.overhead import measure_overhead
from cggm_seg.modulation.cggm import DIRECTIONS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=48, help="cubic input edge (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=2, help="batch size (default: %(default)s)")
    parser.add_argument(
        "--steps", type=int, default=8, help="steps per run, the first ones warm-up (default: %(default)s)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating runs of each variant (default: %(default)s)"
    )
    parser.add_argument("--direction", choices=DIRECTIONS, default="weights", help="CGGM direction mode")
    parser.add_argument(
        "--lambda",
        dest="lam",
        type=float,
        default=0.1,
        help="CGGM's lambda; 0 times magnitude modulation alone (default: %(default)s)",
    )
    parser.add_argument(
        "--head-level",
        type=int,
        default=0,
        help="encoder level the CGGM heads compute at, as the BraTS bundle's `head_level` "
        "(default: %(default)s)",
    )
    parser.add_argument("--modalities", type=int, default=4, help="encoders (default: %(default)s)")
    parser.add_argument(
        "--channels",
        type=lambda s: tuple(int(c) for c in s.split(",")),
        default=(16, 32, 64, 128),
        help="U-Net channels per level (default: 16,32,64,128)",
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default: %(default)s)",
    )


def main(args: argparse.Namespace) -> int:
    result = measure_overhead(
        args.size,
        args.batch,
        args.steps,
        args.direction,
        args.rounds,
        args.modalities,
        args.channels,
        args.device,
        args.lam,
        args.head_level,
    )
    print(json.dumps(result))
    return 0
