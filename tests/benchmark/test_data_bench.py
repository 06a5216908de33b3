"""`cggm-seg benchmark data`: runs end to end in a fresh process at a tiny size and reports every number."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cggm_seg.data_cache import DATA_CACHES

TINY = ["--size", "32,32,24", "--roi", "16", "--cases", "2", "--repeats", "2", "--workers", "0"]


def test_tiny_run_reports_each_data_cache(tmp_path: Path) -> None:
    out = tmp_path / "data.json"
    command = [sys.executable, "-m", "cggm_seg.cli", "benchmark", "data", *TINY, "--loader-epochs", "1"]
    result = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert json.loads(out.read_text()) == report

    assert report["settings"]["config"] == "bundles/brats_cggm/configs/train.json"
    seconds = report["seconds_of_one_core_per_case"]
    assert set(seconds) == set(DATA_CACHES) and all(s > 0 for s in seconds.values())
    assert seconds["none"] > seconds["memory"]  # preparing is part of every draw only without a cache
    assert len(report["prepare_s"]) == len(report["disk_read_and_augment_s"]) == 2
    # float16 images (4 channels) and uint8 regions (3) of the brain's box: 11 bytes a voxel, plus a header
    voxels = [a * b * c for a, b, c in report["prepared_shape"]]
    assert report["bytes_per_case"]["memory"] >= 11 * min(voxels)
    assert report["bytes_per_case"]["disk"] > report["bytes_per_case"]["memory"]
    assert max(voxels) < 32 * 32 * 24  # cut to the brain
    for setting in DATA_CACHES:
        assert report["loader"][setting]["cases_per_s"] > 0
    assert report["loader"]["none"]["cache_fill_s"] is None and report["loader"]["disk"]["cache_fill_s"] > 0
    assert set(report["targets"]) >= {"augment_met", "stored_case_met"}
