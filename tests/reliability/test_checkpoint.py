"""Crash-safe checkpoints and honest resume (cggm_seg.checkpoint): the saver, the resume choice, what a
checkpoint restores, the non-finite-loss stop, and a training killed with SIGKILL at many points."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigWorkflow
from monai.engines.utils import IterationEvents
from monai.handlers import CheckpointLoader
from monai.optimizers import WarmupCosineSchedule
from monai.transforms import Compose, RandFlipd, RandSpatialCropd

from cggm_seg.checkpoint import (
    RandomStates,
    ResumeAtEpoch,
    RunRecord,
    SafeCheckpointSaver,
    check_network_fits,
    resume_checkpoint,
    run_identity,
)
from cggm_seg.errors import UserError
from cggm_seg.stop_on_nonfinite import StopOnNonFiniteLoss
from data_prep.brats_datalist import write_datalist
from data_prep.synth_brats import write_brats_dataset

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundles" / "brats_cggm" / "configs"
SPLIT = ([{"case_id": "a"}, {"case_id": "b"}], [{"case_id": "c"}])


def _engine() -> Engine:
    return Engine(lambda engine, batch: None)


def _state() -> dict:
    """Two objects, so that Ignite names the files ``checkpoint_...`` as in the bundles."""
    network = torch.nn.Linear(2, 2)
    return {"network": network, "optimizer": torch.optim.SGD(network.parameters(), lr=0.1)}


# ------------------------------------------------------------------------------------------ saving
def _fill_the_disk(obj, stream, *args, **kwargs):
    """``torch.save`` on a full disk: part of the file written, the OS's error under torch's own."""
    stream.write(b"partial")
    try:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None


def _os_error(code: int):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    return fail


@pytest.mark.parametrize(
    ("where", "failure", "reason"),
    [
        ("write", (torch, "save", _fill_the_disk), "No space left on device"),
        ("flush", (os, "fsync", _os_error(errno.EIO)), "Input/output error"),
        ("rename", (os, "replace", _os_error(errno.EACCES)), "Permission denied"),  # permission lost mid-run
    ],
    ids=["write", "flush", "rename"],
)
def test_a_failed_write_is_one_line_and_keeps_the_previous_checkpoint(
    tmp_path, monkeypatch, where, failure, reason
):
    saver = SafeCheckpointSaver(str(tmp_path), _state(), save_interval=1, n_saved=1)
    engine = _engine()
    saver.attach(engine)
    engine.run([0], max_epochs=1)
    previous = (tmp_path / "checkpoint_epoch=1.pt").read_bytes()

    monkeypatch.setattr(*failure)
    with pytest.raises(UserError) as info:
        engine.run([0], max_epochs=2)
    monkeypatch.undo()
    assert str(info.value) == f"checkpoint: cannot write {tmp_path / 'checkpoint_epoch=2.pt'}: {reason}"
    # Ignite asked to remove epoch 1 before writing epoch 2; it stays, whole, and no partial file is left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=1.pt"]
    assert (tmp_path / "checkpoint_epoch=1.pt").read_bytes() == previous


def test_a_save_that_fails_for_no_os_reason_keeps_its_traceback(tmp_path, monkeypatch):
    """Not the disk's doing (an object torch cannot save): a bug, not a user's mistake."""
    saver = SafeCheckpointSaver(str(tmp_path), _state(), save_interval=1)
    engine = _engine()
    saver.attach(engine)

    def cannot_save(*args, **kwargs):
        raise TypeError("cannot pickle 'generator' object")

    monkeypatch.setattr(torch, "save", cannot_save)
    with pytest.raises(TypeError, match="cannot pickle"):
        engine.run([0], max_epochs=1)
    assert list(tmp_path.iterdir()) == []


@contextlib.contextmanager
def _small_disk(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``folder`` (root only), or the test skipped saying why not."""
    folder.mkdir()
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
        )
    except FileNotFoundError:
        pytest.skip("no mount command to make a small full disk")
    if mounted.returncode:
        pytest.skip(f"cannot mount a {size} tmpfs to fill: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_is_one_line_naming_the_checkpoint(tmp_path):
    network = torch.nn.Linear(450, 450)  # 0.81 MB a checkpoint: the third does not fit in 2 MB beside two
    with _small_disk(tmp_path / "disk", "2m") as disk:
        saver = SafeCheckpointSaver(
            str(disk), {"network": network, "trainer": _engine()}, save_interval=1, n_saved=2
        )
        engine = _engine()
        saver.attach(engine)
        with pytest.raises(UserError) as info:
            engine.run([0], max_epochs=10)
        third = disk / "checkpoint_epoch=3.pt"
        assert str(info.value) == f"checkpoint: cannot write {third}: No space left on device"
        assert sorted(p.name for p in disk.iterdir()) == ["checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt"]
        assert all(_loads(disk / f"checkpoint_epoch={epoch}.pt") for epoch in (1, 2))


def test_the_replaced_checkpoint_goes_once_the_new_one_is_in_place(tmp_path):
    saver = SafeCheckpointSaver(
        str(tmp_path),
        _state(),
        save_interval=1,
        n_saved=2,
        save_final=True,
        final_filename="checkpoint_final.pt",
    )
    engine = _engine()
    saver.attach(engine)
    engine.run([0], max_epochs=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint_epoch=2.pt",
        "checkpoint_epoch=3.pt",
        "checkpoint_final.pt",
    ]


@pytest.mark.parametrize(("resumed_epoch", "left"), [(2, [2, 3]), (0, [1])])
def test_a_run_takes_over_the_checkpoints_it_finds(tmp_path, resumed_epoch, left):
    """Resumed from epoch 2: epochs 1-2 count towards n_saved=2; an abandoned run's epoch 5 goes, as do
    all of them when training starts from scratch (``resume`` false) - once its own first one is written."""
    for epoch in (1, 2, 5):
        (tmp_path / f"checkpoint_epoch={epoch}.pt").write_bytes(b"earlier")
    saver = SafeCheckpointSaver(str(tmp_path), _state(), save_interval=1, n_saved=2)
    engine = _engine()
    saver.attach(engine)
    engine.load_state_dict({"iteration": resumed_epoch, "epoch_length": 1, "max_epochs": resumed_epoch + 1})
    engine.run([0])
    assert sorted(tmp_path.iterdir()) == [tmp_path / f"checkpoint_epoch={epoch}.pt" for epoch in left]


def test_outputs_follow_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        saver = SafeCheckpointSaver(str(tmp_path), _state(), save_interval=1)
        engine = _engine()
        saver.attach(engine)
        engine.run([0], max_epochs=1)
    finally:
        os.umask(previous)
    assert (tmp_path / "checkpoint_epoch=1.pt").stat().st_mode & 0o777 == 0o640


def test_attaching_removes_what_an_interrupted_write_left(tmp_path):
    (tmp_path / ".checkpoint_epoch=3.a1b2c3d4.pt").write_bytes(b"partial")
    (tmp_path / ".model.a1b2c3d4.pt").write_bytes(b"partial")
    (tmp_path / ".notes.a1b2c3d4.pt").write_bytes(b"someone else's")
    SafeCheckpointSaver(str(tmp_path), _state(), save_interval=1).attach(_engine())
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.a1b2c3d4.pt"]


# ---------------------------------------------------------------------------------------- resuming
def _checkpoint(path: Path, identity: dict, network: torch.nn.Module | None = None) -> None:
    run = {"identity": identity, "best_metric": 0.5, "best_metric_epoch": 1, "best_model": {}}
    torch.save({"network": network.state_dict() if network else {}, "run": run}, path)


def test_resume_skips_a_checkpoint_that_does_not_load_naming_it(tmp_path, caplog):
    identity = run_identity(SPLIT, 0, "d.json")
    _checkpoint(tmp_path / "checkpoint_epoch=4.pt", identity)
    broken = tmp_path / "checkpoint_epoch=5.pt"
    broken.write_bytes(b"")
    (tmp_path / "checkpoint_epoch=6.pt").write_bytes(b"PK\x03\x04 not a whole zip")
    with caplog.at_level(logging.WARNING, logger="cggm_seg.checkpoint"):
        chosen = resume_checkpoint(tmp_path, identity, resume=True)
    assert chosen == str(tmp_path / "checkpoint_epoch=4.pt")
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and all("\n" not in w for w in warnings)
    assert warnings[0].startswith(f"resume: skipping {tmp_path / 'checkpoint_epoch=6.pt'}: it does not load")
    assert warnings[1].startswith(f"resume: skipping {broken}: it does not load (EOFError")
    assert resume_checkpoint(tmp_path, identity, resume=False) is None
    assert resume_checkpoint(tmp_path / "empty", identity, resume=True) is None


def test_resume_refuses_a_checkpoint_of_other_cases_unless_allowed(tmp_path):
    _checkpoint(tmp_path / "checkpoint_epoch=1.pt", run_identity(SPLIT, 0, "d.json"))
    other = run_identity((SPLIT[0][:1] + SPLIT[1], SPLIT[0][1:]), 1, "d.json")
    with pytest.raises(
        UserError,
        match=r"^resume: .*checkpoint_epoch=1.pt was trained on fold 0 of d.json "
        r"\(2 training cases\), this run is fold 1 .*--allow_other_fold true",
    ):
        resume_checkpoint(tmp_path, other, resume=True)
    assert resume_checkpoint(tmp_path, other, resume=True, allow_other=True).endswith("checkpoint_epoch=1.pt")
    moved = run_identity(SPLIT, 0, "/elsewhere/d.json")  # the same cases under a moved datalist
    assert resume_checkpoint(tmp_path, moved, resume=True).endswith("checkpoint_epoch=1.pt")
    torch.save({"network": {}}, tmp_path / "checkpoint_epoch=2.pt")
    with pytest.raises(UserError, match="has no run record"):
        resume_checkpoint(tmp_path, moved, resume=True)


def _net(affine: bool) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.InstanceNorm3d(2, affine=affine))


