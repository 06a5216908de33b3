"""Reliance by ablation and held-out head scores on the toy multimodal network."""

from __future__ import annotations

import pytest
import torch
from toy_multimodal import accuracy, make_models, toy_data

from cggm_seg.errors import UserError
from cggm_seg.metrics.reliance import evaluator_metric, head_scores, modality_reliance

NAMES = ["a", "b", "c"]
ENCODERS = ["encoders.0", "encoders.1", "encoders.2"]


def batch():
    data = toy_data(n=10, modalities=3)
    return torch.stack([d["image"] for d in data]), torch.stack([d["label"] for d in data])


def score_of(net, x):
    with torch.no_grad():
        return float(net(x).softmax(1)[:, 0].mean())


@pytest.mark.parametrize("fill", ["zero", "mean"])
def test_reliance_blanks_one_modality_at_a_time(fill):
    net, _ = make_models(3)
    x, _ = batch()
    result = modality_reliance(net, ENCODERS, NAMES, lambda: score_of(net, x), fill=fill)
    assert result.full == pytest.approx(score_of(net, x))
    for i, name in enumerate(NAMES):
        blank = x.clone()
        blank[:, i] = 0.0 if fill == "zero" else x[:, i].mean(dim=1, keepdim=True)
        assert result.without[name] == pytest.approx(score_of(net, blank), abs=1e-6)
        assert result.drop[name] == pytest.approx(result.full - result.without[name])
    assert score_of(net, x) == pytest.approx(result.full)  # hooks removed afterwards
    assert set(result.as_dict()) == {"full", "without", "drop"}


def test_a_model_that_ignores_a_modality_does_not_rely_on_it():
    net, _ = make_models(3)
    with torch.no_grad():
        net.fusion[0].weight[:, 6:12] = 0.0  # features of modality b never reach the output
    x, _ = batch()
    result = modality_reliance(net, ENCODERS, NAMES, lambda: score_of(net, x))
    assert result.drop["b"] == 0.0
    assert result.drop["a"] != 0.0 and result.drop["c"] != 0.0


def test_reliance_checks_its_arguments():
    net, _ = make_models(3)
    with pytest.raises(UserError, match="fill: 'median'"):
        modality_reliance(net, ENCODERS, NAMES, lambda: 0.0, fill="median")
    with pytest.raises(UserError, match="encoders: no sub-module named 'encoders.9'"):
        modality_reliance(net, ["encoders.9"], ["x"], lambda: 0.0)


def test_head_scores_match_the_heads_on_the_encoder_outputs():
    net, heads = make_models(3)
    x, y = batch()
    net.train()
    scores = head_scores(net, heads, ENCODERS, NAMES, [(x[:6], y[:6]), (x[6:], y[6:])], accuracy)
    for i, name in enumerate(NAMES):
        with torch.no_grad():
            expected = accuracy(heads[i](net.encoders[i](x[:, i])), y)
        assert scores[name] == pytest.approx(float(expected))
    assert net.training and heads[0].training  # modes restored


def test_evaluator_metric_runs_a_monai_evaluator_and_feeds_reliance():
    from ignite.metrics import Accuracy
    from monai.engines import SupervisedEvaluator

    net, _ = make_models(3)
    loader = torch.utils.data.DataLoader(toy_data(n=10, modalities=3), batch_size=5)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=loader,
        network=net,
        decollate=False,
        key_val_metric={"acc": Accuracy(output_transform=lambda o: (o["pred"], o["label"]))},
    )
    x, y = batch()
    with torch.no_grad():
        expected = float(accuracy(net(x), y))
    assert evaluator_metric(evaluator, "acc")() == pytest.approx(expected)
    result = modality_reliance(net, ENCODERS, NAMES, evaluator_metric(evaluator, "acc"))
    assert result.full == pytest.approx(expected)
