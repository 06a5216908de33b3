"""CGGMHandler on MONAI's real SupervisedTrainer with a tiny multimodal network."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from monai.handlers import CheckpointLoader, CheckpointSaver
from toy_multimodal import GradSnapshot, accuracy, cggm, make_models, make_trainer, toy_data

from cggm_seg.cggm_math import balance_coefficients, balancing_term, flat_cosine
from cggm_seg.errors import UserError
from cggm_seg.modulation import CGGMHandler, ClipGradNorm, modulation_scalars


def scripted_metric(values):
    """A utilisation metric that returns the given values in turn: known coefficients by hand."""
    it = iter(values)
    return lambda pred, target: torch.tensor(next(it))


def one_step_grads(modalities=2, handler_factory=None, seed=0):
    net, heads = make_models(modalities, seed)
    snap = GradSnapshot()
    handlers = [handler_factory(heads)] if handler_factory else []
    trainer = make_trainer(net, toy_data(modalities=modalities), handlers=[*handlers, snap])
    trainer.run()
    return snap.grads[0], (handlers[0] if handlers else None), net, heads


@pytest.mark.parametrize("modalities", [2, 3])
def test_encoder_gradients_scaled_by_rho_b_and_fusion_untouched(modalities):
    plain, _, _, _ = one_step_grads(modalities)
    # utilisation 0.6, 0.2 (, 0.4): improvements from 0 -> B by hand
    utilisation = [0.6, 0.2, 0.4][:modalities]
    expected_b = {2: [0.2 / 0.8, 0.6 / 0.8], 3: [0.6 / 1.2, 1.0 / 1.2, 0.8 / 1.2]}[modalities]
    modulated, handler, _, _ = one_step_grads(
        modalities, lambda h: cggm(h, metric=scripted_metric(utilisation), rho=1.3)
    )
    torch.testing.assert_close(handler.coefficients, torch.tensor(expected_b))
    for name, grad in plain.items():
        if name.startswith("encoders."):
            i = int(name.split(".")[1])
            torch.testing.assert_close(modulated[name], 1.3 * expected_b[i] * grad)
        else:
            torch.testing.assert_close(modulated[name], grad)


def test_heads_loss_never_reaches_the_network():
    plain, _, _, _ = one_step_grads()
    watched, handler, _, heads = one_step_grads(handler_factory=lambda h: cggm(h, rho=None))
    for name, grad in plain.items():
        torch.testing.assert_close(watched[name], grad)
    # ... while the heads did learn
    assert all(p.grad is not None for p in heads.parameters())
    assert set(handler.latest) >= {"utilisation/modality0", "coeff/modality1", "head_loss/modality0"}


def test_magnitude_off_and_rho_none_are_the_same():
    a, _, _, _ = one_step_grads(handler_factory=lambda h: cggm(h, rho=1.2, magnitude=False))
    b, _, _, _ = one_step_grads(handler_factory=lambda h: cggm(h, rho=None))
    for name in a:
        torch.testing.assert_close(a[name], b[name])


def independent_gradients(direction: str, lam: float) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Loss + lambda * L_gm written out by hand (no handler); returns grads, B, cosines."""
    net, heads = make_models()
    batch = toy_data()
    x = torch.stack([b["image"] for b in batch])
    y = torch.stack([b["label"] for b in batch])
    features = [enc(x[:, i]) for i, enc in enumerate(net.encoders)]
    out = net.output_layer(net.fusion(torch.cat(features, dim=1)))
    task = F.cross_entropy(out, y)
    head_out = [head(f.detach()) for head, f in zip(heads, features)]
    eps = torch.stack([accuracy(o, y) for o in head_out])
    b = balance_coefficients(eps)  # previous utilisation is 0
    head_losses = [F.cross_entropy(o, y) for o in head_out]
    head_grads = [
        torch.autograd.grad(loss, head.output_layer.weight)[0] for loss, head in zip(head_losses, heads)
    ]
    weight = net.output_layer.weight
    if direction == "gradient":
        g_f = torch.autograd.grad(task, weight, create_graph=True)[0]
        cos = torch.stack([flat_cosine(g, g_f) for g in head_grads])
    else:
        cos = torch.stack([flat_cosine(h.output_layer.weight.detach(), weight) for h in heads])
    (task + lam * balancing_term(b, cos)).backward()
    return {n: p.grad for n, p in net.named_parameters()}, b, cos.detach()


