"""The `cggm-seg` entry point, the demo at a tiny size and the overhead benchmark."""

from __future__ import annotations

import json

import pytest

from cggm_seg.benchmark.overhead import measure_overhead
from cggm_seg.cli import COMMANDS, main


def test_every_command_module_has_the_cli_contract():
    import importlib

    for entry in COMMANDS.values():
        for _, module_name in entry.values() if isinstance(entry, dict) else [entry]:
            module = importlib.import_module(module_name)
            assert callable(module.add_arguments) and callable(module.main), module_name
            assert module.__doc__, module_name


def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "x").write_text("")
    assert main(["demo", "--out", str(tmp_path), "--size", "40"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "cggm-seg demo: error: --size: 40 must be a multiple of 16 and at least 32"
    assert main(["demo", "--out", str(tmp_path), "--size", "32", "--epochs", "1"]) == 2
    assert "is not empty" in capsys.readouterr().err


def test_force_refuses_a_folder_the_demo_did_not_write(tmp_path, capsys):
    (tmp_path / "thesis.tex").write_text("years of work")
    (tmp_path / "run").mkdir()
    argv = ["demo", "--out", str(tmp_path), "--size", "32", "--epochs", "1", "--force"]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        f"cggm-seg demo: error: --force: {tmp_path} was not written by `cggm-seg demo` (no "
        ".cggm-seg-demo.json in it), so nothing in it is removed; choose another --out or empty it yourself"
    )
    (tmp_path / ".cggm-seg-demo.json").write_text(json.dumps({"written_by": "cggm-seg demo"}))
    assert main(argv) == 2  # a demo's folder, but the user put something of theirs beside its outputs
    assert "also holds thesis.tex, which `cggm-seg demo` did not write" in capsys.readouterr().err
    assert (tmp_path / "thesis.tex").read_text() == "years of work" and (tmp_path / "run").is_dir()


def test_force_clears_an_earlier_demo_output_and_nothing_it_links_to(tmp_path):
    from cggm_seg.commands.demo import MARKER, claim_output

    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "keep").mkdir(parents=True)
    out = tmp_path / "demo"
    claim_output(out, force=False)
    (out / "run").mkdir()
    (out / "run" / "model.pt").write_bytes(b"")
    (out / "summary.json").write_text("{}")
    (out / "data").symlink_to(elsewhere)
    claim_output(out, force=True)
    assert sorted(p.name for p in out.iterdir()) == [MARKER] and (elsewhere / "keep").is_dir()


@pytest.mark.slow
def test_demo_runs_end_to_end_at_a_tiny_size(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(
        [
            "demo",
            "--out",
            str(out),
            "--train-cases",
            "4",
            "--test-cases",
            "2",
            "--size",
            "32",
            "--epochs",
            "1",
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_cases"] == 2
    for key in ("dice_wt", "dice_tc", "dice_et", "dice_mean", "wall_time_s"):
        assert 0.0 <= summary[key] and (key == "wall_time_s" or summary[key] <= 1.0), key
    assert "dice_mean" in capsys.readouterr().out
    assert (out / "run" / "model.pt").is_file() and (out / "eval" / "scores.csv").is_file()


@pytest.mark.parametrize("direction", ["weights", "gradient"])
def test_overhead_benchmark_reports_ratios(direction):
    result = measure_overhead(
        size=16, batch_size=1, steps=3, direction=direction, rounds=1, channels=(2, 4, 8, 16)
    )
    assert result["direction"] == direction
    assert result["time_ratio"] > 0 and result["joint_step_s"] > 0 and result["cggm_step_s"] > 0
    assert set(result) >= {"memory_ratio", "joint_peak_mib", "cggm_peak_mib", "device", "threads"}


def test_overhead_benchmark_rejects_bad_settings():
    from cggm_seg.errors import UserError

    with pytest.raises(UserError, match="--size: 20 must be a multiple of 8"):
        measure_overhead(size=20, batch_size=1, steps=3, direction="weights")
    with pytest.raises(UserError, match="--steps: 2 must be more than"):
        measure_overhead(size=16, batch_size=1, steps=2, direction="weights")
