"""`cggm-seg report RUN_DIR`: curves and a slice montage of a training run (work: :mod:`cggm_seg.report`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cggm_seg.commands.options import bundle_override
from cggm_seg.errors import UserError
from cggm_seg.report import DEFAULT_CONFIG, montage, plot_curves, read_scalars


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="output_dir of a brats_cggm training run")
    parser.add_argument("--out", type=Path, default=None, help="folder for the PNGs (default RUN_DIR/report)")
    parser.add_argument(
        "--dataset-dir",
        type=Path,
        default=None,
        help="the run's dataset_dir; without it the slice montage is skipped",
    )
    parser.add_argument(
        "--datalist", type=Path, default=None, help="datalist JSON (default DATASET_DIR/datalist.json)"
    )
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="weights for the montage (default RUN_DIR/model.pt)"
    )
    parser.add_argument(
        "--fold", type=int, default=0, help="validation fold the montage case comes from (default 0)"
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="the bundle's train.json")
    parser.add_argument(
        "--override",
        type=bundle_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a bundle setting the run was trained with (JSON value), e.g. "
        "'network_def#channels=[8,16,32,64]'; repeatable",
    )
    parser.add_argument(
        "--smooth",
        type=int,
        default=None,
        help="moving-average window of per-iteration curves (default: 1/50 of the run)",
    )


def main(args: argparse.Namespace) -> int:
    run_dir = args.run_dir
    if not run_dir.is_dir():
        raise UserError(f"RUN_DIR: {run_dir} is not a folder")
    out = args.out or run_dir / "report"
    scalars = read_scalars(run_dir)
    longest = max((len(steps) for steps, _ in scalars.values()), default=1)
    written, notes = plot_curves(scalars, out, args.smooth or max(1, longest // 50))
    if args.dataset_dir is None:
        notes.append(
            "montage skipped: pass --dataset-dir (and --datalist if it is not DATASET_DIR/datalist.json)"
        )
    else:
        overrides = dict(args.override)
        checkpoint = args.checkpoint or run_dir / "model.pt"
        written.append(
            montage(
                run_dir, out, args.dataset_dir, args.datalist, checkpoint, args.config, overrides, args.fold
            )
        )
    for path in written:
        print(f"wrote {path}")
    for note in notes:
        print(f"note: {note}")
    return 0
