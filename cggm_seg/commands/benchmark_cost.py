"""`cggm-seg benchmark cost`: FLOPs and memory of one training step and one case's inference, as counts.

See :mod:`cggm_seg.benchmark.cost` and docs/PERFORMANCE.md (*Step cost*). The counts run on fake
tensors: no GPU, seconds per variant, the same numbers on every machine.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from cggm_seg.benchmark.cost import DEFAULT_CONFIG, measure, table
from cggm_seg.benchmark.cpu_path import cpu_path, summary
from cggm_seg.commands.options import add_override_option, parse_shape

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="bundle train.json")
    parser.add_argument(
        "--roi", type=parse_shape, default=None, help="training crop and window D,H,W (default: the config's)"
    )
    parser.add_argument("--batch", type=int, default=None, help="training batch size (default: the config's)")
    parser.add_argument(
        "--volume",
        type=parse_shape,
        default=(240, 240, 155),
        help="inference case D,H,W (default 240,240,155)",
    )
    add_override_option(
        parser,
        "override a config id in every variant (repeatable), e.g. --set network_def#channels=[8,16,32]",
    )
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="also run one training step and one case's inference for real on this CPU: time and peak RSS "
        "(minutes and about 10 GiB at the defaults)",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON document here")


def main(args: argparse.Namespace) -> int:
    logging.getLogger().setLevel(logging.INFO)
    progress = lambda name: logger.info("counting %s", name)  # noqa: E731
    document = measure(args.config, dict(args.set), args.roi, args.batch, args.volume, progress)
    if args.cpu:
        logger.info("running one training step and one case on this CPU")
        roi, batch = document["settings"]["roi"], document["settings"]["batch"]
        document["cpu_path"] = cpu_path(args.config, dict(args.set), roi, batch, args.volume)
    print(table(document))
    if args.cpu:
        print(summary(document["cpu_path"]))
    print(json.dumps(document["targets"], indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=2) + "\n")
    return 0
