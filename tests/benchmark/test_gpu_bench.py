"""`cggm-seg benchmark gpu`: runs end to end at a tiny CPU size and reports every number, finite and > 0."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from cggm_seg import cli
from cggm_seg.commands import benchmark_gpu

TINY = [
    "--device",
    "cpu",
    "--size",
    "24,24,16",
    "--roi",
    "16",
    "--steps",
    "2",
    "--cases",
    "2",
    "--workers",
    "0",
    "--loader-epochs",
    "1",
    "--set",
    "network_def#channels=[4,8,16,32]",
]


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    benchmark_gpu.add_arguments(parser)
    return parser.parse_args(argv)


def test_size_and_settings_parse_like_the_command_line() -> None:
    assert benchmark_gpu.parse_shape("240,240,155") == (240, 240, 155)
    for bad in ("240,240", "a,b,c", "0,1,1"):
        with pytest.raises(argparse.ArgumentTypeError):
            benchmark_gpu.parse_shape(bad)
    # --set uses the shared cggm_seg.commands.options.bundle_override (tested in test_bundle_helpers.py)
    args = _parse(["--set", "network_def#channels=[4,8]", "--set", "amp=false"])
    assert args.set == [("network_def#channels", [4, 8]), ("amp", False)]


def test_refuses_fewer_cases_than_a_batch(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["benchmark", "gpu", "--device", "cpu", "--cases", "1", "--batch", "2"]) == 2
    assert "fewer than one batch" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_cpu_run_reports_every_number(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    command = [sys.executable, "-m", "cggm_seg.cli", "benchmark", "gpu", *TINY, "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert json.loads(out.read_text()) == report

    assert report["environment"]["device"] == "cpu" and report["environment"]["nproc"] >= 1
    assert report["settings"]["size"] == [24, 24, 16]
    assert report["settings"]["set"] == {"network_def#channels": [4, 8, 16, 32]}
    for variant in ("none", "memory", "disk"):
        assert report["loader"][variant]["cases_per_s"] > 0
    assert report["loader"]["memory"]["cache_fill_s"] > 0 and report["loader"]["none"]["cache_fill_s"] is None
    train = report["train"]
    assert (train["joint"]["modulation"], train["cggm"]["modulation"]) == ("none", "cggm")
    for mode in ("joint", "cggm"):
        assert train[mode]["step_time_s"] > 0 and train[mode]["iterations_per_s"] > 0
        assert train[mode]["peak_memory_mib"] is None and train[mode]["amp"] is False  # CPU: no CUDA AMP
    assert math.isfinite(train["step_time_ratio"]) and train["step_time_ratio"] > 0
    inference = report["inference"]
    assert inference["volume_shape"] == [24, 24, 16] and len(inference["latency_s"]) == 2
    assert inference["latency_s_median"] > 0
    assert set(report["targets"]) >= {
        "step_time_ratio_max",
        "inference_s_per_case_max",
        "step_time_ratio_met",
        "inference_met",
    }
