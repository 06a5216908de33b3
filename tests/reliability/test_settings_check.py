"""Numeric bundle settings are checked before a run writes anything: one line naming the setting."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from tiny_brats import CONFIGS, prepared_brats

from cggm_seg.errors import UserError
from cggm_seg.preflight import check_settings


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("epochs", -1, "epochs: -1 must be an integer >= 1"),
        ("epochs", 2.5, "epochs: 2.5 must be an integer >= 1"),
        ("batch_size", 0, "batch_size: 0 must be an integer >= 1"),
        ("num_workers", -2, "num_workers: -2 must be an integer >= 0"),
        ("learning_rate", "nan", "learning_rate: 'nan' must be a number > 0"),  # what fire hands over
        ("learning_rate", math.nan, "learning_rate: nan must be a number > 0"),
        ("learning_rate", math.inf, "learning_rate: inf must be a number > 0"),
        ("learning_rate", 0, "learning_rate: 0 must be a number > 0"),
        ("weight_decay", -1e-4, "weight_decay: -0.0001 must be a number >= 0"),
        ("cache_rate", 1.5, "cache_rate: 1.5 must be a number in [0, 1]"),
        ("sw_overlap", 1.0, "sw_overlap: 1.0 must be a number in [0, 1)"),
        ("val_interval", True, "val_interval: True must be an integer >= 1"),
        ("roi_size", [0, 0, 0], "roi_size: [0, 0, 0] must list the crop's edges in voxels, each >= 1"),
        ("roi_size", [128, -1, 128], "roi_size: [128, -1, 128] must list"),
        ("roi_size", "128", "roi_size: '128' must list"),
    ],
)
def test_each_bad_value_is_one_line_naming_the_setting(name, value, expected):
    with pytest.raises(UserError) as raised:
        check_settings(**{name: value})
    assert str(raised.value).startswith(expected) and "\n" not in str(raised.value)


def test_the_bundles_defaults_and_edges_pass():
    assert check_settings(
        epochs=1,
        val_interval=5,
        batch_size=2,
        num_workers=0,
        warmup_epochs=0,
        learning_rate=0.01,
        final_learning_rate=0.0,
        weight_decay=0,
        cache_rate=1.0,
        momentum=0.9,
        sw_overlap=0.0,
        sw_batch_size=1,
        roi_size=[16, 16, 16],
        grad_clip=0.8,
        head_learning_rate=6e-3,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, line",
    [
        (("--epochs", "-1"), "error: epochs: -1 must be an integer >= 1"),
        (("--batch_size", "0"), "error: batch_size: 0 must be an integer >= 1"),
        (("--learning_rate", "nan"), "error: learning_rate: 'nan' must be a number > 0"),
        (("--roi_size", "[0,0,0]"), "error: roi_size: [0, 0, 0] must list the crop's edges"),
        (("--cggm#rho", "0"), "error: cggm#rho: "),
        (("--cggm#lambda", "-1"), "error: cggm#lambda: "),
        (("--modulation", "cgm"), "error: modulation: 'cgm' is not one of"),
    ],
)
def test_a_refused_setting_is_one_line_and_leaves_output_dir_as_it_was(tmp_path, override, line):
    root = prepared_brats(tmp_path / "data")
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(CONFIGS / "train.json"),
        "--dataset_dir",
        str(root),
        "--output_dir",
        str(out),
        "--device",
        "cpu",
        *override,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    errors = [text for text in result.stderr.splitlines() if "error:" in text]
    assert len(errors) == 1 and errors[0].startswith(line), result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
