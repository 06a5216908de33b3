"""The sequence network and its CGGM heads (cggm_seg.networks.sequence)."""

from __future__ import annotations

import math

import pytest
import torch

from cggm_seg.networks.sequence import (
    ModalityEncoder,
    SequenceFusionNet,
    SequenceHead,
    masked_mean,
    sequence_heads,
    sinusoidal_positions,
)

DIMS = {"text": 6, "audio": 3, "vision": 4}


def _net(num_outputs: int = 1, **kwargs) -> SequenceFusionNet:
    torch.manual_seed(0)
    settings = {"d_model": 8, "num_heads": 2, "encoder_layers": 1, "fusion_layers": 1, "dropout": 0.0}
    settings.update(kwargs)
    return SequenceFusionNet(DIMS, num_outputs, **settings).eval()


def _inputs(batch: int = 3, lengths: dict | None = None) -> dict:
    torch.manual_seed(1)
    inputs = {
        "text": torch.randn(batch, 5, 6),
        "audio": torch.randn(batch, 7, 3),
        "vision": torch.randn(batch, 4, 4),
    }
    if lengths is not None:
        inputs["lengths"] = {name: torch.tensor(value) for name, value in lengths.items()}
    return inputs


def test_output_shapes_and_encoder_names():
    assert _net(1)(_inputs()).shape == (3, 1)
    net = _net(4)
    assert net(_inputs()).shape == (3, 4)
    assert net.encoder_names() == ["encoders.text", "encoders.audio", "encoders.vision"]
    assert all(isinstance(net.get_submodule(name), ModalityEncoder) for name in net.encoder_names())


def test_padded_steps_do_not_change_the_output():
    net = _net(2)
    lengths = {"text": [5, 2, 3], "audio": [7, 4, 1], "vision": [4, 4, 2]}
    clean = _inputs(lengths=lengths)
    noisy = {k: v.clone() if torch.is_tensor(v) else v for k, v in clean.items()}
    for name, values in lengths.items():
        for row, length in enumerate(values):
            noisy[name][row, length:] = 100.0  # garbage where the batch is padded
    with torch.no_grad():
        torch.testing.assert_close(net(clean), net(noisy))
        # and a sample alone, unpadded, gives the same result as inside the padded batch
        alone = {name: clean[name][1:2, : lengths[name][1]] for name in DIMS}
        torch.testing.assert_close(net(alone), net(clean)[1:2], atol=1e-5, rtol=1e-5)


def test_zero_length_sample_stays_finite():
    out = _net(1)(_inputs(lengths={"text": [5, 0, 3], "audio": [7, 7, 7], "vision": [0, 4, 4]}))
    assert torch.isfinite(out).all()


def test_encoder_output_is_zero_at_padding_and_hookable():
    net = _net(1)
    captured = {}
    net.get_submodule("encoders.audio").register_forward_hook(lambda m, a, out: captured.update(audio=out))
    net(_inputs(lengths={"text": [5, 5, 5], "audio": [7, 4, 1], "vision": [4, 4, 4]}))
    features = captured["audio"]
    assert features.shape == (3, 7, 8)
    assert (features[1, 4:] == 0).all() and (features[2, 1:] == 0).all()
    assert (features[1, :4].abs().amax(dim=-1) > 0).all()


def test_heads_match_the_output_layer_and_pool_valid_steps():
    net = _net(4)
    heads = sequence_heads(3, d_model=8, num_outputs=4)
    assert len(heads) == 3
    assert all(head.output_layer.weight.shape == net.output_layer.weight.shape for head in heads)
    head = SequenceHead(2, 1)
    with torch.no_grad():
        head.mlp[0].weight.copy_(torch.eye(2))
        head.mlp[0].bias.zero_()
        head.output_layer.weight.copy_(torch.tensor([[1.0, 10.0]]))
        head.output_layer.bias.zero_()
    features = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]]])  # third step is padding
    # mean of valid steps = (2, 3) -> relu -> 1*2 + 10*3 = 32
    assert head(features).item() == pytest.approx(32.0)


def test_masked_mean_and_positions_by_hand():
    features = torch.tensor([[[1.0], [3.0], [100.0]], [[2.0], [0.0], [0.0]]])
    valid = torch.tensor([[True, True, False], [False, False, False]])
    assert masked_mean(features, valid).flatten().tolist() == [2.0, 0.0]
    code = sinusoidal_positions(3, 4)
    assert code[0].tolist() == [0.0, 1.0, 0.0, 1.0]
    assert code[1, 0].item() == pytest.approx(math.sin(1.0))
    assert code[2, 3].item() == pytest.approx(math.cos(2.0 / 100.0))  # frequency 1e4^(-2/4)


def test_gradients_reach_every_encoder():
    net = _net(1).train()
    net(_inputs()).sum().backward()
    for name in net.encoder_names():
        grads = [p.grad for p in net.get_submodule(name).parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_configuration_errors():
    with pytest.raises(ValueError, match="at least two modalities"):
        SequenceFusionNet({"text": 3}, 1)
    with pytest.raises(ValueError, match="odd"):
        ModalityEncoder(3, 8, 2, 1, kernel_size=2)
    with pytest.raises(KeyError, match="vision"):
        _net(1)({"text": torch.randn(1, 2, 6), "audio": torch.randn(1, 2, 3)})
    with pytest.raises(ValueError, match="num_modalities"):
        sequence_heads(0, 8, 1)
