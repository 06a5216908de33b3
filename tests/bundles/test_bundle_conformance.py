"""Every bundle as MONAI's own tooling sees it: the property check of ``ConfigWorkflow`` (``evaluate.json``
is an overlay on ``train.json``, a train-type workflow whose ``validate#evaluator`` evaluates, as in
MONAI's model zoo), handlers added the way ``--tracking`` adds them, the metadata schema,
``ckpt_export``; the sequence bundles held equal where they are not task-specific; and every balancing
method trained and evaluated on every bundle. ``tests/bundles/test_fl.py`` runs them under MONAI FL."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.bundle.utils import DEFAULT_HANDLERS_ID
from monai.data import load_net_with_metadata

from cggm_seg.modulation import METHODS, method_settings
from data_prep.brats_datalist import write_datalist
from data_prep.synth_brats import write_brats_dataset
from data_prep.synth_food101 import write_food101
from data_prep.synth_iemocap import write_iemocap
from data_prep.synth_mosi import write_mosi

ROOT = Path(__file__).resolve().parents[2]
BUNDLES = ROOT / "bundles"
SEQUENCE = ("mosi_cggm", "iemocap_cggm", "food101_cggm")
ALL = ("brats_cggm", *SEQUENCE)
#: overrides that make each bundle train in about a second on a CPU
TINY: dict[str, dict[str, Any]] = {
    "brats_cggm": {
        "roi_size": [16, 16, 16],
        "network_def#channels": [4, 8, 16, 32],
        "batch_size": 2,
        "sw_batch_size": 1,
        "warmup_epochs": 1,
        "amp": False,
        "num_workers": 0,
    },
    **{
        name: {
            "batch_size": 8,
            "d_model": 8,
            "num_heads": 2,
            "encoder_layers": 1,
            "fusion_layers": 1,
            "num_workers": 0,
            "overwrite": True,
        }
        for name in SEQUENCE
    },
}
WORKFLOWS = [
    (name, configs, "train") for name in ALL for configs in (("train.json",), ("train.json", "evaluate.json"))
]
WORKFLOWS.append(("brats_cggm", ("inference.json",), "infer"))
WORKFLOW_IDS = [f"{bundle}-{'+'.join(c[:-5] for c in configs)}" for bundle, configs, _ in WORKFLOWS]
#: ids of the sequence bundles that belong to their task (data, model size, loss, metrics): every other
#: id, and everything under it, must be the same in the three bundles, so they cannot drift apart
TASK_IDS = {
    "train.json": (
        "imports#5",
        "bundle_root",
        "dataset_dir",
        "data_path",
        "cv",
        "feature_types",
        "features_dir",
        "output_dir",
        "epochs",
        "batch_size",
        "cggm#lambda",
        "encoder_layers",
        "fusion_layers",
        "modalities",
        "num_outputs",
        "datasets",
        "loss#_target_",
        "optimizer#_target_",
        "head_optimizer#_target_",
        "validate#key_metric",
        "validate#evaluator#additional_metrics#val#compute_fn",
        "modulation_handler#metric",
        "modulation_handler#soft_metric",
        "imports",
        "encoders",
        "vit_dir",
        "bert_dir",
        "max_text_len",
        "backbone_learning_rate",
        "collate_fn",
        "train#dataloader#collate_fn",
        # CGGM's estimators: measured per task (docs/BENCHMARK.md), so each bundle has its own
        "cggm#utilisation",
        "cggm#utilisation_momentum",
        "cggm#improvement_window",
        "cggm#coefficient_rule",
        "cggm#direction_scale",
        "cggm#apply_to",
        "validate#dataloader#collate_fn",
        "network_def",
        "optimizer#params",
    ),
    "evaluate.json": ("validate#dataset", "network_def#input_dims"),
}
#: modulation_handler entries that name the network's parts or the task's metric
NETWORK_AND_METRIC = ("encoders", "fusion_layer", "metric", "soft_metric")
#: the methods that have settings: each bundle's ``train.json`` has a block of them under the method's name
CONFIGURABLE = tuple(name for name, handler in METHODS.items() if handler is not None)


# ------------------------------------------------------------------------------------------ data
def write_tiny_datasets(root: Path) -> dict[str, Path]:
    """Each bundle's ``dataset_dir`` under ``root``: tiny synthetic data in the file layout the bundle reads
    by default (BraTS: 4 cases in 2 folds, the datalist ``cggm-seg prepare brats`` writes)."""
    write_brats_dataset(root / "brats", cases=4, size=16, seed=0)
    write_datalist(root / "brats", root / "brats" / "datalist.json", folds=2, seed=0)
    (root / "mosi").mkdir()
    write_mosi(root / "mosi" / "mosi_data_noalign.pkl", "mult", 16, 0)
    write_iemocap(root / "iemocap", "h5", 16, 0)
    write_food101(root / "food101", 16, 3, 0)
    return {
        "brats_cggm": root / "brats",
        "mosi_cggm": root / "mosi",
        "iemocap_cggm": root / "iemocap",
        "food101_cggm": root / "food101",
    }


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    return write_tiny_datasets(tmp_path_factory.mktemp("bundle_data"))


def workflow(
    bundle: str,
    configs: tuple[str, ...],
    kind: str,
    dataset_dir: Path,
    output: Path,
    tracking: dict | None = None,
    **overrides,
) -> ConfigWorkflow:
    """The bundle as ``python -m monai.bundle run`` builds it, with MONAI's ``dataset_dir``; initialised."""
    folder = BUNDLES / bundle / "configs"
    flow = ConfigWorkflow(
        config_file=[str(folder / c) for c in configs],
        workflow_type=kind,
        logging_file=str(folder / "logging.conf"),
        tracking=tracking,
        dataset_dir=str(dataset_dir),
        output_dir=str(output),
        device="cpu",
        **{**TINY[bundle], **overrides},
    )
    flow.initialize()
    return flow