@pytest.mark.parametrize("direction", ["gradient", "weights"])
def test_balancing_term_is_in_the_loss_and_reaches_the_fusion_layer(direction):
    plain, _, _, _ = one_step_grads()
    got, handler, _, _ = one_step_grads(
        handler_factory=lambda h: cggm(h, rho=None, lam=0.5, direction=direction)
    )
    expected, b, cos = independent_gradients(direction, lam=0.5)
    torch.testing.assert_close(handler.coefficients, b)
    torch.testing.assert_close(torch.tensor([handler.latest[f"cosine/modality{i}"] for i in range(2)]), cos)
    assert handler.latest["l_gm"] == pytest.approx(balancing_term(b, cos).item(), abs=1e-6)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name])
    # the fusion output layer's gradient really changed
    assert not torch.allclose(got["output_layer.weight"], plain["output_layer.weight"])


def test_engine_output_carries_the_curves_for_stats_handlers():
    net, heads = make_models()
    trainer = make_trainer(net, toy_data(), handlers=[cggm(heads, lam=0.1)])
    trainer.run()
    scalars = modulation_scalars(trainer.state.output)
    assert "loss" in scalars
    for key in (
        "cggm/coeff/modality0",
        "cggm/utilisation/modality1",
        "cggm/cosine/modality0",
        "cggm/l_gm",
        "cggm/grad_norm/modality1",
    ):
        assert isinstance(scalars[key], float), key


def test_coefficients_use_the_previous_iteration_utilisation():
    values = [0.5, 0.1, 0.6, 0.4]  # iteration 1: d = (0.5, 0.1); iteration 2: d = (0.1, 0.3)
    net, heads = make_models()
    handler = cggm(heads, metric=scripted_metric(values))
    data = toy_data(n=8)
    make_trainer(net, data, batch=4, handlers=[handler]).run()  # two iterations
    torch.testing.assert_close(handler.coefficients, torch.tensor([0.3 / 0.4, 0.1 / 0.4]))
    torch.testing.assert_close(handler.previous_utilisation, torch.tensor([0.6, 0.4]))


def test_warmup_and_momentum():
    net, heads = make_models()
    handler = cggm(
        heads,
        metric=scripted_metric([0.5, 0.1, 0.7, 0.3]),
        utilisation_momentum=0.5,
        warmup_iterations=1,
        rho=1.0,
    )
    snap = GradSnapshot()
    plain_snap = GradSnapshot()
    make_trainer(net, toy_data(), batch=4, handlers=[handler, snap]).run()
    net2, _ = make_models()
    make_trainer(net2, toy_data(), batch=4, handlers=[plain_snap]).run()
    # warm-up iteration: no scaling
    for name, grad in plain_snap.grads[0].items():
        torch.testing.assert_close(snap.grads[0][name], grad)
    # EMA 0.5: s1 = (0.25, 0.05); s2 = (0.125 + 0.35, 0.025 + 0.15) = (0.475, 0.175);
    # d2 = (0.225, 0.125), sum 0.35 -> B = (0.125 / 0.35, 0.225 / 0.35)
    torch.testing.assert_close(handler.coefficients, torch.tensor([0.125 / 0.35, 0.225 / 0.35]))


