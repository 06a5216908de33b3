"""`cggm-seg evaluate`: score a folder of BraTS label maps (scoring: :mod:`cggm_seg.metrics.scoring`;
folders: :mod:`cggm_seg.metrics.folders`; outputs: :mod:`cggm_seg.metrics.summaries`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cggm_seg.brats_labels import CONVENTIONS, case_id_from_filename
from cggm_seg.bundle import select_entries
from cggm_seg.errors import UserError
from cggm_seg.io import check_new_outputs
from cggm_seg.metrics.case_pool import default_workers
from cggm_seg.metrics.folders import NIFTI, layout_convention
from cggm_seg.metrics.scoring import CHALLENGES, SCHEMES, Scheme, default_scheme, score_folders
from cggm_seg.metrics.summaries import format_summary, output_paths, write_scores

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``cggm-seg evaluate``."""
    parser.add_argument("--pred", required=True, type=Path, help=f"folder of <case_id>{NIFTI} label maps")
    parser.add_argument(
        "--gt",
        required=True,
        type=Path,
        help="BraTS 2021/2023 or MSD dataset root, or a flat folder of <case_id>[_seg|-seg]"
        f"{NIFTI} label maps",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="per-case CSV (default: <pred>/brats_scores.csv); the summary JSON and one box "
        "plot per metric go next to it as <name>_summary.json and <name>_<metric>.png",
    )
    parser.add_argument(
        "--convention",
        choices=sorted(CONVENTIONS),
        help="label values of the ground truth (default: from the --gt layout: brats2023 for "
        "<case>/<case>-seg.nii.gz folders, msd for labelsTr/, else brats2021)",
    )
    parser.add_argument(
        "--pred-convention",
        choices=sorted(CONVENTIONS),
        help="label values of the predictions (default: same as --convention)",
    )
    parser.add_argument(
        "--scheme",
        choices=SCHEMES,
        help="brats2021: volume Dice/HD95 per region; brats2023: lesion-wise Dice/HD95, "
        "lesion TP/FP/FN, NSD and volume Dice (default: brats2023 for the brats2023 "
        "convention, else brats2021)",
    )
    parser.add_argument(
        "--challenge",
        choices=CHALLENGES,
        help="brats2023 only: the challenge whose lesion dilation and size threshold apply "
        "(default: GLI, dilation 3, lesions of at most 50 mm^3 ignored)",
    )
    parser.add_argument(
        "--nsd-tolerance",
        type=float,
        metavar="MM",
        help="brats2023 only: tolerance of the normalised surface distance (surface Dice) in mm (default: 1)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="processes scoring cases in parallel (default: the CPU count, %(default)s)",
    )
    parser.add_argument(
        "--fold",
        type=int,
        help="score only this fold's cases of the datalist (as the bundles' --fold picks "
        "them); without it every ground-truth case needs a prediction",
    )
    parser.add_argument(
        "--datalist",
        type=Path,
        help="the datalist --fold reads (default: <gt>/datalist.json, as `cggm-seg prepare brats` writes it)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing CSV/JSON/PNG outputs")


def scheme_from_args(args: argparse.Namespace, convention: str) -> Scheme:
    """The scheme the options ask for; brats2023 options with brats2021 are refused, not ignored."""
    name = args.scheme or default_scheme(convention)
    lesion_options = [
        o
        for o, v in (("--challenge", args.challenge), ("--nsd-tolerance", args.nsd_tolerance))
        if v is not None
    ]
    if name != "brats2023" and lesion_options:
        verb = "apply" if len(lesion_options) > 1 else "applies"
        options = " and ".join(lesion_options)
        raise UserError(f"{options} only {verb} to --scheme brats2023 (scheme is {name})")
    defaults = Scheme()
    return Scheme(
        name,
        args.challenge or defaults.challenge,
        defaults.nsd_tolerance_mm if args.nsd_tolerance is None else args.nsd_tolerance,
    )


def fold_cases(args: argparse.Namespace) -> list[str] | None:
    """The case ids ``--fold`` selects from the datalist, named as inference names its label maps (from
    the first image's file name), or None for every case."""
    if args.fold is None:
        if args.datalist is not None:
            raise UserError("--datalist is read only with --fold; add --fold K")
        return None
    datalist = args.datalist or args.gt / "datalist.json"
    return [
        case_id_from_filename(entry["image"][0])
        for entry in select_entries(datalist, args.gt, "training", args.fold)
    ]


def main(args: argparse.Namespace) -> int:
    """Score, write the CSV, JSON and box plots, print the summary table."""
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    convention = args.convention or layout_convention(args.gt)
    scheme = scheme_from_args(args, convention)
    csv_path = args.out or args.pred / "brats_scores.csv"
    summary_path, plots = output_paths(csv_path, scheme)
    cases = fold_cases(args)
    check_new_outputs((csv_path, summary_path, *plots), args.force)  # fail before minutes of scoring
    logger.info("scoring with the %s scheme, %s labels, %d worker(s)", scheme.name, convention, args.workers)
    rows = score_folders(args.pred, args.gt, convention, args.pred_convention, scheme, args.workers, cases)
    summary = write_scores(rows, csv_path, summary_path, force=args.force, scheme=scheme)
    logger.info("wrote %s, %s and %d box plots", csv_path, summary_path, len(plots))
    print(format_summary(summary))
    return 0
