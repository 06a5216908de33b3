"""The BraTS bundle end to end on tiny synthetic volumes: train, resume, evaluate, inference, DDP."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow, verify_net_in_out

from cggm_seg.checkpoint import epoch_checkpoints
from cggm_seg.errors import UserError
from data_prep.brats_datalist import write_datalist
from data_prep.synth_brats import write_brats_dataset

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundles" / "brats_cggm" / "configs"
TINY = {
    "roi_size": [32, 32, 32],
    "num_workers": 0,
    "network_def#channels": [4, 8, 16, 32],
    "device": "cpu",
    "amp": False,
    "warmup_epochs": 1,
    "val_interval": 1,
    "sw_batch_size": 1,
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("brats")
    write_brats_dataset(root, cases=4, size=32, seed=0)
    write_datalist(root, root / "datalist.json", folds=2, seed=0)
    return root


def workflow(configs: list[str], dataset: Path, output: Path, **overrides) -> ConfigWorkflow:
    flow = ConfigWorkflow(
        config_file=[str(CONFIGS / c) for c in configs],
        workflow_type="train",
        logging_file=str(CONFIGS / "logging.conf"),
        dataset_dir=str(dataset),
        output_dir=str(output),
        **{**TINY, **overrides},
    )
    flow.initialize()
    return flow


def test_network_in_out_verifies():
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "inference.json"),
        n=2,
        device="cpu",
    )


@pytest.mark.slow
def test_train_resume_evaluate_and_infer(dataset, tmp_path):
    out = tmp_path / "run"
    first = workflow(["train.json"], dataset, out, epochs=1)
    first.run()
    first.finalize()
    assert (out / "model.pt").is_file()
    assert epoch_checkpoints(out) == [(1, out / "checkpoint_epoch=1.pt")]
    saved_utilisation = first.parser.get_parsed_content("modulation_handler").previous_utilisation

    # a second run with more epochs resumes at the saved iteration, CGGM state included
    second = workflow(["train.json"], dataset, out, epochs=2)
    trainer = second.parser.get_parsed_content("trainer")
    handler = second.parser.get_parsed_content("modulation_handler")
    first_iteration = []
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: first_iteration.append(e.state.iteration))
    second.run()
    epoch_length = trainer.state.epoch_length
    assert first_iteration[0] == epoch_length + 1
    assert trainer.state.epoch == 2 and trainer.state.iteration == 2 * epoch_length
    assert not np.allclose(handler.previous_utilisation.numpy(), 0.0) or np.allclose(saved_utilisation, 0.0)

    evaluate = workflow(["train.json", "evaluate.json"], dataset, out, fold=0)
    evaluate.run()
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert summary["n_cases"] == 2
    for key in ("dice_wt", "dice_tc", "dice_et", "hd95_wt", "hd95_tc", "hd95_et"):
        assert np.isfinite(summary[key]), key
    rows = (out / "eval" / "scores.csv").read_text().splitlines()
    assert len(rows) == 3

    infer = workflow(["inference.json"], dataset, out, fold=0)
    infer.run()
    predictions = sorted((out / "predictions").glob("*.nii.gz"))
    assert len(predictions) == 2
    for prediction in predictions:
        case = prediction.name[: -len(".nii.gz")]
        truth = nib.load(dataset / case / f"{case}_seg.nii.gz")
        image = nib.load(prediction)
        assert image.shape == truth.shape
        np.testing.assert_allclose(image.affine, truth.affine)
        assert set(np.unique(np.asarray(image.dataobj))) <= {0, 1, 2, 4}


def user_error(error: BaseException) -> UserError:
    """The UserError behind MONAI's "Failed to evaluate" wrapper (shown as the cause in tracebacks)."""
    while error is not None and not isinstance(error, UserError):
        error = error.__cause__
    assert error is not None, "no UserError in the exception chain"
    return error