# ------------------------------------------------------------------------------------ properties
@pytest.mark.parametrize("bundle, configs, kind", WORKFLOWS, ids=WORKFLOW_IDS)
def test_monai_property_check_finds_nothing_missing(bundle, configs, kind, datasets, tmp_path):
    (tmp_path / "model.pt").write_bytes(b"")  # inference builds its CheckpointLoader; it loads at run time
    flow = workflow(bundle, configs, kind, datasets[bundle], tmp_path)
    assert flow.check_properties() == []
    assert flow.bundle_root == str(BUNDLES.resolve() / bundle)
    assert flow.dataset_dir == str(datasets[bundle])
    content = flow.parser.get_parsed_content
    if kind == "train":  # MONAI's ids and the short ids of the commands and the README: the same objects
        assert flow.trainer is content("trainer") and flow.max_epochs == content("epochs")
        assert flow.evaluator is content("validate#evaluator")
        assert flow.trainer.inferer is flow.train_inferer
        assert flow.trainer.data_loader is content("train#dataloader")
        assert flow.train_dataset is content("train#dataloader").dataset
        assert flow.val_handlers is content("validate#handlers")
        assert flow.evaluator.data_loader.dataset is flow.val_dataset
    else:
        assert flow.evaluator.data_loader.dataset is flow.dataset
        assert flow.evaluator.inferer is flow.inferer


@pytest.mark.parametrize("bundle, configs, kind", WORKFLOWS, ids=WORKFLOW_IDS)
def test_handlers_monai_tools_add_are_attached(bundle, configs, kind, datasets, tmp_path):
    """``--tracking`` (MLflow) adds its handler to ``train#handlers``, ``validate#handlers``, ``handlers``."""
    (tmp_path / "model.pt").write_bytes(b"")
    tracking = {
        "handlers_id": DEFAULT_HANDLERS_ID,
        "configs": {
            **{
                engine: {"_target_": "StatsHandler", "iteration_log": False, "tag_name": "added"}
                for engine in ("trainer", "validator", "evaluator")
            },
            "save_execute_config": False,
        },
    }
    flow = workflow(bundle, configs, kind, datasets[bundle], tmp_path, tracking=tracking)
    content = flow.parser.get_parsed_content
    engines = {
        "train#handlers": "trainer",
        "validate#handlers": "validate#evaluator",
        "handlers": "evaluator",
    }
    checked = 0
    for handlers, engine in engines.items():
        if engine in flow.parser:
            added = content(handlers)[-1]
            assert added.tag_name == "added"
            assert content(engine).has_event_handler(added.epoch_completed, Events.EPOCH_COMPLETED), handlers
            checked += 1
    assert checked == (2 if kind == "train" else 1)


# -------------------------------------------------------------------------------------- metadata
# --------------------------------------------------------------------------------------- drift
def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf of a config as ``id -> value``, ids joined with ``#`` as MONAI writes them."""
    if isinstance(value, (dict, list)) and value:
        items = value.items() if isinstance(value, dict) else enumerate(value)
        return {
            k: v
            for key, item in items
            for k, v in flatten(item, f"{prefix}#{key}" if prefix else str(key)).items()
        }
    return {prefix: value}


def _is_task_id(config_id: str, task_ids: tuple[str, ...]) -> bool:
    return any(config_id == t or config_id.startswith(t + "#") for t in task_ids)


@pytest.mark.parametrize("config", sorted(TASK_IDS))
def test_sequence_bundles_differ_only_in_their_task(config):
    flat = {name: flatten(json.loads((BUNDLES / name / "configs" / config).read_text())) for name in SEQUENCE}
    drifted = {}
    for config_id in sorted(set().union(*flat.values())):
        values = {name: flat[name].get(config_id, "<missing>") for name in SEQUENCE}
        if not _is_task_id(config_id, TASK_IDS[config]) and len({json.dumps(v) for v in values.values()}) > 1:
            drifted[config_id] = values
    assert not drifted, f"ids that differ between the sequence bundles' {config}: {drifted}"


