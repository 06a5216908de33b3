"""`cggm-seg demo`: synthetic BraTS-format data -> CGGM training -> evaluation on held-out cases.

Everything goes through the same commands and bundle a user runs on real data: the
phantoms are written as BraTS 2021 NIfTI folders, ``prepare`` writes their datalists, and
the BraTS bundle's ``train.json`` and ``evaluate.json`` do the work with CPU-sized
overrides. The test cases come from a different seed and are never seen in training or
model selection. The output folder carries a marker naming what the demo writes there, and
``--force`` removes only that.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from monai.bundle import run as run_bundle

from cggm_seg.bundle import bundle_dir
from cggm_seg.commands.options import bundle_override
from cggm_seg.errors import UserError
from cggm_seg.io import write_json
from cggm_seg.metrics.summaries import format_summary
from data_prep.brats_datalist import write_datalist
from data_prep.synth_brats import write_brats_dataset

logger = logging.getLogger(__name__)

BUNDLE = bundle_dir("brats_cggm") / "configs"
TEST_SEED_OFFSET = 10_000
DEMO_ROI = 48  # training crop edge: what a 2-core CPU trains at a few steps a second
#: the demo's marker in its output folder, and everything the demo writes beside it
MARKER, WRITTEN_BY = ".cggm-seg-demo.json", "cggm-seg demo"
DEMO_ENTRIES = ("data", "run", "eval", "summary.json")


def demo_overrides(size: int, epochs: int, seed: int, modulation: str) -> dict[str, Any]:
    """Bundle overrides that make the paper's 3D set-up fit a 2-core CPU in minutes."""
    return {
        "modulation": modulation,
        "device": "cpu",
        "amp": False,
        "epochs": epochs,
        "val_interval": max(1, epochs // 4),
        "roi_size": [min(size, DEMO_ROI)] * 3,
        "batch_size": 2,
        "num_workers": 0,
        "data_cache": "memory",
        "seed": seed,
        "network_def#channels": [8, 16, 32, 64],
        "optimizer": {
            "_target_": "torch.optim.AdamW",
            "params": "$@network.parameters()",
            "lr": 3e-3,
            "weight_decay": 1e-5,
        },
        "head_optimizer": {
            "_target_": "torch.optim.AdamW",
            "params": "$@heads.parameters()",
            "lr": 3e-3,
            "weight_decay": 1e-5,
        },
        "warmup_epochs": 1,
        # AdamW divides a constant gradient scale away: CGGM scales the update instead (docs/METHOD.md)
        "cggm#apply_to": "update",
        # coefficients from the Dice of a batch of two volumes spike to +-100 without a bound
        "cggm#coeff_clip": [0.0, 2.0],
        "final_learning_rate": 1e-4,
    }


def run_demo(
    out: Path,
    train_cases: int,
    test_cases: int,
    size: int,
    seed: int,
    overrides: dict[str, Any],
    force: bool = False,
) -> dict[str, float]:
    """Run the whole demo in ``out`` with bundle ``overrides``; returns what ``out/summary.json`` holds."""
    claim_output(out, force)
    start = time.perf_counter()
    train_dir, test_dir, run_dir = out / "data" / "train", out / "data" / "test", out / "run"
    logger.info("writing %d training and %d test phantoms of %d^3 voxels", train_cases, test_cases, size)
    write_brats_dataset(train_dir, train_cases, size, seed)
    write_brats_dataset(test_dir, test_cases, size, seed + TEST_SEED_OFFSET)
    write_datalist(train_dir, train_dir / "datalist.json", folds=4, seed=seed)
    write_datalist(test_dir, test_dir / "datalist.json", folds=1, seed=seed)

    logger.info("training: bundle %s with %s", BUNDLE / "train.json", overrides)
    run_bundle(
        config_file=str(BUNDLE / "train.json"),
        logging_file=str(BUNDLE / "logging.conf"),
        dataset_dir=str(train_dir),
        output_dir=str(run_dir),
        **overrides,
    )
    logger.info("evaluating on the %d held-out test cases", test_cases)
    run_bundle(
        config_file=[str(BUNDLE / "train.json"), str(BUNDLE / "evaluate.json")],
        logging_file=str(BUNDLE / "logging.conf"),
        dataset_dir=str(test_dir),
        output_dir=str(run_dir),
        eval_dir=str(out / "eval"),
        eval_fold="all",  # every case of the test set's datalist, not a fold of it
        **overrides,
    )

    scores = json.loads((out / "eval" / "summary.json").read_text())
    summary = {
        key: scores[key]
        for key in ("dice_wt", "dice_tc", "dice_et", "dice_mean", "hd95_wt", "hd95_tc", "hd95_et", "n_cases")
    }
    summary["wall_time_s"] = round(time.perf_counter() - start, 1)
    write_json(out / "summary.json", summary)
    return summary


def _is_demo_output(out: Path) -> bool:
    try:
        return json.loads((out / MARKER).read_text()).get("written_by") == WRITTEN_BY
    except (OSError, ValueError, AttributeError):
        return False


def _remove(path: Path) -> None:
    """``path`` gone; a link is removed, never what it points to."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def claim_output(out: Path, force: bool) -> None:
    """Make ``out`` the demo's: missing, empty, or with ``force`` an earlier demo's output, which is cleared.

    ``--force`` removes only what a demo wrote: the folder must carry the demo's marker and hold nothing
    else, so a mistyped ``--out`` (``.``, a home folder) is refused instead of emptied.
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} is a file; expected a folder")
    found = sorted(p.name for p in out.iterdir()) if out.exists() else []
    if found and not force:
        raise UserError(f"--out: {out} is not empty; choose another folder or pass --force to replace it")
    if found and not _is_demo_output(out):
        raise UserError(
            f"--force: {out} was not written by `cggm-seg demo` (no {MARKER} in it), so nothing "
            "in it is removed; choose another --out or empty it yourself"
        )
    foreign = [name for name in found if name not in (MARKER, *DEMO_ENTRIES)]
    if foreign:
        raise UserError(
            f"--force: {out} also holds {', '.join(foreign)}, which `cggm-seg demo` did not "
            "write, so nothing in it is removed; move them or choose another --out"
        )
    for name in DEMO_ENTRIES:
        _remove(out / name)
    write_json(out / MARKER, {"written_by": WRITTEN_BY, "entries": list(DEMO_ENTRIES)}, overwrite=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, default=Path("demo_output"), help="output folder (default: %(default)s)"
    )
    parser.add_argument(
        "--train-cases", type=int, default=16, help="training phantoms (default: %(default)s)"
    )
    parser.add_argument(
        "--test-cases", type=int, default=8, help="held-out test phantoms (default: %(default)s)"
    )
    parser.add_argument(
        "--size", type=int, default=64, help="phantom edge in voxels, a multiple of 16 (default: %(default)s)"
    )
    parser.add_argument("--epochs", type=int, default=60, help="training epochs (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="data and training seed (default: %(default)s)")
    parser.add_argument(
        "--modulation",
        choices=("cggm", "none"),
        default="cggm",
        help="cggm, or none for plain joint training of the same network (default: %(default)s)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="ID=JSON",
        type=bundle_override,
        help="any other bundle override, e.g. --set cggm#rho=1.2 --set 'cggm#coeff_clip=[0, 2]' (repeatable)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace the output of an earlier demo in --out (nothing else is removed)",
    )


def main(args: argparse.Namespace) -> int:
    if args.size % 16 or args.size < 32:
        raise UserError(f"--size: {args.size} must be a multiple of 16 and at least 32")
    if args.train_cases < 4 or args.test_cases < 1 or args.epochs < 1:
        raise UserError("--train-cases must be >= 4 (four folds), --test-cases >= 1 and --epochs >= 1")
    overrides = {**demo_overrides(args.size, args.epochs, args.seed, args.modulation), **dict(args.set)}
    summary = run_demo(
        args.out, args.train_cases, args.test_cases, args.size, args.seed, overrides, args.force
    )
    print(format_summary(json.loads((args.out / "eval" / "summary.json").read_text())))
    print(
        f"dice_mean {summary['dice_mean']:.3f} on {summary['n_cases']} held-out cases in "
        f"{summary['wall_time_s']:.0f} s; summary: {args.out / 'summary.json'}"
    )
    return 0
