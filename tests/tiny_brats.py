"""The smallest BraTS bundle runs the tests make: a prepared synthetic folder and CPU-sized overrides."""

from __future__ import annotations

from pathlib import Path

from data_prep.brats_datalist import write_datalist
from data_prep.synth_brats import write_brats_dataset

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "brats_cggm" / "configs"
#: bundle overrides for a run of seconds on a CPU; batch 1, so 4 training cases make 4 steps an epoch
TINY = {
    "roi_size": [16, 16, 16],
    "network_def#channels": [4, 8, 16, 32],
    "num_workers": 0,
    "device": "cpu",
    "amp": "false",
    "warmup_epochs": 1,
    "val_interval": 1,
    "sw_batch_size": 1,
    "batch_size": 1,
}


def prepared_brats(root: Path, cases: int = 4, folds: int = 2) -> Path:
    """``cases`` 32^3 phantoms in the BraTS 2021 layout under ``root``, with their datalist; ``root``."""
    write_brats_dataset(root, cases=cases, size=32, seed=0)
    write_datalist(root, root / "datalist.json", folds=folds, seed=0)
    return root
