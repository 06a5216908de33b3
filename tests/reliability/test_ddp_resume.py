"""A BraTS training under ``torchrun`` resumes: killed, it ends with the weights of an uninterrupted run;
its checkpoints continue under another number of ranks and in one process, a single process's under
DDP, and evaluation loads its ``model.pt`` (cggm_seg.checkpoint: the network compared unwrapped,
``ResumeAtEpoch``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow
from tiny_brats import CONFIGS, TINY, prepared_brats


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """6 cases in 3 folds: 4 train, so an epoch is 2 steps under 2 ranks and 4 in one process."""
    return prepared_brats(tmp_path_factory.mktemp("brats"), cases=6, folds=3)


def _torchrun(dataset: Path, out: Path, epochs: int, ranks: int = 2, **settings) -> list[str]:
    """The README's multi-GPU command, on the CPU (gloo)."""
    settings = {**TINY, **settings, "epochs": epochs}
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={ranks}",
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        json.dumps([str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json")]),
        "--logging_file",
        str(CONFIGS / "logging.conf"),
        f"--dataset_dir={dataset}",
        f"--output_dir={out}",
        *(f"--{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in settings.items()),
    ]


def _run(command: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def _logged(result: subprocess.CompletedProcess, logger: str) -> list[str]:
    return [line.split(" - ")[-1] for line in result.stdout.splitlines() if f" - {logger} - " in line]


def _resumed_from(result: subprocess.CompletedProcess) -> set[str]:
    """What each rank said it continues from."""
    return set(_logged(result, "cggm_seg.checkpoint"))


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants: torchrun starts its ranks in sessions of their own."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):  # ended meanwhile
            continue
    tree = [pid]
    for parent in tree:
        tree.extend(child for child, its_parent in parents.items() if its_parent == parent)
    return tree


def _network(path: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return checkpoint.get("network", checkpoint)


def _in_process(dataset: Path, out: Path, configs: list[str], **settings) -> ConfigWorkflow:
    flow = ConfigWorkflow(
        config_file=[str(CONFIGS / c) for c in configs],
        workflow_type="train",
        logging_file=str(CONFIGS / "logging.conf"),
        dataset_dir=str(dataset),
        output_dir=str(out),
        **{**TINY, **settings},
    )
    flow.initialize()
    return flow


@pytest.mark.slow
def test_a_killed_ddp_run_resumes_to_the_weights_of_an_uninterrupted_one(dataset, tmp_path):
    reference, out = tmp_path / "reference", tmp_path / "run"
    _run(_torchrun(dataset, reference, epochs=3))
    assert not any(k.startswith("module.") for k in _network(reference / "checkpoint_epoch=3.pt"))

    # every process of the run killed (a node lost) once epoch 1 is saved and epoch 2 is under way
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with (tmp_path / "killed.err").open("w") as err:
        killed = subprocess.Popen(
            _torchrun(dataset, out, epochs=3), env=env, stdout=subprocess.DEVNULL, stderr=err
        )
        deadline = time.monotonic() + 300
        while not (
            (out / "checkpoint_epoch=1.pt").exists()
            and "Epoch [2/3]" in (tmp_path / "killed.err").read_text()
        ):
            assert killed.poll() is None and time.monotonic() < deadline, "the run ended before epoch 2"
            time.sleep(0.01)
        for pid in _process_tree(killed.pid):
            os.kill(pid, signal.SIGKILL)
        killed.wait()
    assert not (out / "checkpoint_epoch=2.pt").exists(), "killed too late: epoch 2 was saved"

    resumed = _run(_torchrun(dataset, out, epochs=3))
    assert _resumed_from(resumed) == {f"resume: continuing from {out / 'checkpoint_epoch=1.pt'}"}
    assert any("which is no longer running" in line for line in _logged(resumed, "cggm_seg.run_lock"))
    for name in ("checkpoint_final.pt", "model.pt"):
        expected, got = _network(reference / name), _network(out / name)
        assert expected.keys() == got.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=f"{name}: {key}")


@pytest.mark.slow
def test_checkpoints_continue_under_other_numbers_of_ranks_and_evaluate(dataset, tmp_path):
    ddp = tmp_path / "ddp"
    _run(_torchrun(dataset, ddp, epochs=1))
    evaluation = _in_process(dataset, ddp, ["train.json", "evaluate.json"], fold=0)
    evaluation.run()
    assert json.loads((ddp / "eval" / "summary.json").read_text())["n_cases"] == 2

    # the 2-rank checkpoint in one process: 4 steps an epoch from epoch 2 on, not the checkpoint's 2
    single = Path(shutil.copytree(ddp, tmp_path / "single"))
    flow = _in_process(dataset, single, ["train.json"], epochs=2)
    flow.run()
    state = flow.trainer.state
    assert (state.epoch, state.iteration, state.epoch_length) == (2, 8, 4)
    scheduler = flow.parser.get_parsed_content("lr_scheduler")
    assert (scheduler.t_total, scheduler.last_epoch) == (8, 8)  # this run's schedule, at its end

    # that single process's checkpoint under 2 ranks, then the 2-rank one under 1 rank
    resumed = _run(_torchrun(dataset, single, epochs=3))
    assert _resumed_from(resumed) == {f"resume: continuing from {single / 'checkpoint_epoch=2.pt'}"}
    assert torch.load(single / "checkpoint_final.pt", weights_only=True)["trainer"]["iteration"] == 3 * 2
    resumed = _run(_torchrun(dataset, ddp, epochs=2, ranks=1))
    assert _resumed_from(resumed) == {f"resume: continuing from {ddp / 'checkpoint_epoch=1.pt'}"}
    assert torch.load(ddp / "checkpoint_final.pt", weights_only=True)["trainer"]["iteration"] == 2 * 4
