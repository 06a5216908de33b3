"""A case file damaged after `prepare` stops a bundle run with one line naming the case and the file,
whatever the loader's worker count, in training and in inference."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from tiny_brats import CONFIGS, TINY, prepared_brats


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> tuple[Path, Path]:
    """A prepared 4-case folder whose last case's T1 was truncated afterwards; (root, that file)."""
    root = prepared_brats(tmp_path_factory.mktemp("brats"))
    t1 = sorted(root.glob("*/*_t1.nii.gz"))[-1]
    t1.write_bytes(t1.read_bytes()[: t1.stat().st_size // 2])
    return root, t1


def run(config: str, root: Path, out: Path, **overrides) -> subprocess.CompletedProcess:
    args = [f"--{key}={json.dumps(value)}" for key, value in {**TINY, **overrides}.items()]
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(CONFIGS / config),
        "--dataset_dir",
        str(root),
        "--output_dir",
        str(out),
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_training_names_the_case_and_file_it_cannot_read(damaged, tmp_path, workers):
    root, t1 = damaged
    result = run("train.json", root, tmp_path / "run", num_workers=workers)
    case = t1.parent.name
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert (
        last == f"error: case {case}: cannot read {t1} (LoadImaged: EOFError: Compressed file ended "
        "before the end-of-stream marker was reached)"
    ), result.stderr[-3000:]
    assert [line for line in result.stderr.splitlines() if "error:" in line] == [last]


@pytest.mark.slow
def test_inference_names_the_case_and_file_it_cannot_read(damaged, tmp_path):
    root, t1 = damaged
    out = tmp_path / "run"
    out.mkdir()
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser["network_def#channels"] = TINY["network_def#channels"]
    torch.save(parser.get_parsed_content("network_def").state_dict(), out / "model.pt")  # any weights do
    result = run("inference.json", root, out, num_workers=2)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: case {t1.parent.name}: cannot read {t1} "), result.stderr[-3000:]
