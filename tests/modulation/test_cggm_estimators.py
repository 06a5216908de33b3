"""The estimators beyond the paper (docs/METHOD.md, "Estimators"): maths by hand, then on the real trainer."""

from __future__ import annotations

import pytest
import torch
from toy_multimodal import GradSnapshot, cggm, make_models, make_trainer, toy_data

from cggm_seg.cggm_math import (
    balance_coefficients,
    level_coefficients,
    share_coefficients,
    windowed_improvement,
)
from cggm_seg.errors import UserError
from cggm_seg.metrics.brats import soft_dice
from cggm_seg.metrics.tasks import true_class_probability


def scripted(values):
    it = iter(values)
    return lambda pred, target: torch.tensor(next(it))


# ------------------------------------------------------------------------------------------- maths
def test_share_rule_is_bounded_with_mean_one_where_the_paper_rule_breaks():
    noisy = torch.tensor([0.0, 0.0, 0.05, 0.0])
    # the paper freezes the dominant encoder and keeps the others at 1 (mean 0.75) ...
    torch.testing.assert_close(balance_coefficients(noisy), torch.tensor([1.0, 1.0, 0.0, 1.0]))
    # ... the share rule: p = [0, 0, 1, 0], B = 4/3 (1 - p): mean exactly 1
    torch.testing.assert_close(share_coefficients(noisy), torch.tensor([4 / 3, 4 / 3, 0.0, 4 / 3]))
    negative_sum = torch.tensor([-0.04, -0.04, 0.05, -0.04])
    # the paper's rule inverts: .43 .43 1.71 .43; the share rule only counts the improvement
    torch.testing.assert_close(
        balance_coefficients(negative_sum), torch.tensor([0.03 / 0.07, 0.03 / 0.07, 0.12 / 0.07, 0.03 / 0.07])
    )
    torch.testing.assert_close(share_coefficients(negative_sum), torch.tensor([4 / 3, 4 / 3, 0.0, 4 / 3]))
    # two modalities: p = (.25, .75) -> B = 2 (.75, .25)
    torch.testing.assert_close(share_coefficients(torch.tensor([0.1, 0.3])), torch.tensor([1.5, 0.5]))


def test_share_rule_without_any_improvement_is_all_ones():
    torch.testing.assert_close(share_coefficients(torch.tensor([-0.1, 0.0, -0.3])), torch.ones(3))
    torch.testing.assert_close(share_coefficients(torch.zeros(2)), torch.ones(2))


def test_level_rule_follows_the_heads_losses():
    torch.testing.assert_close(level_coefficients(torch.tensor([1.0, 3.0])), torch.tensor([0.5, 1.5]))
    torch.testing.assert_close(
        level_coefficients(torch.tensor([0.2, 0.2, 0.8])), torch.tensor([0.5, 0.5, 2.0])
    )
    torch.testing.assert_close(level_coefficients(torch.zeros(3)), torch.ones(3))


@pytest.mark.parametrize("rule", [share_coefficients, level_coefficients])
def test_rules_refuse_a_single_modality(rule):
    with pytest.raises(ValueError, match="one entry per modality"):
        rule(torch.tensor([1.0]))


def test_windowed_improvement_by_hand():
    history = [torch.tensor([0.1, 0.2]), torch.tensor([0.3, 0.2]), torch.tensor([0.4, 0.1])]
    current = torch.tensor([0.5, 0.5])
    torch.testing.assert_close(windowed_improvement(history, current, 1), torch.tensor([0.1, 0.4]))
    torch.testing.assert_close(windowed_improvement(history, current, 2), torch.tensor([0.2, 0.3]))
    torch.testing.assert_close(windowed_improvement(history, current, 3), torch.tensor([0.4, 0.3]))
    torch.testing.assert_close(windowed_improvement(history, current, 4), current)  # from u^0 = 0
    with pytest.raises(ValueError):
        windowed_improvement(history, current, 0)


def test_soft_utilisations_by_hand():
    target = torch.zeros(1, 1, 2, 2)
    target[0, 0, 0, 0] = 1
    # p = 0.5 everywhere: 2 * 0.5 / (4 * 0.5 + 1)
    expected_dice = torch.tensor(1 / 3)
    torch.testing.assert_close(soft_dice(torch.zeros(1, 1, 2, 2), target), expected_dice, atol=1e-5, rtol=0)
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    expected = (0.5 + torch.sigmoid(torch.tensor(2.0))) / 2
    torch.testing.assert_close(true_class_probability(logits, torch.tensor([1, 0])), expected)


# ------------------------------------------------------------------------------------------ handler
def _run(handler_factory, steps=1, optimizer=None, seed=0):
    net, heads = make_models(2, seed)
    snap = GradSnapshot()
    handler = handler_factory(heads) if handler_factory else None
    trainer = make_trainer(net, toy_data(n=8 * steps), handlers=[h for h in (handler, snap) if h])
    if optimizer is not None:
        trainer.optimizer = optimizer(net)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    trainer.run()
    after = {n: p.detach().clone() for n, p in net.named_parameters()}
    return handler, snap, before, after


