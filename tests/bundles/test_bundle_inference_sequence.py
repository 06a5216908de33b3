"""The sequence bundles' ``inference.json`` and TorchScript export: the packed input layout of
``SequenceFusionNet``, the prediction table (``cggm_seg.metrics.predictions``), and each bundle trained
briefly, then run for inference and exported in fresh processes as a user runs them."""

from __future__ import annotations

import csv
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigWorkflow

from cggm_seg.adapters.food101 import CLASS_NAMES, load_food101
from cggm_seg.adapters.iemocap import load_iemocap
from cggm_seg.adapters.mosi import load_mosi
from cggm_seg.adapters.sequence_core import pad_collate, prepare_sequence_batch
from cggm_seg.errors import UserError
from cggm_seg.metrics.predictions import PredictionWriter
from cggm_seg.networks.sequence import SequenceFusionNet, pack_sequences
from data_prep.synth_food101 import write_food101
from data_prep.synth_iemocap import write_iemocap
from data_prep.synth_mosi import write_mosi

ROOT = Path(__file__).resolve().parents[2]
SEQUENCE = ("mosi_cggm", "iemocap_cggm", "food101_cggm")
SIZES = {"d_model": 8, "num_heads": 2, "encoder_layers": 1, "fusion_layers": 1}
DIMS = {"text": 6, "audio": 3, "vision": 4}


def _config(bundle: str, name: str) -> Path:
    return ROOT / "bundles" / bundle / "configs" / name


def _samples(lengths: list[tuple[int, int, int]]) -> dict:
    """A pad_collate batch of random samples with the given (text, audio, vision) lengths, label removed."""
    generator = torch.Generator().manual_seed(1)
    batch = pad_collate(
        [
            {name: torch.randn(steps, DIMS[name], generator=generator) for name, steps in zip(DIMS, sample)}
            | {"label": torch.tensor(0)}
            for sample in lengths
        ]
    )
    batch.pop("label")
    return batch


def _net(kernel_size: int = 1) -> SequenceFusionNet:
    torch.manual_seed(0)
    return SequenceFusionNet(DIMS, 3, kernel_size=kernel_size, dropout=0.0, **SIZES).eval()