def test_weights_of_another_network_are_one_line_naming_file_and_difference(tmp_path):
    model = tmp_path / "model.pt"  # the best model: the state dict itself
    torch.save(_net(affine=False).state_dict(), model)
    check_network_fits(model, _net(affine=False))
    with pytest.raises(UserError) as info:
        check_network_fits(model, _net(affine=True))
    assert str(info.value) == (
        f"checkpoint: {model} was written with another network_def (2 weights missing, e.g. 1.bias); "
        "give the same network settings it was trained with (brats_cggm before 0.5.0: "
        "--network_def#norm instance)"
    )
    final = tmp_path / "checkpoint_final.pt"  # a training checkpoint: the weights under "network"
    torch.save({"network": _net(affine=True).state_dict(), "optimizer": {}}, final)
    with pytest.raises(UserError, match="2 unexpected weights, e.g. 1.bias"):
        check_network_fits(final, _net(affine=False))
    model.write_bytes(b"")
    with pytest.raises(UserError, match=rf"^checkpoint: {re.escape(str(model))} does not load \(EOFError"):
        check_network_fits(model, _net(affine=True))
    wider = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3), torch.nn.InstanceNorm3d(4, affine=True))
    with pytest.raises(UserError, match="4 of other shape, e.g. 0.bias"):
        check_network_fits(final, wider)


