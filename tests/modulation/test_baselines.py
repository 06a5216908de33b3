"""OGM-GE, MSLR and unimodal training on MONAI's SupervisedTrainer with the toy network (the factory that
picks them by name: tests/modulation/test_build_modulation.py)."""

from __future__ import annotations

import math

import pytest
import torch
from monai.engines import IterationEvents
from toy_multimodal import GradSnapshot, accuracy, make_models, make_trainer, toy_data

from cggm_seg.errors import UserError
from cggm_seg.modulation import (
    MSLRHandler,
    OGMGEHandler,
    UnimodalHandler,
    keep_only_modality,
)
from cggm_seg.modulation.ogm_ge import ogm_ge_coefficients


def scripted(values):
    it = iter(values)
    return lambda pred, target: torch.tensor(next(it))


def ogm(heads, metric=accuracy, **settings) -> OGMGEHandler:
    return OGMGEHandler(
        [f"encoders.{i}" for i in range(len(heads))],
        heads,
        torch.optim.SGD(heads.parameters(), lr=0.1),
        metric,
        **settings,
    )


def first_step_grads(handler_factory=None, modalities=2):
    net, heads = make_models(modalities)
    snap = GradSnapshot()
    handlers = [handler_factory(heads)] if handler_factory else []
    make_trainer(net, toy_data(modalities=modalities), handlers=[*handlers, snap]).run()
    return snap.grads[0], (handlers[0] if handlers else None)


# ------------------------------------------------------------------------------------------ OGM-GE maths
def test_ogm_ge_coefficients_by_hand():
    # others' means: 0.3, 0.5, 0.4 -> ratios 2, 0.4, 1 -> only modality 0 leads (ratio 1 is not > 1)
    k = ogm_ge_coefficients(torch.tensor([0.6, 0.2, 0.4]), alpha=0.5)
    torch.testing.assert_close(k, torch.tensor([1 - math.tanh(1.0), 1.0, 1.0]))


def test_ogm_ge_two_modalities_is_the_paper_rule():
    k = ogm_ge_coefficients(torch.tensor([0.3, 0.6]), alpha=0.8)  # rho_v = 2, rho_a = 0.5
    torch.testing.assert_close(k, torch.tensor([1.0, 1 - math.tanh(1.6)]))


def test_ogm_ge_zero_scores():
    torch.testing.assert_close(ogm_ge_coefficients(torch.zeros(3), 0.5), torch.ones(3))
    torch.testing.assert_close(ogm_ge_coefficients(torch.tensor([0.5, 0.0]), 0.5), torch.tensor([0.0, 1.0]))


# ---------------------------------------------------------------------------------------- OGM-GE handler
def test_ogm_scales_the_leading_encoder_and_leaves_the_rest():
    plain, _ = first_step_grads()
    got, handler = first_step_grads(lambda h: ogm(h, metric=scripted([0.6, 0.2]), gaussian_noise=False))
    k0 = 1 - math.tanh(0.5 * 3.0)
    torch.testing.assert_close(handler.coefficients, torch.tensor([k0, 1.0]))
    for name, grad in plain.items():
        expected = k0 * grad if name.startswith("encoders.0.") else grad
        torch.testing.assert_close(got[name], expected, msg=name)
    assert handler.latest["coeff/modality0"] == pytest.approx(k0)


def test_generalisation_enhancement_noise_has_the_gradient_std_and_a_fixed_seed():
    plain, _ = first_step_grads()
    got, handler = first_step_grads(lambda h: ogm(h, metric=scripted([0.6, 0.2]), noise_seed=7))
    k = [1 - math.tanh(1.5), 1.0]
    generator = torch.Generator().manual_seed(7)
    for name, grad in plain.items():  # drawn in encoder order, then parameter order
        if name.startswith("encoders."):
            noise = torch.randn(grad.shape, generator=generator) * grad.std()
            torch.testing.assert_close(got[name], k[int(name.split(".")[1])] * grad + noise, msg=name)
        else:
            torch.testing.assert_close(got[name], grad, msg=name)


def test_ogm_warmup_and_heads_stay_out_of_the_network():
    plain, _ = first_step_grads()
    got, handler = first_step_grads(lambda h: ogm(h, metric=scripted([0.9, 0.1]), warmup_iterations=1))
    for name, grad in plain.items():
        torch.testing.assert_close(got[name], grad, msg=name)
    assert handler.coefficients[0] < 1  # computed and logged, not applied
    assert all(p.grad is not None for p in handler.heads.parameters())


def test_ogm_state_round_trip_continues_the_noise():
    _, heads = make_models()
    handler = ogm(heads)
    make_trainer(make_models()[0], toy_data(), handlers=[handler]).run()
    other = ogm(make_models(seed=1)[1])
    other.load_state_dict(handler.state_dict())
    torch.testing.assert_close(other.coefficients, handler.coefficients)
    draw = [torch.randn(5, generator=h._generator) for h in (other, handler)]
    assert torch.equal(*draw)
    for a, b in zip(heads.parameters(), other.heads.parameters()):
        torch.testing.assert_close(a, b)


def test_ogm_settings_are_checked():
    _, heads = make_models()
    with pytest.raises(UserError, match="alpha: OGM-GE needs alpha > 0"):
        ogm(heads, alpha=0.0)
    with pytest.raises(UserError, match="OGM-GE needs at least 2 modality encoders"):
        OGMGEHandler(["encoders.0"], heads[:1], torch.optim.SGD(heads.parameters(), lr=0.1), accuracy)