def test_missing_datalist_and_bad_fold_are_clear(tmp_path, dataset):
    with pytest.raises(RuntimeError) as info:
        workflow(["train.json"], tmp_path, tmp_path / "out").run()
    assert str(user_error(info.value)).startswith(f"datalist: {tmp_path / 'datalist.json'} does not exist")
    with pytest.raises(RuntimeError) as info:
        workflow(["train.json"], dataset, tmp_path / "out", fold=7).run()
    assert str(user_error(info.value)).startswith("fold: 7 is not in the datalist")


def test_evaluate_and_infer_without_checkpoint_name_it(tmp_path, dataset):
    empty = tmp_path / "empty"
    with pytest.raises(RuntimeError) as info:
        workflow(["inference.json"], dataset, empty).run()
    assert str(user_error(info.value)) == (
        f"checkpoint: neither model.pt nor checkpoint_final.pt in {empty} "
        "(train first, or pass --checkpoint PATH)"
    )
    # evaluation builds its loader without weights (MONAI FL never runs it) and checks the file it loads
    with pytest.raises(RuntimeError) as info:
        workflow(["train.json", "evaluate.json"], dataset, empty).run()
    assert str(user_error(info.value)).startswith(f"checkpoint: {empty / 'model.pt'} does not ")


def test_evaluation_scores_training_validation_fold_unless_told_otherwise(dataset, tmp_path):
    """``eval_fold`` is ``fold`` for the ``training`` list (the cases training validated on, as MONAI's
    ``validate#evaluator``), ``all`` (or null) scores every case; any other ``data_list_key`` is scored
    whole."""
    content = json.loads((dataset / "datalist.json").read_text())
    entries = content["training"]

    def cases(**overrides) -> list[str]:
        flow = workflow(["train.json", "evaluate.json"], dataset, tmp_path / "run", **overrides)
        return sorted(entry["case_id"] for entry in flow.val_dataset_data)

    def fold(k: int) -> list[str]:
        return sorted(entry["case_id"] for entry in entries if entry["fold"] == k)

    assert cases() == fold(0) and cases(fold=1) == fold(1) and cases(eval_fold=1) == fold(1)
    assert cases(eval_fold="all") == cases(eval_fold=None) == sorted(entry["case_id"] for entry in entries)
    testing = [
        {**e, "image": [str(dataset / p) for p in e["image"]], "label": str(dataset / e["label"])}
        for e in entries
        if e["fold"] == 1
    ]
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({**content, "testing": testing}))
    assert cases(datalist=str(datalist), data_list_key="testing") == fold(1)
    with pytest.raises(RuntimeError) as info:
        cases(eval_fold=7)
    assert str(user_error(info.value)) == (
        f"eval_fold: no entry of 'training' in {dataset / 'datalist.json'}"
        " has fold 7 (folds [0, 1], or 'all' for every entry)"
    )


