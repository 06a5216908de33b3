"""`cggm-seg food101 extract`: frozen ViT/BERT features for Food-101.

The work is done by :mod:`cggm_seg.adapters.food101_extract`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from cggm_seg.adapters.food101 import LIST_NAMES
from cggm_seg.adapters.food101_extract import DTYPES, extract_features
from cggm_seg.adapters.sequence_core import SPLITS

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", required=True, type=Path, help="folder with {train,dev,test}.json and the images"
    )
    parser.add_argument("--vit", required=True, type=Path, help="local ViT folder (model + image processor)")
    parser.add_argument("--bert", required=True, type=Path, help="local BERT folder (model + tokenizer)")
    parser.add_argument("--out", type=Path, default=None, help="feature folder (default DATA/features)")
    parser.add_argument(
        "--splits",
        nargs="+",
        choices=SPLITS,
        default=list(SPLITS),
        help=f"splits to extract (default all; lists {', '.join(LIST_NAMES.values())})",
    )
    parser.add_argument("--max-text-len", type=int, default=50, help="BERT tokens per text (default 50)")
    parser.add_argument("--batch-size", type=int, default=32, help="records per forward pass (default 32)")
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default cuda when available, else cpu)",
    )
    parser.add_argument(
        "--dtype",
        choices=tuple(DTYPES),
        default="float16",
        help="feature precision on disk (default float16: half the size)",
    )
    parser.add_argument("--force", action="store_true", help="replace existing feature files")


def main(args: argparse.Namespace) -> int:
    out_dir = args.out or args.data / "features"
    counts = extract_features(
        args.data,
        args.vit,
        args.bert,
        out_dir,
        args.splits,
        args.max_text_len,
        args.batch_size,
        args.device,
        args.dtype,
        args.force,
    )
    for split, count in counts.items():
        log.info("%s (%s.json): %d records -> %s", split, LIST_NAMES[split], count, out_dir)
    return 0
