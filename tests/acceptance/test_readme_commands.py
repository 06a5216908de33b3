"""Every shell command in README.md and in each bundle's docs/README.md, run as a user runs it.

Each README's ```bash blocks run in order in one scratch folder outside the checkout, each command its
own ``bash -c`` process in a fresh interpreter, with the project installed from its wheel (not the
editable install). Only what a user's machine would differ in is changed, and every change is listed
here:

- ``bundles/NAME/...`` resolves to the bundles the wheel installed (a ``bundles`` link in the folder);
- data placeholders (``/data/BraTS2021``, ...) become small synthetic folders in the public layout;
- bundle runs get :data:`SMALL` appended (CPU-sized: one epoch, 16^3 crops), ``torchrun`` two ranks,
  ``cggm-seg benchmark balance --bundle NAME`` one seed, two methods, one run at a time and the bundle's
  :data:`SMALL` as ``--set`` overrides,
  ``./run.sh demo`` is ``cggm-seg demo`` (``run.sh`` only adds the checkout's venv) at a tiny size;
- container commands (an engine's, ``./run.sh image``) and ``./run.sh test`` (this suite's own runner) are
  not run here.

Then each command's outputs are checked (:mod:`checks`), and a command marked ``# error: ...`` must
fail with one ``error:`` line.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest
from readme_checks import bundle_of, rule_for
from readme_recipes import Command, bash_commands

from data_prep.synth_brats import write_brats_dataset

ROOT = Path(__file__).resolve().parents[2]
READMES = [ROOT / "README.md", *sorted(ROOT.glob("bundles/*/docs/README.md"))]

#: appended to every ``monai.bundle run`` of a bundle: the smallest run that still trains, validates
#: (so ``model.pt`` exists) and infers
SMALL = {
    "brats_cggm": [
        "--epochs",
        "1",
        "--val_interval",
        "1",
        "--roi_size",
        "[16,16,16]",
        "--num_workers",
        "0",
        "--sw_batch_size",
        "1",
    ],
    "mosi_cggm": ["--epochs", "1"],
    "iemocap_cggm": ["--epochs", "1"],
    "food101_cggm": ["--epochs", "1"],
}
TINY_DEMO = ["--size", "32", "--epochs", "1", "--train-cases", "4", "--test-cases", "1"]
#: placeholder -> synthetic BraTS layout written there on first use
BRATS_PLACEHOLDERS = {"/data/BraTS2021": "brats2021", "/data/BraTS2023-GLI": "brats2023"}
#: commands not run here, by their first words, and why
NOT_RUN = {
    (
        "docker",
    ): "needs a container engine; tests/packaging/test_container_build.py builds and runs the image",
    (
        "podman",
    ): "needs a container engine; tests/packaging/test_container_build.py builds and runs the image",
    ("./run.sh", "image"): "builds the image; tests/packaging/test_container_build.py runs it",
}


def adapted(command: Command, work: Path) -> list[str] | str:
    """The command's words as run here, or why it is not run."""
    words = shlex.split(command.text, comments=True)
    for start, reason in NOT_RUN.items():
        if tuple(words[: len(start)]) == start:
            return reason
    if words[:2] == ["./run.sh", "test"]:
        return "this suite's own runner"
    if words[:2] == ["./run.sh", "demo"]:
        words = ["cggm-seg", "demo", *words[2:], *TINY_DEMO]
    for placeholder, layout in BRATS_PLACEHOLDERS.items():
        folder = work / placeholder.lstrip("/")
        if any(placeholder in w for w in words) and not folder.exists():
            write_brats_dataset(folder, cases=6, size=32, seed=0, layout=layout)
        words = [w.replace(placeholder, str(folder)) for w in words]
    if words[0] == "torchrun":
        words = [re.sub(r"^--nproc_per_node=\S+$", "--nproc_per_node=2", w) for w in words]
    if "monai.bundle" in words and "run" in words:
        words += SMALL[bundle_of(words)]
    if words[:3] == ["cggm-seg", "benchmark", "balance"] and "--bundle" in words:
        small = SMALL[words[words.index("--bundle") + 1]]
        sets = [w for key, value in zip(small[::2], small[1::2]) for w in ("--set", f"{key[2:]}={value}")]
        words += ["--seeds", "1", "--methods", "joint", "cggm_both", "--jobs", "1", *sets]
    return words


def snapshot(folder: Path) -> dict[Path, tuple[int, int]]:
    """(modification time, size) of every file under ``folder``, links not followed."""
    found = {}
    for parent, _, files in os.walk(folder):
        for name in files:
            path = Path(parent, name)
            stat = path.stat()
            found[path.resolve()] = (stat.st_mtime_ns, stat.st_size)
    return found


def run_command(command: Command, words: list[str], work: Path, env: dict[str, str]) -> None:
    before = snapshot(work)
    started = time.perf_counter()
    result = subprocess.run(
        ["bash", "-c", shlex.join(words)], cwd=work, env=env, capture_output=True, text=True, timeout=900
    )
    elapsed = time.perf_counter() - started
    where = f"{command.source}: {command.text}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    if command.expect_error:
        error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
        assert result.returncode != 0, f"documented as an error, but exited 0: {where}"
        assert len(error_lines) == 1 and "Traceback" not in result.stderr, f"not one error line: {where}"
    else:
        assert result.returncode == 0, f"exit {result.returncode}: {where}"
        after = snapshot(work)
        changed = {path for path, stamp in after.items() if before.get(path) != stamp}
        try:
            rule_for(words)(words, work, result.stdout, changed)
        except AssertionError as err:
            raise AssertionError(f"{command.source}: {command.text}\n{err}") from None
    print(f"{elapsed:6.1f} s  {command.source}  {command.text[:100]}")


@pytest.mark.slow
@pytest.mark.parametrize("readme", READMES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_readme_commands_run_as_written(readme: Path, installed_wheel, tmp_path: Path):
    commands = bash_commands(readme, ROOT)
    assert commands, f"{readme} shows no ```bash command"
    work = tmp_path / "work"
    work.mkdir()
    installed_bundles = Path(
        subprocess.run(
            ["cggm-seg", "bundle", "path", "brats_cggm"],
            env=installed_wheel.env,
            capture_output=True,
            text=True,
            check=True,
            cwd=work,
        ).stdout.strip()
    ).parent
    (work / "bundles").symlink_to(installed_bundles)
    env = installed_wheel.env
    for command in commands:
        words = adapted(command, work)
        if isinstance(words, str):
            print(f"  not run  {command.source}  {command.text[:80]}: {words}")
            continue
        run_command(command, words, work, env)
