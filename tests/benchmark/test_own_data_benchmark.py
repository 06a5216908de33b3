"""The benchmark on a user's data (``cggm-seg benchmark balance --bundle``): options checked in one line
before anything runs, ``--plan``, the work folder's configuration and resume, one run per GPU or core;
and, end to end, a benchmark killed part-way on a BraTS folder laid out as a user's and run again,
repeating no finished run."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_brats import TINY, prepared_brats

from cggm_seg import cli
from cggm_seg.benchmark.balance import run_devices, visible_gpus
from cggm_seg.benchmark.own_data import own_data_task
from cggm_seg.benchmark.plan import schedule, time_left
from cggm_seg.benchmark.run import bundle_parser
from cggm_seg.benchmark.tasks import SETTINGS, BratsTask, ShortcutTask
from cggm_seg.benchmark.timing import COST_REPEATS
from cggm_seg.benchmark.work import check_work, configuration, prepare_data, work_folder
from cggm_seg.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
#: the user's overrides of the tests' runs: the tiny BraTS bundle, 2 epochs of 2 iterations
SETS = [("epochs", 2), *TINY.items()]
METHODS = ["joint", "cggm_both"]


def own_args(dataset: Path, work: Path, sets=SETS) -> list[str]:
    words = ["benchmark", "balance", "--bundle", "brats_cggm", "--dataset_dir", str(dataset)]
    words += ["--work", str(work), "--seeds", "1", "--methods", *METHODS]
    return words + [w for key, value in sets for w in ("--set", f"{key}={json.dumps(value)}")]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Six phantoms in the BraTS 2021 layout, a 3-fold datalist: 2 test, 2 validation, 2 training cases."""
    return prepared_brats(tmp_path_factory.mktemp("BraTS2021"), cases=6, folds=3)


def test_runs_go_one_per_gpu_or_one_per_core():
    assert run_devices(3, []) == [None, None, None]
    assert run_devices(2, ["0", "1", "2"]) == ["0", "1"]
    assert run_devices(2, ["3", "5"]) == ["3", "5"]
    with pytest.raises(
        UserError, match=r"--jobs: 3 runs at a time need one GPU each; 2 are visible \(3, 5\)"
    ):
        run_devices(3, ["3", "5"])


def test_visible_gpus_are_named_as_cuda_visible_devices_names_them(monkeypatch):
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpus() == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert visible_gpus() == ["3", "5"]
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    assert visible_gpus() == []


def test_time_left_is_the_finished_runs_mean_over_the_runs_at_a_time():
    assert time_left([], 4, 1) is None and time_left([60.0], 0, 1) is None
    assert time_left([60.0, 180.0], 3, 1) == "6 min"
    assert time_left([3600.0], 4, 2) == "2 h 00 min"
    assert time_left([600.0], 1, 4) == "10 min"  # one run left runs alone


def test_builtin_and_own_brats_tasks_get_their_split_from_the_bundle(dataset, tmp_path):
    """One code path: the built-in task is a datalist plus overrides, as a user's data set is."""
    own = own_data_task("brats_cggm", dataset, None, [], METHODS)
    builtin = BratsTask(SETTINGS["brats"]["quick"])
    for task, data_dir in ((own, None), (builtin, dataset)):
        parser = bundle_parser([task.train_config], task.train_overrides(data_dir, tmp_path / "run"))
        train, val = parser.get_parsed_content("split")
        assert {e["fold"] for e in train} == {2} and {e["fold"] for e in val} == {1}
        assert len(train) == len(val) == 2
    assert own.task_overrides(None) == {"dataset_dir": str(dataset)}
    assert (
        own.data_dir(tmp_path, 0) is None
        and builtin.data_dir(tmp_path, 0) == tmp_path / "brats" / "data" / "seed0"
    )


