"""`cggm-seg bundle path NAME`: where a shipped MONAI bundle lives, for `python -m monai.bundle run`.

Works from a source checkout and from an installed wheel alike, e.g.
``python -m monai.bundle run --config_file "$(cggm-seg bundle path brats_cggm)/configs/train.json"``.
"""

from __future__ import annotations

import argparse

from cggm_seg.bundle import bundle_dir, bundle_names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help=f"bundle name: one of {', '.join(bundle_names())}")


def main(args: argparse.Namespace) -> int:
    print(bundle_dir(args.name))
    return 0
