"""A plain (non-editable) install works away from the checkout: the wheel carries the bundles,
`cggm-seg bundle path` finds them, and `python -m monai.bundle run` trains one epoch from there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from installed_wheel import run as _run


@pytest.fixture
def installed(installed_wheel, tmp_path: Path) -> tuple[Path, dict[str, str], Path]:
    """(the wheel's venv, its environment, a working folder outside the checkout)."""
    work = tmp_path / "work"
    work.mkdir()
    return installed_wheel.venv, installed_wheel.env, work


@pytest.mark.slow
def test_installed_wheel_finds_its_bundles_and_trains(installed):
    venv, env, work = installed
    assert "usage: cggm-seg demo" in _run(["cggm-seg", "demo", "--help"], work, env)
    python = str(venv / "bin" / "python")
    origin = _run([python, "-c", "import cggm_seg; print(cggm_seg.__file__)"], work, env)
    assert Path(origin.strip()).is_relative_to(venv), origin  # not the checkout's editable install
    bundle = Path(_run(["cggm-seg", "bundle", "path", "brats_cggm"], work, env).strip())
    assert bundle.is_relative_to(venv) and (bundle / "configs" / "train.json").is_file()
    assert (bundle / "configs" / "logging.conf").is_file() and (bundle / "docs" / "README.md").is_file()

    _run(["cggm-seg", "synth", "brats", "--out", "data", "--cases", "4", "--size", "16"], work, env)
    _run(
        ["cggm-seg", "prepare", "brats", "--root", "data", "--out", "data/datalist.json", "--folds", "2"],
        work,
        env,
    )
    overrides = {
        "dataset_dir": str(work / "data"),
        "output_dir": str(work / "run"),
        "epochs": 1,
        "val_interval": 1,
        "device": "cpu",
        "amp": False,
        "roi_size": [16, 16, 16],
        "num_workers": 0,
        "network_def#channels": [4, 8, 16, 32],
    }
    args = [
        f"--{key}={json.dumps(value) if not isinstance(value, str) else value}"
        for key, value in overrides.items()
    ]
    _run(
        [python, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "train.json"), *args],
        work,
        env,
    )
    assert (work / "run" / "checkpoint_final.pt").is_file()