# ----------------------------------------------------------------------------------------------- MSLR
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_mslr_equals_per_encoder_learning_rates(optimizer):
    """Three steps with the handler = three steps with a parameter group per encoder at lr * factor."""
    factors = {"modality0": 0.25, "modality1": 3.0}
    lr = 0.05

    def make(params):
        if optimizer == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=0.01, nesterov=True)
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.1)

    net, _ = make_models()
    trainer = make_trainer(
        net, toy_data(n=12), batch=4, handlers=[MSLRHandler(["encoders.0", "encoders.1"], factors)]
    )
    trainer.optimizer = make(net.parameters())
    trainer.run()

    reference, _ = make_models()
    groups = [
        {"params": list(reference.encoders[i].parameters()), "lr": lr * f}
        for i, f in enumerate(factors.values())
    ]
    groups.append({"params": [p for n, p in reference.named_parameters() if not n.startswith("encoders.")]})
    ref_trainer = make_trainer(reference, toy_data(n=12), batch=4)
    ref_trainer.optimizer = make(groups)
    ref_trainer.run()
    assert trainer.state.iteration == 3
    for (name, a), b in zip(net.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, msg=name)


def test_mslr_settings():
    assert MSLRHandler(["a", "b"], {"y": 0.5}, ["x", "y"]).lr_scales == [1.0, 0.5]
    assert MSLRHandler(["a", "b"], [2.0, 0.5]).lr_scales == [2.0, 0.5]
    with pytest.raises(UserError, match="lr_scales: unknown modalities \\['z'\\]"):
        MSLRHandler(["a", "b"], {"z": 0.5}, ["x", "y"])
    with pytest.raises(UserError, match="lr_scales: 1 values for 2 modalities"):
        MSLRHandler(["a", "b"], [0.5])
    with pytest.raises(UserError, match="factors must be >= 0"):
        MSLRHandler(["a", "b"], [0.5, -1.0])


# ------------------------------------------------------------------------------------------- unimodal
def test_unimodal_training_sees_only_the_kept_modality():
    net, _ = make_models(3)
    data = toy_data(modalities=3)
    snap = GradSnapshot()
    make_trainer(
        net, data, handlers=[UnimodalHandler([f"encoders.{i}" for i in range(3)], "b", ["a", "b", "c"]), snap]
    ).run()
    grads = snap.grads[0]
    for i in (0, 2):  # a blanked linear encoder gets no weight gradient (its input is 0) ...
        assert torch.count_nonzero(grads[f"encoders.{i}.0.weight"]) == 0
    assert torch.count_nonzero(grads["encoders.1.0.weight"]) > 0  # ... the kept one does
    x = torch.stack([d["image"] for d in data])
    only_b = torch.zeros_like(x)
    only_b[:, 1] = x[:, 1]
    net.eval()
    with torch.no_grad():  # the trained network, e.g. in validation, still ignores the others
        torch.testing.assert_close(net(x), net(only_b))


def test_keep_only_modality_can_be_removed_and_checks_the_name():
    net, _ = make_models(2)
    x = torch.stack([d["image"] for d in toy_data()])
    before = net(x)
    handles = keep_only_modality(net, ["encoders.0", "encoders.1"], 0)
    assert not torch.allclose(net(x), before)
    for handle in handles:
        handle.remove()
    torch.testing.assert_close(net(x), before)
    with pytest.raises(UserError, match="modality: 't1ce' is neither one of"):
        keep_only_modality(net, ["encoders.0", "encoders.1"], "t1ce", ["flair", "t1"])


def test_no_handler_runs_on_an_overflow_step():
    """A baseline never scales a non-finite gradient (the AMP GradScaler skips that step)."""
    net, heads = make_models()
    handler = ogm(heads, metric=scripted([0.6, 0.2]), gaussian_noise=False)
    trainer = make_trainer(net, toy_data(), handlers=[])

    @trainer.on(IterationEvents.BACKWARD_COMPLETED)
    def poison(engine):
        next(net.encoders[0].parameters()).grad[0, 0] = float("inf")

    handler.attach(trainer)
    snap = GradSnapshot()
    snap.attach(trainer)
    trainer.optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    trainer.run()
    plain, _ = first_step_grads()
    torch.testing.assert_close(snap.grads[0]["encoders.0.0.bias"], plain["encoders.0.0.bias"])
    assert handler.latest["skipped_step"] == 1.0


# ------------------------------------------------------------------------------------------ monitor
def test_head_monitor_measures_after_the_step_and_changes_nothing():
    from ignite.engine import Events

    from cggm_seg.modulation import HeadMonitor

    plain, _ = first_step_grads()
    net, heads = make_models()
    before = [p.detach().clone() for p in heads.parameters()]
    monitor = HeadMonitor(
        ["encoders.0", "encoders.1"],
        heads,
        torch.optim.SGD(heads.parameters(), lr=0.1),
        scripted([0.25, 0.75]),
        modality_names=["a", "b"],
    )
    snap = GradSnapshot()
    trainer = make_trainer(net, toy_data(), handlers=[monitor, snap])
    trainer.run()
    for name, grad in plain.items():
        torch.testing.assert_close(snap.grads[0][name], grad, msg=name)
    assert trainer.has_event_handler(monitor._on_iteration_completed, Events.ITERATION_COMPLETED)
    assert monitor.latest["utilisation/a"] == 0.25 and monitor.latest["utilisation/b"] == 0.75
    assert trainer.state.output[0]["cggm/utilisation/b"] == 0.75  # decollated: in every item
    assert any(not torch.equal(a, b) for a, b in zip(before, heads.parameters()))  # the heads learned