def test_resume_refuses_weights_of_another_network(tmp_path):
    identity = run_identity(SPLIT, 0, "d.json")
    path = tmp_path / "checkpoint_epoch=1.pt"
    _checkpoint(path, identity, _net(affine=False))
    assert resume_checkpoint(tmp_path, identity, resume=True, network=_net(affine=False)) == str(path)
    with pytest.raises(UserError, match=rf"^resume: {re.escape(str(path))} was written with another "):
        resume_checkpoint(tmp_path, identity, resume=True, network=_net(affine=True))


def _two_layers() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))


@pytest.mark.parametrize("saved_wrapped", [False, True], ids=["saved plain", "saved with module."])
@pytest.mark.parametrize("wrapped", [False, True], ids=["into plain", "into DDP-like wrapper"])
def test_weights_with_or_without_the_wrapper_prefix_load_into_either(tmp_path, saved_wrapped, wrapped):
    """A DDP run's files hold the network inside the wrapper (as Ignite saves it); a file that kept the
    wrapper's ``module.`` prefix (``torch.save(ddp.state_dict())``) loads too, at resume and evaluation."""
    torch.manual_seed(0)
    trained = _two_layers()
    weights = (torch.nn.DataParallel(trained) if saved_wrapped else trained).state_dict()
    torch.save(weights, tmp_path / "model.pt")
    identity = run_identity(SPLIT, 0, "d.json")
    torch.save({"network": weights, "run": {"identity": identity}}, tmp_path / "checkpoint_epoch=1.pt")
    network = _two_layers()
    loaded_into = torch.nn.DataParallel(network) if wrapped else network

    chosen = resume_checkpoint(tmp_path, identity, True, network=loaded_into)
    assert chosen == str(tmp_path / "checkpoint_epoch=1.pt")
    check_network_fits(tmp_path / "model.pt", loaded_into)
    CheckpointLoader(load_path=str(tmp_path / "model.pt"), load_dict={"network": loaded_into})(_engine())
    for name, value in trained.state_dict().items():
        assert torch.equal(network.state_dict()[name], value), name