def test_every_bundle_shows_every_setting_of_every_method():
    """Any ``modulation`` on any bundle: each method's block lists every setting its handler takes (nothing
    applies that the bundle does not show), and all four give ``build_modulation`` the same blocks."""
    for name in ALL:
        config = json.loads((BUNDLES / name / "configs" / "train.json").read_text())
        for method in CONFIGURABLE:
            assert set(config[method]) == set(method_settings(method)), (name, method)
        handler = {k: v for k, v in config["modulation_handler"].items() if k not in NETWORK_AND_METRIC}
        assert handler == {
            "_target_": "cggm_seg.modulation.build_modulation",
            "method": "@modulation",
            "settings": {method: f"@{method}" for method in CONFIGURABLE},
            "head_optimizer": "@head_optimizer",
            "heads": "@heads",
            "modality_names": "@modalities",
            "noise_seed": "@seed",
        }, name


def test_handlers_are_referred_to_by_name():
    """What a config or a command changes in a handler it reaches by name (``validate#best_model_saver``):
    no id counts positions in a list of handlers, which MONAI's tools append to."""
    by_position = re.compile(r"handlers#\d")
    for config in BUNDLES.glob("*/configs/*.json"):
        content = json.loads(config.read_text())
        overridden = [i for i in content if by_position.search(i)]  # ids an overlay sets
        referenced = [i for i, v in flatten(content).items() if by_position.search(str(v))]
        assert not overridden and not referenced, config


def test_brats_inference_matches_training_where_they_share_ids():
    """``inference.json`` stands alone (no overlay), so it repeats training's network and inferer."""
    configs = BUNDLES / "brats_cggm" / "configs"
    train, infer = (flatten(json.loads((configs / c).read_text())) for c in ("train.json", "inference.json"))
    own = ("imports", "fold", "postprocessing", "initialize", "run")
    shared = {i for i in set(train) & set(infer) if not _is_task_id(i, own)}
    assert {"network_def#channels#0", "roi_size#0", "inferer#mode", "modalities#0", "ckpt_dir"} <= shared
    assert {i: (train[i], infer[i]) for i in shared if train[i] != infer[i]} == {}


# ------------------------------------------------------------------------------- every method
def method_overrides(bundle: str, method: str) -> dict[str, Any]:
    """One epoch, no validation (``epochs < val_interval``), and each method's setting made to matter."""
    first = "flair" if bundle == "brats_cggm" else "text"
    return {
        "modulation": method,
        "epochs": 1,
        "val_interval": 2,
        "mslr#lr_scales": {first: 0.5},
        "unimodal#modality": first,
    }


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("bundle", ALL)
def test_every_method_trains_and_evaluates_on_every_bundle(bundle, method, datasets, tmp_path):
    overrides = method_overrides(bundle, method)
    train = workflow(bundle, ("train.json",), "train", datasets[bundle], tmp_path, **overrides)
    train.run()
    train.finalize()
    assert train.trainer.state.epoch == 1
    assert (tmp_path / "checkpoint_final.pt").is_file() and not (tmp_path / "model.pt").exists()

    evaluate = workflow(
        bundle, ("train.json", "evaluate.json"), "train", datasets[bundle], tmp_path, **overrides
    )
    encoders = evaluate.parser.get_parsed_content("network_def").encoder_names()
    network = evaluate.parser.get_parsed_content("network")
    blanked = [bool(network.get_submodule(e)._forward_pre_hooks) for e in encoders]
    kept = evaluate.parser.get_parsed_content("modalities").index(overrides["unimodal#modality"])
    assert blanked == [method == "unimodal" and i != kept for i in range(len(encoders))]
    evaluate.run()
    scores = tmp_path / ("eval/summary.json" if bundle == "brats_cggm" else "metrics_test.json")
    assert json.loads(scores.read_text())


# ---------------------------------------------------------------------------------- ckpt_export
@pytest.mark.slow
def test_ckpt_export_gives_the_checkpoints_network(datasets, tmp_path):
    """``python -m monai.bundle ckpt_export`` of a trained checkpoint with the training's size overrides:
    the network alone, scripted (MONAI's default; tests/bundles/test_model_zoo.py exports every bundle)."""
    run = tmp_path / "run"
    train = workflow(
        "brats_cggm", ("train.json",), "train", datasets["brats_cggm"], run, epochs=1, val_interval=1
    )
    train.run()
    configs = BUNDLES / "brats_cggm" / "configs"
    exported = tmp_path / "model.ts"
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "ckpt_export",
        "network_def",
        "--filepath",
        str(exported),
        "--ckpt_file",
        str(run / "model.pt"),
        "--config_file",
        str(configs / "inference.json"),
        "--meta_file",
        str(configs / "metadata.json"),
        "--network_def#channels",
        json.dumps(TINY["brats_cggm"]["network_def#channels"]),
    ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]

    parser = ConfigParser()
    parser.read_config(str(configs / "inference.json"))
    parser["network_def#channels"] = TINY["brats_cggm"]["network_def#channels"]
    network = parser.get_parsed_content("network_def").eval()
    network.load_state_dict(torch.load(run / "model.pt", map_location="cpu", weights_only=True))
    scripted, meta, _ = load_net_with_metadata(str(exported))
    assert meta["version"] == json.loads((configs / "metadata.json").read_text())["version"]
    volume = torch.randn(1, 4, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(scripted(volume), network(volume))