@pytest.mark.slow
def test_monai_bundle_run_reports_a_user_error_as_one_line(tmp_path, dataset):
    """``python -m monai.bundle run`` wraps config errors in its own traceback; ours stay one line."""
    configs = str([str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")])
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            configs,
            "--dataset_dir",
            str(dataset),
            "--output_dir",
            str(tmp_path / "empty"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.splitlines()[-1].startswith(f"error: checkpoint: {tmp_path / 'empty' / 'model.pt'} ")


def test_training_stopped_before_validation_evaluates_its_final_weights(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    train = workflow(["train.json"], dataset, out, epochs=1, val_interval=2)
    train.run()
    assert (out / "checkpoint_final.pt").is_file() and not (out / "model.pt").exists()

    workflow(["train.json", "evaluate.json"], dataset, out, fold=0).run()
    assert json.loads((out / "eval" / "summary.json").read_text())["n_cases"] == 2
    workflow(["inference.json"], dataset, out, fold=0).run()
    assert len(list((out / "predictions").glob("*.nii.gz"))) == 2
    printed = capsys.readouterr().out.splitlines()  # the bundle's logging.conf logs to stdout
    used = [line.split(" - ")[-1] for line in printed if " - cggm_seg.bundle - " in line]
    final = out / "checkpoint_final.pt"
    assert (
        used
        == [f"checkpoint: {final} (final weights; no model.pt, training stopped before its first validation)"]
        * 2
    )


#: what each rank's engines have attached, by class, written by a config overlay after training
RECORD_HANDLERS = (
    "$torch.save(sorted({type(getattr(h, '__self__', h)).__name__ "
    "for engine in (@trainer, @validate#evaluator) "
    "for handlers in engine._event_handlers.values() for h, *_ in handlers}), "
    "os.path.join(@output_dir, f'handlers_{torch.distributed.get_rank()}.pt'))"
)
#: the handlers only the main rank has: console, TensorBoard, the savers of model.pt and the checkpoints
MAIN_RANK_ONLY = {"StatsHandler", "TensorBoardStatsHandler", "ProgressBar", "SafeCheckpointSaver"}


@pytest.mark.slow
def test_torchrun_two_process_cpu_training(dataset, tmp_path):
    out = tmp_path / "ddp"
    record = tmp_path / "record_handlers.json"
    record.write_text(json.dumps({"run": ["$@trainer.run()", RECORD_HANDLERS]}))
    overrides = [
        f"--{k}={json.dumps(v)}" if not isinstance(v, str) else f"--{k}={v}" for k, v in TINY.items()
    ]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        json.dumps([str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json"), str(record)]),
        f"--dataset_dir={dataset}",
        f"--output_dir={out}",
        "--epochs=1",
        "--batch_size=1",
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "checkpoint_final.pt").is_file()
    assert len(list(out.glob("events.out.tfevents.*"))) == 2  # rank 0 only: trainer + validator
    main, other = (set(torch.load(out / f"handlers_{rank}.pt")) for rank in (0, 1))
    assert MAIN_RANK_ONLY <= main and not MAIN_RANK_ONLY & other, (main, other)


# ------------------------------------------------------------------------------------ reliability
@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> Path:
    """One epoch on fold 0, validated: a finished run to resume, refuse or start over."""
    out = tmp_path_factory.mktemp("trained") / "run"
    workflow(["train.json"], dataset, out, epochs=1).run()
    return out


def _copy(trained: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "run"))


def _files(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.mark.slow
def test_resume_false_as_the_command_line_spells_it_starts_over(trained, dataset, tmp_path):
    out = _copy(trained, tmp_path)
    again = workflow(["train.json"], dataset, out, epochs=1, resume="false")  # as fire passes --resume false
    started = []
    again.trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: started.append(e.state.iteration))
    again.run()
    assert started[:1] == [1]


def test_amp_and_overwrite_false_as_the_command_line_spells_them(dataset, tmp_path):
    flow = workflow(["train.json"], dataset, tmp_path / "run", amp="false")
    assert flow.trainer.amp is False and flow.trainer.scaler is None and flow.evaluator.amp is False
    torch.save(flow.network_def.state_dict(), tmp_path / "run" / "model.pt")
    flow = workflow(["train.json", "evaluate.json"], dataset, tmp_path / "run", overwrite="false", fold=0)
    scores = flow.parser.get_parsed_content("validate#handlers")[2]
    assert scores.overwrite is False


@pytest.mark.slow
def test_resuming_a_run_of_another_fold_is_refused_unless_allowed(trained, dataset, tmp_path):
    out = _copy(trained, tmp_path)
    before = _files(out)
    with pytest.raises(RuntimeError) as info:
        workflow(["train.json"], dataset, out, fold=1)
    message = str(user_error(info.value))
    assert message.startswith(
        f"resume: {out / 'checkpoint_epoch=1.pt'} was trained on fold 0 of "
        f"{dataset / 'datalist.json'} (2 training cases), this run is fold 1 of"
    )
    assert message.endswith("or --allow_other_fold true to continue it anyway")
    assert _files(out) == before  # refused before anything was written
    workflow(["train.json"], dataset, out, fold=1, allow_other_fold="true")


@pytest.mark.slow
def test_weights_of_another_network_def_are_one_line(trained, dataset, tmp_path):
    """A run of brats_cggm before 0.5.0 (instance norm without scale and shift) against today's network."""
    out = _copy(trained, tmp_path)
    before = _files(out)
    old_norm = {"network_def#norm": "instance"}
    with pytest.raises(RuntimeError) as info:
        workflow(["train.json", "evaluate.json"], dataset, out, fold=0, **old_norm).run()
    assert str(user_error(info.value)).startswith(
        f"checkpoint: {out / 'model.pt'} was written with another network_def ("
    )
    with pytest.raises(RuntimeError) as info:
        workflow(["train.json"], dataset, out, **old_norm)
    message = str(user_error(info.value))
    assert message.startswith(f"resume: {out / 'checkpoint_epoch=1.pt'} was written with another network_def")
    assert "unexpected weights" in message and "\n" not in message
    assert _files(out) == before


@pytest.mark.slow
def test_resume_keeps_the_best_score_and_its_model(trained, dataset, tmp_path):
    out = _copy(trained, tmp_path)
    checkpoint = torch.load(out / "checkpoint_epoch=1.pt", weights_only=True)
    checkpoint["run"]["best_metric"] = 2.0  # better than any Dice: no later validation may replace model.pt
    saved = checkpoint["run"]["best_model"]["_saved"]
    checkpoint["run"]["best_model"]["_saved"] = [(2.0, name) for _, name in saved]
    torch.save(checkpoint, out / "checkpoint_epoch=1.pt")
    best = (out / "model.pt").read_bytes()
    resumed = workflow(["train.json"], dataset, out, epochs=2)
    resumed.run()
    assert resumed.evaluator.state.best_metric == 2.0 and resumed.evaluator.state.best_metric_epoch == 1
    assert (out / "model.pt").read_bytes() == best


def _nan_case(dataset: Path, tmp_path: Path) -> Path:
    root = Path(shutil.copytree(dataset, tmp_path / "nan"))
    entries = json.loads((root / "datalist.json").read_text())["training"]
    case = next(e["case_id"] for e in entries if e["fold"])  # a training case of fold 0
    flair = root / case / f"{case}_flair.nii.gz"
    image = nib.load(flair)
    data = np.asarray(image.dataobj, dtype=np.float32).copy()
    data[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(data, image.affine), flair)
    return root


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"resume": "maybe"}, "resume: 'maybe' is not a boolean"),
        ({"amp": "sometimes"}, "amp: 'sometimes' is not a boolean"),
        ({"batch_size": 99}, "batch_size: 99 is more than the 2 training case(s)"),
        ({"fold": 7}, "fold: 7 is not in the datalist"),
        ({"output_dir": "{tmp}/file/run"}, "output_dir: cannot create"),
        ({"dataset_dir": "{missing}"}, "datalist: case "),
    ],
)
def test_settings_that_fail_validation_write_nothing(dataset, tmp_path, overrides, expected):
    (tmp_path / "file").write_text("")
    missing = Path(shutil.copytree(dataset, tmp_path / "missing"))
    next(missing.glob("*/*_t2.nii.gz")).unlink()
    overrides = {
        k: v.format(tmp=tmp_path, missing=missing) if isinstance(v, str) else v for k, v in overrides.items()
    }
    out = tmp_path / "run"
    with pytest.raises(RuntimeError) as info:
        workflow(
            ["train.json"],
            overrides.pop("dataset_dir", dataset),
            overrides.pop("output_dir", out),
            **overrides,
        )
    assert str(user_error(info.value)).startswith(expected)
    assert not out.exists()  # no TensorBoard event file, no checkpoint folder


@pytest.mark.slow
def test_training_stops_on_a_non_finite_loss_and_saves_no_nan(dataset, tmp_path):
    out = tmp_path / "run"
    flow = workflow(["train.json"], _nan_case(dataset, tmp_path), out, epochs=2, batch_size=1)
    with pytest.raises(RuntimeError) as info:
        flow.run()
    message = str(user_error(info.value))
    assert re.match(r"training: the loss is nan at epoch 1, iteration \d+; stopped before", message), message
    for saved in out.glob("*.pt"):
        checkpoint = torch.load(saved, weights_only=True)
        network = checkpoint.get("network", checkpoint)
        assert all(torch.isfinite(value).all() for value in network.values()), saved
