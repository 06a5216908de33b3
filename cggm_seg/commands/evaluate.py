"""`cggm-seg evaluate`: score a folder of BraTS label maps (scoring: :mod:`cggm_seg.metrics.scoring`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cggm_seg.brats_labels import CONVENTIONS
from cggm_seg.io import check_new_outputs
from cggm_seg.metrics.scoring import NIFTI, format_summary, score_folders, write_scores

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``cggm-seg evaluate``."""
    parser.add_argument("--pred", required=True, type=Path, help=f"folder of <case_id>{NIFTI} label maps")
    parser.add_argument("--gt", required=True, type=Path,
                        help="BraTS 2021/2023 or MSD dataset root, or a flat folder of <case_id>[_seg|-seg]"
                             f"{NIFTI} label maps")
    parser.add_argument("--out", type=Path,
                        help="per-case CSV (default: <pred>/brats_scores.csv); the summary JSON goes next "
                             "to it as <name>_summary.json")
    parser.add_argument("--convention", choices=sorted(CONVENTIONS), default="brats2021",
                        help="label values of the ground truth (default: %(default)s)")
    parser.add_argument("--pred-convention", choices=sorted(CONVENTIONS),
                        help="label values of the predictions (default: same as --convention)")
    parser.add_argument("--force", action="store_true", help="overwrite existing CSV/JSON outputs")


def main(args: argparse.Namespace) -> int:
    """Score, write the CSV and JSON, print the summary table."""
    csv_path = args.out or args.pred / "brats_scores.csv"
    summary_path = csv_path.with_name(f"{csv_path.name.removesuffix('.csv')}_summary.json")
    check_new_outputs((csv_path, summary_path), args.force)  # fail before minutes of scoring
    rows = score_folders(args.pred, args.gt, args.convention, args.pred_convention)
    summary = write_scores(rows, csv_path, summary_path, force=args.force)
    logger.info("wrote %s and %s", csv_path, summary_path)
    print(format_summary(summary))
    return 0