def test_share_rule_and_window_in_the_handler():
    # utilisation (0.2, 0.6) then (0.3, 0.7): window 2 at step 2 -> d = (0.3, 0.7) from u^0 = 0
    handler, _, _, _ = _run(
        lambda h: cggm(
            h, metric=scripted([0.2, 0.6, 0.3, 0.7]), coefficient_rule="share", improvement_window=2
        ),
        steps=2,
    )
    torch.testing.assert_close(handler.coefficients, torch.tensor([2 * 0.7, 2 * 0.3]))
    assert len(handler.history) == 2


def test_loss_utilisation_is_minus_the_head_loss():
    handler, _, _, _ = _run(lambda h: cggm(h, utilisation="loss"))
    latest = handler.latest
    losses = torch.tensor([latest["head_loss/modality0"], latest["head_loss/modality1"]])
    utilisation = torch.tensor([latest["utilisation/modality0"], latest["utilisation/modality1"]])
    torch.testing.assert_close(utilisation, -losses)


def test_level_rule_uses_the_head_losses():
    handler, _, _, _ = _run(lambda h: cggm(h, coefficient_rule="level"))
    losses = torch.tensor([handler.latest["head_loss/modality0"], handler.latest["head_loss/modality1"]])
    torch.testing.assert_close(handler.coefficients, 2 * losses / losses.sum())


def _adam(net):
    return torch.optim.Adam(net.parameters(), lr=0.01)


def test_update_mode_scales_the_adam_step_where_gradient_mode_cannot():
    # utilisation (0.6, 0.2) from 0 -> B = (0.25, 0.75); rho 1
    metric = scripted([0.6, 0.2])
    _, _, before, plain = _run(None, optimizer=_adam)
    _, _, _, gradient = _run(lambda h: cggm(h, metric=scripted([0.6, 0.2])), optimizer=_adam)
    _, _, _, update = _run(lambda h: cggm(h, metric=metric, apply_to="update"), optimizer=_adam)
    for name in before:
        plain_step = plain[name] - before[name]
        if name.startswith("encoders."):
            scale = (0.25, 0.75)[int(name.split(".")[1])]
            # Adam's first step is lr * sign(g): a gradient scale changes nothing ...
            torch.testing.assert_close(gradient[name] - before[name], plain_step)
            # ... the update scale does
            torch.testing.assert_close(update[name] - before[name], scale * plain_step)
        else:
            torch.testing.assert_close(update[name], plain[name])


def test_update_mode_leaves_the_gradients_alone():
    _, plain_snap, _, _ = _run(None)
    _, snap, _, _ = _run(lambda h: cggm(h, metric=scripted([0.6, 0.2]), apply_to="update"))
    for name, grad in plain_snap.grads[0].items():
        torch.testing.assert_close(snap.grads[0][name], grad)


class LossProbe:
    """The loss right after CGGM's LOSS_COMPLETED handler (attach after it)."""

    def attach(self, engine):
        from monai.engines import IterationEvents

        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def __call__(self, engine):
        self.loss = float(engine.state.output["loss"])


def test_relative_direction_weight_scales_with_the_task_loss():
    totals, terms = {}, {}
    for scale in ("absolute", "relative"):
        net, heads = make_models(2, 0)
        handler, probe = cggm(heads, lam=0.5, direction_scale=scale), LossProbe()
        make_trainer(net, toy_data(), handlers=[handler, probe]).run()
        totals[scale], terms[scale] = probe.loss, handler.latest["l_gm"]
    assert terms["absolute"] == pytest.approx(terms["relative"]) and terms["absolute"] > 0
    task = totals["absolute"] - 0.5 * terms["absolute"]  # absolute: L + lambda L_gm
    # relative: L + lambda L L_gm
    assert totals["relative"] == pytest.approx(task * (1 + 0.5 * terms["relative"]), rel=1e-5)


def test_estimator_state_survives_a_checkpoint_round_trip():
    handler, _, _, _ = _run(
        lambda h: cggm(
            h, metric=scripted([0.2, 0.6, 0.3, 0.7]), coefficient_rule="level", improvement_window=3
        ),
        steps=2,
    )
    state = handler.state_dict()
    _, heads = make_models(2, 1)
    fresh = cggm(heads, coefficient_rule="level", improvement_window=3)
    fresh.load_state_dict(state)
    assert len(fresh.history) == 2
    torch.testing.assert_close(torch.stack(fresh.history), torch.stack(handler.history))
    torch.testing.assert_close(fresh.average_head_loss, handler.average_head_loss)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"utilisation": "soft"}, "needs a soft_metric"),
        ({"utilisation": "dice"}, "utilisation: 'dice' is not one of"),
        ({"coefficient_rule": "max"}, "coefficient_rule: 'max'"),
        ({"direction_scale": "per_module"}, "direction_scale"),
        ({"apply_to": "weights"}, "apply_to"),
        ({"improvement_window": 0}, "improvement_window"),
        ({"improvement_window": 1.5}, "improvement_window"),
    ],
)
def test_bad_estimator_settings_name_the_setting(settings, message):
    _, heads = make_models(2, 0)
    with pytest.raises(UserError, match=message):
        cggm(heads, **settings)
