"""A plain (non-editable) install works away from the checkout: the wheel carries the bundles,
`cggm-seg bundle path` finds them, and `python -m monai.bundle run` trains one epoch from there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args[:4]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], Path]:
    """(fresh venv, its environment, a working folder outside the checkout) with the wheel installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    wheels = tmp / "dist"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    build = ROOT / "build"
    had_build = build.exists()
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
          str(ROOT)], tmp, env)
    if not had_build:  # setuptools builds in the checkout; leave it as it was
        shutil.rmtree(build, ignore_errors=True)
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp, env)
    python = venv / "bin" / "python"
    target = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp, env)
    # the dependencies (torch, MONAI, ...) come from this environment's site-packages as a plain path
    # entry; path entries do not run its .pth files, so the checkout's editable install stays out
    Path(target.strip(), "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next(wheels.glob("cggm_seg-*.whl"))
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
          str(wheel)], tmp, env)
    work = tmp / "work"
    work.mkdir()
    return venv, {**env, "PATH": f"{venv / 'bin'}:{env.get('PATH', '')}"}, work


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
    _run(["cggm-seg", "prepare", "brats", "--root", "data", "--out", "data/datalist.json", "--folds", "2"],
         work, env)
    overrides = {"dataset_dir": str(work / "data"), "output_dir": str(work / "run"), "epochs": 1,
                 "val_interval": 1, "device": "cpu", "amp": False, "roi_size": [16, 16, 16], "num_workers": 0,
                 "network_def#channels": [4, 8, 16, 32]}
    args = [f"--{key}={json.dumps(value) if not isinstance(value, str) else value}"
            for key, value in overrides.items()]
    _run([python, "-m", "monai.bundle", "run", "--config_file",
          str(bundle / "configs" / "train.json"), *args], work, env)
    assert (work / "run" / "checkpoint_final.pt").is_file()

