"""The project as a user installs it: a wheel built from the checkout, in a fresh virtual environment.

Tests that run commands as users type them use this, never the checkout's editable install: a file
missing from the wheel, or a module a config uses without importing it, then fails here as it does
for a user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class InstalledWheel:
    venv: Path
    env: dict[str, str]  # the environment a user's shell would have: the venv's bin first on PATH

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> str:
    """stdout of ``args``; a non-zero exit fails with the ends of both streams."""
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args[:4]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result.stdout


def install_wheel(where: Path) -> InstalledWheel:
    """Build the wheel and install it into a new venv under ``where``.

    The dependencies (torch, MONAI, ...) come from this interpreter's site-packages as a plain path
    entry: path entries do not run their folder's .pth files, so the checkout's editable install stays
    out, and nothing is downloaded.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    wheels = where / "dist"
    build = ROOT / "build"
    had_build = build.exists()
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(ROOT),
        ],
        where,
        env,
    )
    if not had_build:  # setuptools builds in the checkout; leave it as it was
        shutil.rmtree(build, ignore_errors=True)
    venv = where / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], where, env)
    python = str(venv / "bin" / "python")
    target = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], where, env)
    Path(target.strip(), "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next(wheels.glob("cggm_seg-*.whl"))
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "install",
            "--no-deps",
            "--no-index",
            "-q",
            str(wheel),
        ],
        where,
        env,
    )
    return InstalledWheel(venv, {**env, "PATH": f"{venv / 'bin'}:{env.get('PATH', '')}"})