def test_checkpoint_round_trip_resumes_exactly(tmp_path):
    data = toy_data(n=8)

    def run(epochs, handlers_extra=lambda net, h, trainer: []):
        net, heads = make_models()
        handler = cggm(heads, rho=1.2, lam=0.2)
        trainer = make_trainer(net, data, epochs=epochs, batch=4, handlers=[handler])
        for extra in handlers_extra(net, handler, trainer):
            extra.attach(trainer)
        trainer.run()
        return net, handler

    straight_net, straight = run(3)

    def saver(net, handler, trainer):
        save = {"trainer": trainer, "net": net, "opt": trainer.optimizer, "cggm": handler}
        return [CheckpointSaver(str(tmp_path), save, save_final=True, final_filename="ckpt.pt")]

    run(2, saver)

    def loader(net, handler, trainer):
        load = {"trainer": trainer, "net": net, "opt": trainer.optimizer, "cggm": handler}
        return [CheckpointLoader(str(tmp_path / "ckpt.pt"), load, map_location="cpu")]

    resumed_net, resumed = run(3, loader)
    for (name, a), b in zip(straight_net.state_dict().items(), resumed_net.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    torch.testing.assert_close(straight.previous_utilisation, resumed.previous_utilisation)
    for a, b in zip(straight.heads.parameters(), resumed.heads.parameters()):
        torch.testing.assert_close(a, b)


def test_non_finite_gradients_are_not_modulated():
    from monai.engines import IterationEvents

    net, heads = make_models()
    handler = cggm(heads, metric=scripted_metric([0.6, 0.2]), rho=1.0)
    snap = GradSnapshot()
    trainer = make_trainer(net, toy_data(), handlers=[snap])

    @trainer.on(IterationEvents.BACKWARD_COMPLETED)
    def poison(engine):  # registered before CGGM: an fp16 overflow as the GradScaler would see it
        next(net.encoders[0].parameters()).grad[0, 0] = float("inf")

    handler.attach(trainer)
    trainer._event_handlers[IterationEvents.BACKWARD_COMPLETED].append(
        trainer._event_handlers[IterationEvents.BACKWARD_COMPLETED].pop(0)
    )  # snapshot last
    trainer.optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    trainer.run()
    plain, _, _, _ = one_step_grads()
    torch.testing.assert_close(snap.grads[0]["encoders.1.0.weight"], plain["encoders.1.0.weight"])
    assert handler.latest["skipped_step"] == 1.0


def test_clip_grad_norm_runs_after_modulation():
    net, heads = make_models()
    snap = GradSnapshot()
    make_trainer(net, toy_data(), handlers=[cggm(heads, rho=1.0), ClipGradNorm(1e-3), snap]).run()
    total = torch.linalg.vector_norm(torch.stack([g.norm() for g in snap.grads[0].values()]))
    assert total.item() == pytest.approx(1e-3, rel=1e-4)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"encoders": ["encoders.0", "nope"]}, "encoders: no sub-module named 'nope'"),
        ({"fusion_layer": "decoder.out"}, "fusion_layer: no sub-module named 'decoder.out'"),
        ({"fusion_layer": "fusion"}, "fusion_layer: 'fusion' has no weight"),
        ({"head_output_layer": "missing"}, "head_output_layer \\(head 0\\): no sub-module"),
        ({"head_output_layer": "hidden.0"}, "differs from fusion_layer 'output_layer' weight"),
    ],
)
def test_misconfiguration_fails_at_attach_naming_the_setting(settings, message):
    net, heads = make_models()
    base = {
        "encoders": ["encoders.0", "encoders.1"],
        "fusion_layer": "output_layer",
        "heads": heads,
        "head_optimizer": torch.optim.SGD(heads.parameters(), lr=0.1),
        "metric": accuracy,
    }
    # listed in train_handlers: checked when the run starts, before the first iteration
    trainer = make_trainer(net, toy_data(), handlers=[CGGMHandler(**{**base, **settings})])
    with pytest.raises(UserError, match=message):
        trainer.run()
    assert trainer.state.iteration == 0
    # attached to a built trainer: checked at once
    with pytest.raises(UserError, match=message):
        CGGMHandler(**{**base, **settings}).attach(make_trainer(net, toy_data()))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"encoders": ["encoders.0"]}, "at least 2 modality encoders"),
        ({"direction": "sideways"}, "direction: 'sideways'"),
        ({"rho": -1.0}, "rho: must be > 0"),
        ({"lam": -0.1}, "lambda: must be >= 0"),
        ({"coeff_clip": (1.0, 0.0)}, "coeff_clip"),
        ({"modality_names": ["a"]}, "modality_names: 1 names for 2 encoders"),
    ],
)
def test_bad_settings_fail_at_construction(settings, message):
    _, heads = make_models()
    base = {
        "encoders": ["encoders.0", "encoders.1"],
        "fusion_layer": "output_layer",
        "heads": heads,
        "head_optimizer": torch.optim.SGD(heads.parameters(), lr=0.1),
        "metric": accuracy,
    }
    if settings.get("encoders") == ["encoders.0"]:
        base["heads"] = heads[:1]
    with pytest.raises(UserError, match=message):
        CGGMHandler(**{**base, **settings})


def test_heads_count_mismatch_and_heads_inside_network():
    net, heads = make_models(3)
    with pytest.raises(UserError, match="heads: 3 heads for 2 encoders"):
        cggm_handler = CGGMHandler(
            ["encoders.0", "encoders.1"],
            "output_layer",
            heads,
            torch.optim.SGD(heads.parameters(), lr=0.1),
            accuracy,
        )
    net, heads = make_models(2)
    net.heads = heads
    cggm_handler = cggm(heads)
    with pytest.raises(UserError, match="heads: the heads are part of the network"):
        make_trainer(net, toy_data(), handlers=[cggm_handler]).run()


def test_gradient_accumulation_is_refused():
    net, heads = make_models()
    with pytest.raises(UserError, match="accumulation_steps=2"):
        make_trainer(net, toy_data(), handlers=[cggm(heads)], accumulation_steps=2).run()


def test_handler_state_dict_is_a_deep_copy_safe_snapshot():
    _, heads = make_models()
    handler = cggm(heads)
    handler.history = [torch.tensor([0.3, 0.7])]
    state = copy.deepcopy(handler.state_dict())
    other = cggm(make_models(seed=1)[1])
    other.load_state_dict(state)
    torch.testing.assert_close(other.previous_utilisation, torch.tensor([0.3, 0.7]))
    for a, b in zip(heads.parameters(), other.heads.parameters()):
        torch.testing.assert_close(a, b)
