"""Every bundle under MONAI FL and as MONAI model-zoo's unit tests run it.

``monai.fl.client.MonaiAlgo`` (what NVFlare's MONAI client runs) trains with ``configs/train.json`` and
evaluates with ``["configs/train.json", "configs/evaluate.json"]`` as a *train*-type workflow, using its
``evaluator`` property: ``validate#evaluator``. ``evaluate.json`` therefore overrides the ``validate#...``
ids, so that evaluator is the bundle's evaluation, on the cases evaluation chooses, with nothing given
beyond the data and output folders (no ``fold``). One FL round per bundle, on tiny synthetic data.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from monai.fl.client import MonaiAlgo
from monai.fl.utils.constants import ExtraItems, WeightType
from monai.fl.utils.exchange_object import ExchangeObject
from test_bundle_conformance import ALL, BUNDLES, TINY, workflow, write_tiny_datasets

pytestmark = pytest.mark.filterwarnings("ignore:executing the bundle config:UserWarning")  # MONAI FL's notice

#: BraTS trains one step an epoch here, and its learning rate warms up from 0: without this, no step
WARM = {"brats_cggm": {"warmup_epochs": 0}}
#: the key metric of each bundle's evaluator: what an FL server reads from ``evaluate()``
KEY_METRIC = {
    "brats_cggm": "val_mean_dice",
    "mosi_cggm": "val_acc2",
    "iemocap_cggm": "val_accuracy",
    "food101_cggm": "val_accuracy",
}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    return write_tiny_datasets(tmp_path_factory.mktemp("fl_data"))


def global_weights(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a server might send: the client's initial weights, every floating-point one shifted."""
    return {k: v + 0.1 if v.is_floating_point() else v.clone() for k, v in network.state_dict().items()}


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float((a[k].float() - b[k].float()).square().sum()) for k in a))


@pytest.mark.parametrize("bundle", ALL)
def test_one_monai_fl_round_then_the_model_zoo_evaluation(bundle, datasets, tmp_path):
    settings = {**TINY[bundle], **WARM.get(bundle, {}), "device": "cpu", "dataset_dir": str(datasets[bundle])}
    algo = MonaiAlgo(
        bundle_root=str(BUNDLES / bundle),
        local_epochs=1,
        train_kwargs={**settings, "output_dir": str(tmp_path / "client")},
        eval_kwargs={**settings, "output_dir": str(tmp_path / "client")},
    )
    algo.initialize(extra={ExtraItems.CLIENT_NAME: "site-1", ExtraItems.APP_ROOT: ""})
    initial = {k: v.clone() for k, v in algo.trainer.network.state_dict().items()}
    sent = global_weights(algo.trainer.network)

    algo.train(ExchangeObject(weights=sent))
    assert algo.trainer.state.epoch == 1
    local = algo.trainer.network.state_dict()
    assert 0 < distance(local, sent) < distance(local, initial)  # trained, starting from the sent weights

    update = algo.get_weights()
    assert update.weight_type == WeightType.WEIGHT_DIFF and update.weights.keys() == sent.keys()
    for name, diff in update.weights.items():
        torch.testing.assert_close(sent[name] + diff, local[name])

    metrics = algo.evaluate(ExchangeObject(weights=sent)).metrics
    key = KEY_METRIC[bundle]
    assert algo.evaluator.state.key_metric_name == key
    assert math.isfinite(metrics[key]) and 0.0 <= metrics[key] <= 1.0
    torch.testing.assert_close(algo.evaluator.network.state_dict(), sent)  # no checkpoint was loaded

    # model-zoo's check_workflow on [train.json, evaluate.json]: the evaluation of the same weights, run
    # from a checkpoint, scores what the FL evaluator scored
    checkpoint = tmp_path / "global.pt"
    torch.save(sent, checkpoint)
    run = tmp_path / "evaluate"
    evaluate = workflow(
        bundle, ("train.json", "evaluate.json"), "train", datasets[bundle], run, checkpoint=str(checkpoint)
    )
    assert evaluate.check_properties() == []
    evaluate.run()
    evaluate.finalize()
    assert evaluate.evaluator.state.metrics[key] == pytest.approx(metrics[key])
    if bundle == "brats_cggm":  # both scored the cases training validated on (fold 0), case by case
        table = run / "eval" / "scores.csv"
        assert table.read_text() == (tmp_path / "client" / "eval" / "scores.csv").read_text()
        datalist = json.loads((datasets[bundle] / "datalist.json").read_text())["training"]
        with open(table, newline="") as rows:
            assert sorted(row["case_id"] for row in csv.DictReader(rows)) == sorted(
                entry["case_id"] for entry in datalist if entry["fold"] == 0
            )
    else:
        assert json.loads((run / "metrics_test.json").read_text()) == pytest.approx(metrics["val"])