# ----------------------------------------------------------------------------- packed layout
def test_packed_layout_gives_the_dict_outputs_eager_and_scripted():
    net = _net(kernel_size=3)  # the projection sees the step after the last valid one: zero in both layouts
    batch = _samples([(5, 7, 2), (2, 3, 4), (1, 9, 1)])
    packed, lengths = pack_sequences(batch, net.modalities)
    assert packed.shape == (3, 13, 9) and lengths.tolist() == [[5, 7, 2], [2, 3, 4], [1, 9, 1]]
    scripted = torch.jit.script(net)
    with torch.no_grad():
        expected = net(batch)
        torch.testing.assert_close(net(packed, lengths), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(scripted(packed, lengths), expected, atol=1e-5, rtol=1e-5)


def test_packed_padding_is_ignored_and_no_lengths_means_every_step():
    net = _net()
    batch = _samples([(4, 4, 4), (4, 4, 4)])
    packed, lengths = pack_sequences(batch, net.modalities)
    noisy = torch.cat([packed, torch.full((2, 13, 3), 100.0)], dim=2)  # three more steps of garbage
    with torch.no_grad():
        expected = net(batch)
        torch.testing.assert_close(net(noisy, lengths), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(net(packed), expected, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(net(noisy), expected, atol=1e-3)


def test_packed_inputs_of_the_wrong_shape_are_refused():
    net = _net()
    with pytest.raises(ValueError, match=r"expected packed features \[B, 13, T\], got \[1, 12, 5\]"):
        net(torch.zeros(1, 12, 5))
    with pytest.raises(ValueError, match=r"expected lengths \[B, 3\], got \[1, 2\]"):
        net(torch.zeros(1, 13, 5), torch.ones(1, 2, dtype=torch.long))


def test_feature_sizes_other_than_input_dims_are_one_line_naming_the_setting():
    net = _net()
    assert net.check_feature_dims(dict(DIMS), "data.pkl")
    with pytest.raises(UserError) as err:
        net.check_feature_dims({"text": 300, "audio": 5, "vision": 20}, "data.pkl")
    message = str(err.value)
    assert message.startswith("input_dims: ") and "data.pkl" in message and "\n" not in message
    assert "--input_dims \"{'text': 300, 'audio': 5, 'vision': 20}\"" in message


# -------------------------------------------------------------------------- prediction table
def _write(tmp_path: Path, outputs: list, **settings) -> list[list[str]]:
    """Run a PredictionWriter over an engine whose iterations output ``outputs``; the CSV as rows."""
    path = tmp_path / "predictions.csv"
    engine = Engine(lambda engine, batch: batch)
    PredictionWriter(path, **settings).attach(engine)
    engine.run(outputs, max_epochs=1)
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def test_regression_rows_by_hand(tmp_path):
    outputs = [
        {"pred": torch.tensor([[0.5], [-1.25]]), "label": torch.tensor([[1.0], [-2.0]])},
        {"pred": torch.tensor([[3.0]]), "label": torch.tensor([[0.0]])},
    ]
    assert _write(tmp_path, outputs) == [
        ["index", "prediction", "label"],
        ["0", "0.5", "1"],
        ["1", "-1.25", "-2"],
        ["2", "3", "0"],
    ]


def test_classification_rows_by_hand_from_batches_or_items(tmp_path):
    logits = torch.log(torch.tensor([[1.0, 3.0], [4.0, 1.0]]))  # softmax (0.25, 0.75) and (0.8, 0.2)
    expected = [
        ["index", "prediction", "probability_cat", "probability_dog", "label"],
        ["0", "1", "0.25", "0.75", "1"],
        ["1", "0", "0.8", "0.2", "1"],
    ]
    batch = {"pred": logits, "label": torch.tensor([1, 1])}
    assert _write(tmp_path, [batch], class_names=["cat", "dog"]) == expected
    items = [[{"pred": p, "label": y} for p, y in zip(logits, batch["label"])]]  # decollated
    assert _write(tmp_path, items, class_names=["cat", "dog"], overwrite=True) == expected
    unlabelled = _write(tmp_path, [{"pred": logits, "label": None}], overwrite=True)
    assert unlabelled[0] == ["index", "prediction", "probability_0", "probability_1"]
    with pytest.raises(ValueError, match="3 class_names for 2 network outputs"):
        _write(tmp_path, [batch], class_names=["cat", "dog", "eel"], overwrite=True)


def test_an_existing_table_is_refused_before_the_run_and_replaced_only_when_asked(tmp_path):
    path = tmp_path / "predictions.csv"
    path.write_text("a previous run\n")
    engine = Engine(lambda engine, batch: pytest.fail("ran an iteration"))
    PredictionWriter(path).attach(engine)
    with pytest.raises(UserError, match="predictions.csv already exists"):
        engine.run([{}], max_epochs=1)
    assert path.read_text() == "a previous run\n"
    replaced = _write(tmp_path, [{"pred": torch.ones(1, 1), "label": None}], overwrite=True)
    assert replaced == [["index", "prediction"], ["0", "1"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv"]  # no temporary file left


# ---------------------------------------------------------------------------- inference.json
def _module_of(name: str) -> str:
    """The module a dotted name lives in: its longest prefix that is one."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        try:
            if importlib.util.find_spec(".".join(parts[:end])) is not None:
                return ".".join(parts[:end])
        except ModuleNotFoundError:  # a prefix that is a module, not a package
            continue
    raise AssertionError(f"{name} is in no module")


@pytest.mark.parametrize("bundle", SEQUENCE)
def test_inference_imports_every_module_its_expressions_use(bundle):
    """It runs without train.json, in a fresh process: a module it does not import is not there, and MONAI
    binds ``import a.b`` to the name ``a.b``, so ``a`` itself must be imported too."""
    config = _config(bundle, "inference.json").read_text()
    imports = set(re.findall(r'"\$import ([\w.]+)"', config))
    for expression in re.findall(r'"\$([^"]+)"', config):
        for name in re.findall(r"\bcggm_seg(?:\.\w+)+", expression):
            module = _module_of(name)
            assert {"cggm_seg", module} <= imports, f"{bundle}: {expression!r} uses {module}; imports lack it"


def _synthetic(bundle: str, root: Path) -> Path:
    """The bundle's ``data_path``: tiny synthetic data, MOSI in the MMSA layout (padded audio and vision)."""
    if bundle == "mosi_cggm":
        write_mosi(root / "mosi.pkl", "mmsa", 16, 0)
        return root / "mosi.pkl"
    if bundle == "iemocap_cggm":
        write_iemocap(root / "iemocap", "h5", 16, 0)
        return root / "iemocap"
    write_food101(root / "food101", 16, 3, 0)
    return root / "food101"


def _test_split(bundle: str, data: Path):
    if bundle == "mosi_cggm":
        return load_mosi(data, ["test"])["test"]
    if bundle == "iemocap_cggm":
        return load_iemocap(data, ["test"])["test"]
    return load_food101(data, ["test"])["test"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Each bundle's (data_path, training output) after one tiny epoch of train.json."""
    runs = {}
    for bundle in SEQUENCE:
        root = tmp_path_factory.mktemp(bundle)
        data = _synthetic(bundle, root)
        flow = ConfigWorkflow(
            config_file=str(_config(bundle, "train.json")),
            workflow_type="train",
            logging_file=str(_config(bundle, "logging.conf")),
            data_path=str(data),
            output_dir=str(root / "train"),
            epochs=1,
            val_interval=1,
            batch_size=8,
            device="cpu",
            num_workers=0,
            **SIZES,
        )
        flow.initialize()
        flow.run()
        flow.finalize()
        runs[bundle] = data, root / "train"
    return runs


def _eager(bundle: str, data: Path, run: Path):
    """The trained network and the whole test split as one batch: (network, inputs, labels)."""
    dataset = _test_split(bundle, data)
    num_outputs = 1 if bundle == "mosi_cggm" else 4 if bundle == "iemocap_cggm" else len(CLASS_NAMES)
    network = SequenceFusionNet(dataset.feature_dims(), num_outputs, **SIZES).eval()
    network.load_state_dict(torch.load(run / "model.pt", map_location="cpu", weights_only=True))
    inputs, labels = prepare_sequence_batch(pad_collate([dataset[i] for i in range(len(dataset))]))
    return network, inputs, labels


def _dims(network: SequenceFusionNet) -> dict[str, int]:
    return dict(zip(network.modalities, network.feature_sizes))


def _overrides(network: SequenceFusionNet, data: Path, **settings) -> list[str]:
    """Command-line overrides: the training run's data and sizes (``input_dims`` as fire reads a dict)."""
    values = {"data_path": data, "input_dims": _dims(network), **SIZES, **settings}
    return [word for key, value in values.items() for word in (f"--{key}", str(value))]


def _monai_bundle(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _inference_workflow(
    bundle: str, network: SequenceFusionNet, data: Path, run: Path, out: Path, **settings
) -> ConfigWorkflow:
    """inference.json initialised in this process, as a second run on the same output folder."""
    flow = ConfigWorkflow(
        config_file=str(_config(bundle, "inference.json")),
        workflow_type="infer",
        logging_file=str(_config(bundle, "logging.conf")),
        data_path=str(data),
        ckpt_dir=str(run),
        output_dir=str(out),
        input_dims=_dims(network),
        device="cpu",
        batch_size=2,
        **SIZES,
        **settings,
    )
    flow.initialize()
    return flow


@pytest.mark.slow
@pytest.mark.parametrize("bundle", SEQUENCE)
def test_inference_writes_the_networks_prediction_for_every_sample(bundle, trained, tmp_path):
    data, run = trained[bundle]
    network, inputs, labels = _eager(bundle, data, run)
    out = tmp_path / "out"
    config = str(_config(bundle, "inference.json"))
    result = _monai_bundle(
        "run",
        "--config_file",
        config,
        *_overrides(network, data, ckpt_dir=run, output_dir=out, batch_size=2, device="cpu"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = out / "predictions_test.csv"
    with table.open(newline="") as handle:
        rows = list(csv.DictReader(handle))

    with torch.no_grad():
        expected = network(inputs)
    assert [row["index"] for row in rows] == [str(i) for i in range(len(expected))]
    if bundle == "mosi_cggm":
        assert list(rows[0]) == ["index", "prediction", "label"]
        got = torch.tensor([[float(row["prediction"])] for row in rows])
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
        assert [float(row["label"]) for row in rows] == pytest.approx(labels.flatten().tolist(), abs=1e-5)
    else:
        names = CLASS_NAMES if bundle == "food101_cggm" else [str(k) for k in range(4)]
        assert list(rows[0]) == ["index", "prediction", *(f"probability_{n}" for n in names), "label"]
        assert [int(row["prediction"]) for row in rows] == expected.argmax(dim=1).tolist()
        got = torch.tensor([[float(row[f"probability_{n}"]) for n in names] for row in rows])
        torch.testing.assert_close(got, torch.softmax(expected, dim=1), atol=1e-5, rtol=1e-4)
        assert [int(row["label"]) for row in rows] == labels.tolist()

    before, inode = table.read_text(), table.stat().st_ino
    with pytest.raises(RuntimeError) as err:
        _inference_workflow(bundle, network, data, run, out)
    assert isinstance(err.value.__cause__, UserError) and "predictions_test.csv already exists" in str(
        err.value.__cause__
    )
    _inference_workflow(bundle, network, data, run, out, overwrite="true").run()
    assert table.stat().st_ino != inode and table.read_text() == before  # replaced by the same table


@pytest.mark.slow
@pytest.mark.parametrize("bundle", SEQUENCE)
def test_scripted_export_gives_the_eager_outputs(bundle, trained, tmp_path):
    """``ckpt_export`` with its defaults (``torch.jit.script``), fed the packed layout of the test split."""
    data, run = trained[bundle]
    network, inputs, _ = _eager(bundle, data, run)
    exported = tmp_path / "model.ts"
    result = _monai_bundle(
        "ckpt_export",
        "network_def",
        "--filepath",
        str(exported),
        "--ckpt_file",
        str(run / "model.pt"),
        "--config_file",
        str(_config(bundle, "inference.json")),
        "--meta_file",
        str(_config(bundle, "metadata.json")),
        *_overrides(network, data),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    scripted = torch.jit.load(str(exported))
    with torch.no_grad():
        torch.testing.assert_close(
            scripted(*pack_sequences(inputs, network.modalities)), network(inputs), atol=1e-5, rtol=1e-4
        )
