"""The CMU-MOSI, IEMOCAP and Food-101 bundles: a short train + evaluate on synthetic data, given by the
``data_path`` the README uses (``tests/bundles/test_bundle_conformance.py`` gives MONAI's ``dataset_dir``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow

from cggm_seg.commands import synth_food101, synth_iemocap, synth_mosi
from cggm_seg.errors import UserError
from cggm_seg.modulation import CGGMHandler

ROOT = Path(__file__).resolve().parents[2]
BUNDLES = ("mosi_cggm", "iemocap_cggm", "food101_cggm")
TINY = {
    "epochs": 2,
    "batch_size": 8,
    "d_model": 8,
    "num_heads": 2,
    "encoder_layers": 1,
    "fusion_layers": 1,
    "device": "cpu",
    "num_workers": 0,
}
SCORES = {
    "mosi_cggm": {"acc2", "acc7", "f1_weighted", "mae", "corr"},
    "iemocap_cggm": {"accuracy", "f1_weighted"},
    "food101_cggm": {"accuracy", "f1_weighted"},
}


def _synth(module, out: Path, **extra) -> Path:
    args = argparse.Namespace(out=out, n=16, seed=0, force=False, **extra)
    assert module.main(args) == 0
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sequence_data")
    return {
        "mosi_cggm": _synth(synth_mosi, root / "mosi.pkl", format="mmsa"),
        "iemocap_cggm": _synth(synth_iemocap, root / "iemocap", format="h5", cv=1),
        "food101_cggm": _synth(synth_food101, root / "food101", classes=3),
    }


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread, and the CI machine's two cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _workflow(bundle: str, configs: list[str], data_path: Path, output: Path, **overrides) -> ConfigWorkflow:
    folder = ROOT / "bundles" / bundle / "configs"
    flow = ConfigWorkflow(
        config_file=[str(folder / c) for c in configs],
        workflow_type="train",
        logging_file=str(folder / "logging.conf"),
        data_path=str(data_path),
        output_dir=str(output),
        **{**TINY, **overrides},
    )
    flow.initialize()
    return flow


@pytest.mark.slow
@pytest.mark.parametrize(
    "bundle, overrides",
    [
        ("mosi_cggm", {}),
        ("iemocap_cggm", {"direction": "weights"}),
        ("food101_cggm", {"modulation": "none"}),
    ],
)
def test_train_then_evaluate(bundle, overrides, data, tmp_path, one_thread):
    out = tmp_path / "run"
    train = _workflow(bundle, ["train.json"], data[bundle], out, **overrides)
    handler = train.parser.get_parsed_content("modulation_handler")
    assert isinstance(handler, CGGMHandler) == (overrides.get("modulation", "cggm") == "cggm")
    train.run()
    train.finalize()
    assert (out / "model.pt").is_file() and (out / "checkpoint_final.pt").is_file()
    if handler is not None:  # the heads were trained and the utilisation measured for every modality
        modalities = train.parser.get_parsed_content("modalities")
        assert {f"utilisation/{m}" for m in modalities} <= set(handler.latest)

    evaluate = _workflow(bundle, ["train.json", "evaluate.json"], data[bundle], out)
    evaluate.run()
    scores = json.loads((out / "metrics_test.json").read_text())
    assert set(scores) == SCORES[bundle]
    assert all(value is None or isinstance(value, float) for value in scores.values())


@pytest.mark.slow
def test_existing_outputs_are_kept(data, tmp_path, one_thread):
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.pt").write_text("a previous run")
    with pytest.raises(RuntimeError) as err:
        _workflow("mosi_cggm", ["train.json"], data["mosi_cggm"], out)
    cause = err.value.__cause__
    assert isinstance(cause, UserError) and "model.pt already exists" in str(cause)
    with pytest.raises(RuntimeError) as err:
        _workflow("mosi_cggm", ["train.json", "evaluate.json"], data["mosi_cggm"], tmp_path / "empty").run()
    assert str(err.value.__cause__).startswith(f"checkpoint: {tmp_path / 'empty' / 'model.pt'} does not ")


@pytest.mark.slow
def test_food101_bundle_finetunes_tiny_local_encoders_with_cggm(data, tmp_path, one_thread):
    """`encoders: finetune`: the bundle builds ViT and BERT from local folders, trains them end to end
    with CGGM scaling their own gradients, and evaluates on the images and texts."""
    from tiny_transformers import write_tiny_models

    vit, bert = write_tiny_models(data["food101_cggm"], tmp_path / "models")
    settings = {"encoders": "finetune", "vit_dir": str(vit), "bert_dir": str(bert), "epochs": 1}
    out = tmp_path / "run"
    train = _workflow("food101_cggm", ["train.json"], data["food101_cggm"], out, **settings)
    handler = train.parser.get_parsed_content("modulation_handler")
    network = train.parser.get_parsed_content("network")
    assert isinstance(handler, CGGMHandler)
    encoders = {name: network.get_submodule(name).backbone for name in handler.encoder_names}
    assert sorted(type(m).__name__ for m in encoders.values()) == ["BertModel", "ViTModel"]
    before = {name: [p.detach().clone() for p in m.parameters()] for name, m in encoders.items()}
    train.run()
    train.finalize()
    for name, module in encoders.items():  # the backbones were trained, not frozen
        assert any(not torch.equal(a, b.detach()) for a, b in zip(before[name], module.parameters())), name
    assert {"coeff/image", "coeff/text"} <= set(handler.latest)
    evaluate = _workflow(
        "food101_cggm", ["train.json", "evaluate.json"], data["food101_cggm"], out, **settings
    )
    evaluate.run()
    assert {"accuracy", "f1_weighted"} <= set(json.loads((out / "metrics_test.json").read_text()))