def test_a_resume_goes_on_at_its_epoch_with_this_runs_epoch_length_and_schedule(tmp_path):
    """A checkpoint after epoch 2 of a run of 2 steps an epoch (another number of ranks), 4 epochs planned;
    this run takes 3 steps an epoch for 5 epochs: epochs 3-5 take 3 steps each, on this run's schedule."""

    def schedule(steps_per_epoch: int, epochs: int) -> WarmupCosineSchedule:
        optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
        return WarmupCosineSchedule(
            optimizer, warmup_steps=steps_per_epoch, t_total=epochs * steps_per_epoch, end_lr=0.01
        )

    saved = schedule(2, 4)
    for _ in range(4):
        saved.optimizer.step()
        saved.step()
    checkpoint = {
        "trainer": {"iteration": 4, "epoch_length": 2, "max_epochs": 4},
        "lr_scheduler": saved.state_dict(),
        "optimizer": saved.optimizer.state_dict(),
    }
    torch.save(checkpoint, tmp_path / "c.pt")
    this_run, uninterrupted = schedule(3, 5), schedule(3, 5)
    trainer = Engine(lambda engine, batch: this_run.optimizer.step())
    trainer.state.epoch_length = 3  # as MONAI's workflows set it, from the loader
    to_load = {"trainer": trainer, "lr_scheduler": this_run, "optimizer": this_run.optimizer}
    CheckpointLoader(load_path=str(tmp_path / "c.pt"), load_dict=to_load).attach(trainer)
    ResumeAtEpoch(this_run).attach(trainer)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda _: this_run.step())
    seen = []
    trainer.add_event_handler(
        Events.ITERATION_STARTED,
        lambda e: seen.append((e.state.epoch, e.state.iteration, this_run.optimizer.param_groups[0]["lr"])),
    )
    trainer.run([0, 1, 2], max_epochs=5)

    for _ in range(6):  # the uninterrupted run's first two epochs
        uninterrupted.optimizer.step()
        uninterrupted.step()
    expected = []
    for iteration in range(7, 16):
        expected.append(((iteration - 1) // 3 + 1, iteration, uninterrupted.optimizer.param_groups[0]["lr"]))
        uninterrupted.optimizer.step()
        uninterrupted.step()
    assert seen == expected


def test_the_run_record_restores_the_best_score(tmp_path):
    evaluator, saver = (
        Engine(lambda e, b: None),
        SafeCheckpointSaver(
            str(tmp_path),
            {"network": torch.nn.Linear(2, 2)},
            save_key_metric=True,
            key_metric_name="dice",
            key_metric_filename="model.pt",
        ),
    )
    evaluator.state.best_metric, evaluator.state.best_metric_epoch = 0.8, 3
    saver.load_state_dict({"_saved": [(0.8, "network_key_metric=0.8000.pt")]})
    state = RunRecord(run_identity(SPLIT, 0, "d.json"), evaluator, saver).state_dict()

    fresh, fresh_saver = (
        Engine(lambda e, b: None),
        SafeCheckpointSaver(
            str(tmp_path),
            {"network": torch.nn.Linear(2, 2)},
            save_key_metric=True,
            key_metric_name="dice",
            key_metric_filename="model.pt",
        ),
    )
    fresh.state.best_metric, fresh.state.best_metric_epoch = -1, -1
    RunRecord(run_identity(SPLIT, 0, "d.json"), fresh, fresh_saver).load_state_dict(state)
    assert (fresh.state.best_metric, fresh.state.best_metric_epoch) == (0.8, 3)
    fresh_saver.attach(fresh)
    fresh.add_event_handler(Events.EPOCH_STARTED, lambda e: e.state.metrics.update(dice=0.5))
    fresh.run([0], max_epochs=1)
    assert not (tmp_path / "model.pt").exists()  # 0.5 is worse than the restored 0.8


def test_random_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    transform = Compose([RandFlipd("x", prob=0.5), RandSpatialCropd("x", roi_size=(2,), random_size=False)])
    transform.set_random_state(7)
    states = RandomStates(type("Dataset", (), {"transform": transform})())
    torch.save({"rng": states.state_dict()}, tmp_path / "c.pt")
    draws = (
        torch.rand(3),
        np.random.rand(3),
        [t.R.rand() for t in (transform.transforms[0], transform.transforms[1].cropper)],
    )
    transform.set_random_state(99)
    torch.manual_seed(1)
    np.random.seed(1)
    states.load_state_dict(torch.load(tmp_path / "c.pt", weights_only=True)["rng"])
    again = (
        torch.rand(3),
        np.random.rand(3),
        [t.R.rand() for t in (transform.transforms[0], transform.transforms[1].cropper)],
    )
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]


# ---------------------------------------------------------------------------------- non-finite loss
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_loss_stops_before_the_step(value):
    engine = Engine(lambda e, b: e.fire_event(IterationEvents.BACKWARD_COMPLETED))
    engine.register_events(*IterationEvents)
    engine.add_event_handler(
        Events.ITERATION_STARTED, lambda e: setattr(e.state, "output", {"loss": torch.tensor(value)})
    )
    StopOnNonFiniteLoss().attach(engine)
    with pytest.raises(UserError, match=rf"^training: the loss is {value} at epoch 1, iteration 1; stopped"):
        engine.run([0], max_epochs=1)


# ------------------------------------------------------------------------------------ killed runs
#: run the bundle as `python -m monai.bundle run ARGS`, killed with SIGKILL where $KILL_AT says: half-way
#: through the first torch.save of a file whose name contains "save", or as iteration "iteration" starts
CHILD = r"""
import io, json, os, runpy, signal, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
spec = json.loads(os.environ.get("KILL_AT", "{}"))

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if "save" in spec:
    real_save = torch.save
    def save(obj, f, *args, **kwargs):
        if spec["save"] in Path(str(getattr(f, "name", f))).name:
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # the saver's open file
            f.flush()
            die()
        return real_save(obj, f, *args, **kwargs)
    torch.save = save
if "iteration" in spec:
    from monai.engines import SupervisedTrainer
    real_iteration = SupervisedTrainer._iteration
    def iteration(self, engine, batch):
        if engine.state.iteration == spec["iteration"]:
            die()
        return real_iteration(self, engine, batch)
    SupervisedTrainer._iteration = iteration
sys.argv = ["monai.bundle", "run", *sys.argv[1:]]
runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
"""


#: four epochs of two steps on 16^3 volumes on the CPU; `amp` the string `--amp false` arrives as
TINY_RUN = {
    "epochs": 4,
    "val_interval": 1,
    "roi_size": [16, 16, 16],
    "network_def#channels": [4, 8, 16, 32],
    "batch_size": 2,
    "sw_batch_size": 1,
    "warmup_epochs": 1,
    "num_workers": 0,
    "device": "cpu",
    "amp": "false",
}


def _train(dataset: Path, out: Path, kill_at: dict | None = None) -> subprocess.CompletedProcess:
    args = [
        "--config_file",
        str(CONFIGS / "train.json"),
        "--logging_file",
        str(CONFIGS / "logging.conf"),
        "--dataset_dir",
        str(dataset),
        "--output_dir",
        str(out),
    ]
    args += [
        word
        for key, value in TINY_RUN.items()
        for word in (f"--{key}", value if isinstance(value, str) else json.dumps(value))
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "KILL_AT": json.dumps(kill_at or {}),
    }
    return subprocess.run(
        [sys.executable, "-c", CHILD, *args], env=env, capture_output=True, text=True, timeout=300
    )


def _resumed_from(result: subprocess.CompletedProcess) -> str:
    lines = [
        line.split(" - ")[-1] for line in result.stdout.splitlines() if " - cggm_seg.checkpoint - " in line
    ]
    return next(line for line in lines if line.startswith("resume: "))


def _network(path: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return checkpoint.get("network", checkpoint)


def _loads(path: Path) -> bool:
    try:
        torch.load(path, weights_only=True)
        return True
    except Exception:
        return False


@pytest.mark.slow
def test_training_killed_at_any_point_resumes_to_the_same_weights(tmp_path):
    dataset = tmp_path / "brats"
    write_brats_dataset(dataset, cases=6, size=16, seed=0)
    write_datalist(dataset, dataset / "datalist.json", folds=3, seed=0)  # 4 training cases: 2 steps an epoch
    reference = ConfigWorkflow(  # uninterrupted, in this process (one torch thread, as the children)
        config_file=str(CONFIGS / "train.json"),
        workflow_type="train",
        logging_file=str(CONFIGS / "logging.conf"),
        dataset_dir=str(dataset),
        output_dir=str(tmp_path / "reference"),
        **TINY_RUN,
    )
    reference.initialize()
    reference.run()
    reference.finalize()

    out = tmp_path / "run"
    killed = _train(dataset, out, {"save": "model"})  # during the first write of model.pt
    assert killed.returncode == -signal.SIGKILL
    assert not any(p.name.endswith(".pt") and not p.name.startswith(".") for p in out.iterdir())

    killed = _train(dataset, out, {"save": "checkpoint_epoch=2"})  # during a checkpoint write
    assert killed.returncode == -signal.SIGKILL
    assert _resumed_from(killed).endswith("training starts from scratch")
    assert _loads(out / "checkpoint_epoch=1.pt") and _loads(out / "model.pt")
    assert not (out / "checkpoint_epoch=2.pt").exists()

    killed = _train(dataset, out, {"iteration": 6})  # half-way through epoch 3, between checkpoints
    assert killed.returncode == -signal.SIGKILL
    assert _resumed_from(killed) == f"resume: continuing from {out / 'checkpoint_epoch=1.pt'}"

    killed = _train(dataset, out, {"save": "checkpoint_final"})  # while writing the final checkpoint
    assert killed.returncode == -signal.SIGKILL
    assert _resumed_from(killed) == f"resume: continuing from {out / 'checkpoint_epoch=2.pt'}"

    finished = _train(dataset, out)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert _resumed_from(finished) == f"resume: continuing from {out / 'checkpoint_epoch=4.pt'}"
    assert sorted(p.name for p in out.glob("*.pt")) == [
        "checkpoint_epoch=3.pt",
        "checkpoint_epoch=4.pt",
        "checkpoint_final.pt",
        "model.pt",
    ]
    assert not list(out.glob(".*.pt"))  # the interrupted writes' temporary files are gone
    for name in ("checkpoint_final.pt", "model.pt"):
        expected, got = _network(tmp_path / "reference" / name), _network(out / name)
        assert expected.keys() == got.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6, msg=f"{name}: {key}")


@pytest.mark.slow
def test_a_full_disk_ends_a_bundle_run_in_one_line(tmp_path):
    dataset = tmp_path / "brats"
    write_brats_dataset(dataset, cases=4, size=32, seed=0)
    write_datalist(dataset, dataset / "datalist.json", folds=2, seed=0)
    # 1.1 MB model.pt and 2.3 MB checkpoints, two kept: the disk is full in epoch 3 (of TINY_RUN's 4)
    with _small_disk(tmp_path / "disk", "6m") as disk:
        result = _train(dataset, disk / "run")
        assert result.returncode == 1
        last = result.stderr.splitlines()[-1]
        assert re.fullmatch(
            rf"error: checkpoint: cannot write {re.escape(str(disk / 'run'))}/"
            r"(model|checkpoint_epoch=\d+)\.pt: No space left on device",
            last,
        ), last
        assert "Traceback" not in result.stdout + result.stderr  # Ignite and MONAI log it in one line too
        assert not list((disk / "run").glob(".*"))  # no partial file, no lock
        assert _loads(disk / "run" / "model.pt") and _loads(disk / "run" / "checkpoint_epoch=2.pt")