def test_sequence_bundle_on_a_users_data_file(tmp_path):
    from data_prep.synth_mosi import make_mosi

    data = make_mosi("mult", 60, 0)
    (tmp_path / "mosi_data_noalign.pkl").write_bytes(pickle.dumps(data, protocol=4))
    task = own_data_task("mosi_cggm", tmp_path, None, [("batch_size", 16)], METHODS, weak="vision")
    assert (task.weak, task.dominant, task.modalities) == ("vision", "text", ("text", "audio", "vision"))
    assert task.variants()["unimodal_weak"].settings == {"modality": "vision"}
    length = schedule(task, None)
    assert (length.epochs, length.cases, length.per_epoch) == (30, len(data["train"]["labels"]), 4)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--weak-modality", "dwi"], "--weak-modality: 'dwi' is not one of the bundle's modalities"),
        (["--dominant-modality", "flair"], "--weak-modality: flair is also the dominant modality"),
        (["--set", "epoch=3"], "--set epoch: the bundle brats_cggm has no config id 'epoch'"),
        (["--set", "output_dir=x"], "--set output_dir: every benchmark run sets it"),
        (["--set", "cggm#lambda=0.3"], "--set cggm#lambda: every benchmark run sets it"),
        (["--set", "dataset_dir=x"], "--set dataset_dir: give it as --dataset_dir"),
        (["--datalist", "missing.json"], "--datalist: the bundle's datalist"),
        (["--quick"], "--quick: the built-in tasks' option"),
        (["--jobs", "0"], "--jobs: expected at least 1"),
    ],
)
def test_a_wrong_option_is_one_line_before_anything_runs(dataset, tmp_path, capsys, extra, message):
    work = tmp_path / "work"
    assert cli.main([*own_args(dataset, work), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not work.exists()


def test_own_data_options_need_bundle(capsys):
    assert cli.main(["benchmark", "balance", "--set", "epochs=2", "--plan"]) == 2
    assert "--set: a setting of a user's data set; give --bundle too" in capsys.readouterr().err


def test_a_datalist_without_three_folds_is_refused_in_one_line(tmp_path, capsys):
    two_folds = prepared_brats(tmp_path / "BraTS", cases=4, folds=2)
    assert cli.main([*own_args(two_folds, tmp_path / "work"), "--plan"]) == 2
    assert "tests on fold 0, validates on fold 1 and trains on the others" in capsys.readouterr().err


def test_plan_lists_every_run_with_the_bundles_epochs_and_iterations(dataset, tmp_path, capsys):
    work = tmp_path / "work"
    assert cli.main([*own_args(dataset, work), "--plan", "--jobs", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        "brats_cggm: 2 epochs of 2 iterations (2 training cases, batch 1, the last partial batch dropped) "
        "= 4 training iterations a run"
    )
    assert lines[1:3] == [
        f"  brats_cggm/runs/{m}_seed0: {m}, seed 0, 2 epochs = 4 training iterations: to run" for m in METHODS
    ]
    cost = [line for line in lines if "cost only" in line]  # --jobs 2: the cost pass of one epoch a run
    assert len(cost) == COST_REPEATS * len(METHODS) and all(
        "1 epoch = 2 training iterations" in c for c in cost
    )
    assert lines[-1] == f"{2 + len(cost)} runs: 0 finished, {2 + len(cost)} to run"
    assert not work.exists()  # nothing written


def test_work_folder_refuses_another_configuration_and_other_folders(dataset, tmp_path):
    work = tmp_path / "work"
    task = own_data_task("brats_cggm", dataset, None, [("epochs", 2)], METHODS)
    with work_folder(work, configuration([task], ["joint"])):
        pass
    with work_folder(work, configuration([task], METHODS)):  # more methods continue the same runs
        pass
    assert set(json.loads((work / "benchmark.json").read_text())["tasks"]["brats_cggm"]["methods"]) == set(
        METHODS
    )
    longer = own_data_task("brats_cggm", dataset, None, [("epochs", 3)], METHODS)
    with pytest.raises(
        UserError, match=r"another configuration \(brats_cggm\.overrides\.epochs: 2 there, 3 now\)"
    ):
        check_work(work, configuration([longer], METHODS))
    stored = json.loads(
        (work / "benchmark.json").read_text()
    )  # as if the method's defaults had changed since
    stored["tasks"]["brats_cggm"]["methods"]["cggm_both"]["settings"]["lambda"] = 0.5
    (work / "benchmark.json").write_text(json.dumps(stored))
    with pytest.raises(UserError, match=r"\(brats_cggm cggm_both\.settings\.lambda: 0\.5 there, 0\.1 now\)"):
        check_work(work, configuration([task], METHODS))
    other = tmp_path / "other"
    (other / "mine").mkdir(parents=True)
    with pytest.raises(UserError, match="is not empty; give a new folder"):
        check_work(other, configuration([task], METHODS))
    assert [p.name for p in other.iterdir()] == ["mine"]


def test_a_changed_datalist_is_another_configuration(tmp_path):
    dataset = prepared_brats(tmp_path / "BraTS", cases=6, folds=3)
    task = own_data_task("brats_cggm", dataset, None, [], METHODS)
    with work_folder(tmp_path / "work", configuration([task], METHODS)):
        pass
    from data_prep.brats_datalist import write_datalist

    write_datalist(dataset, dataset / "datalist.json", folds=3, seed=1, force=True)
    changed = own_data_task("brats_cggm", dataset, None, [], METHODS)
    with pytest.raises(UserError, match=r"brats_cggm\.data_file\.sha256"):
        check_work(tmp_path / "work", configuration([changed], METHODS))


def test_synthetic_data_is_written_once_and_never_left_half_written(tmp_path):
    task = ShortcutTask(SETTINGS["shortcut"]["quick"])
    partial = tmp_path / "shortcut" / "data" / ".seed0.partial"  # what a benchmark killed while writing left
    partial.mkdir(parents=True)
    (partial / "half.pkl").write_bytes(b"")
    prepare_data(task, 0, tmp_path)
    data = task.data_dir(tmp_path, 0)
    assert [p.name for p in data.iterdir()] == [task.file_name] and not partial.exists()
    stamp = (data / task.file_name).stat().st_mtime_ns
    prepare_data(task, 0, tmp_path)
    assert (data / task.file_name).stat().st_mtime_ns == stamp


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")}


@pytest.mark.slow
def test_a_killed_benchmark_continues_without_repeating_a_finished_run(dataset, tmp_path, capsys):
    work = tmp_path / "work"
    command = [sys.executable, "-m", "cggm_seg.cli", *own_args(dataset, work)]
    runs = work / "brats_cggm" / "runs"
    first, second = runs / "joint_seed0" / "result.json", runs / "cggm_both_seed0" / "result.json"
    midway = runs / "cggm_both_seed0" / "checkpoint_epoch=1.pt"  # the second run, half done
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    process = subprocess.Popen(command, cwd=tmp_path, start_new_session=True, **quiet)
    try:
        deadline = time.monotonic() + 300
        while not midway.is_file() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the benchmark, its fork server and the run under way
        process.wait()
    assert first.is_file() and midway.is_file(), "the first run did not finish, or the second not start"
    assert not second.exists(), "killed too late: the second run had finished"
    joint = _files(runs / "joint_seed0")

    assert cli.main([*own_args(dataset, work), "--plan"]) == 0
    plan = capsys.readouterr().out
    assert "joint_seed0: joint, seed 0, 2 epochs = 4 training iterations: finished" in plan
    assert (
        "cggm_both_seed0: cggm_both, seed 0, 2 epochs = 4 training iterations: unfinished, to run again"
        in plan
    )
    assert "2 runs: 1 finished, 1 to run; about " in plan

    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[1/2] brats_cggm joint seed 0: finished earlier, not run again" in again.stderr
    assert "cggm_both_seed0 holds an unfinished run: it is run again from the start" in again.stderr
    assert "[2/2] brats_cggm cggm_both seed 0: validation dice_mean" in again.stderr
    assert again.stderr.count("validation dice_mean") == 1, again.stderr  # one run trained, not two
    assert _files(runs / "joint_seed0") == joint  # the finished run's folder untouched
    assert second.is_file()
    page = (work / "BENCHMARK.md").read_text()
    assert "## brats_cggm" in page and "| joint |" in page and "| cggm_both |" in page
    assert "--bundle brats_cggm --dataset_dir" in page and "--set epochs=2" in page
    assert "Every seed *s* reads the same data, the user's," in page  # not "draws its own data set"
    results = json.loads((work / "benchmark" / "results.json").read_text())
    assert sorted(r["variant"] for r in results["runs"]) == sorted(METHODS)

    longer = [("epochs", 3), *TINY.items()]
    assert cli.main([*own_args(dataset, work, longer), "--plan"]) == 2
    assert "(brats_cggm.overrides.epochs: 2 there, 3 now)" in capsys.readouterr().err
