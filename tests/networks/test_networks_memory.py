"""The memory cuts of MultiModalUNet3D change no result: checkpointed encoders, split concat fusion,
in-place activations (docs/PERFORMANCE.md, *Step cost*)."""

import pytest
import torch
from torch import nn

from cggm_seg.networks import MultiModalUNet3D

SMALL = {"in_modalities": 3, "channels": (4, 8, 16), "strides": (2, 2)}


def gradients(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    net.train().zero_grad()
    out = net(x)
    out.square().mean().backward()
    return out.detach(), [p.grad.clone() for p in net.parameters()]


def twin(**kwargs) -> tuple[MultiModalUNet3D, MultiModalUNet3D]:
    torch.manual_seed(0)
    net = MultiModalUNet3D(**SMALL)
    other = MultiModalUNet3D(**SMALL, **kwargs)
    other.load_state_dict(net.state_dict())
    return net, other


def test_checkpointed_encoders_give_the_same_output_and_gradients():
    net, checkpointed = twin(checkpoint_encoders=True)
    x = torch.rand(2, 3, 16, 16, 16)
    out, grads = gradients(net, x)
    out_c, grads_c = gradients(checkpointed, x)
    assert torch.equal(out, out_c)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_c, strict=True))


def saved_elements_and_hook_calls(checkpointed: bool) -> tuple[int, int]:
    """Elements autograd saves in one training step, and how often encoder 0's forward hook fired."""
    net = MultiModalUNet3D(**SMALL, checkpoint_encoders=checkpointed).train()
    calls, sizes = [], []
    net.encoders[0].register_forward_hook(lambda *_: calls.append(1))
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        out = net(torch.rand(2, 3, 16, 16, 16))
    out.sum().backward()
    return sum(sizes), len(calls)


def test_checkpointed_encoders_keep_less_for_backward_and_fire_their_hook_once():
    plain, plain_calls = saved_elements_and_hook_calls(False)
    checkpointed, checkpointed_calls = saved_elements_and_hook_calls(True)
    assert checkpointed < plain / 2
    # the recomputation in the backward pass calls the levels, not the encoder: CGGM captures once
    assert plain_calls == checkpointed_calls == 1


def test_checkpointed_network_scripts_and_infers_like_the_plain_one():
    net, checkpointed = twin(checkpoint_encoders=True)
    x = torch.rand(1, 3, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(torch.jit.script(checkpointed.eval())(x), net.eval()(x))


def test_concat_fusion_is_the_conv_of_the_concatenated_maps():
    torch.manual_seed(0)
    fusion = MultiModalUNet3D(**SMALL).fusion
    features = [[torch.rand(2, c, 4, 4, 4) for c in SMALL["channels"]] for _ in range(3)]
    concatenated = [mixer(torch.cat([f[k] for f in features], 1)) for k, mixer in enumerate(fusion.mixers)]
    for fused, expected in zip(fusion(features), concatenated, strict=True):
        torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("checkpointed", [False, True])
def test_in_place_activation_gives_the_same_gradients(checkpointed):
    torch.manual_seed(0)
    out_of_place = MultiModalUNet3D(
        **SMALL, act=("leakyrelu", {"negative_slope": 0.01}), checkpoint_encoders=checkpointed
    )
    in_place = MultiModalUNet3D(**SMALL, checkpoint_encoders=checkpointed)  # the default: in place
    assert in_place.encoders[0].levels[0].lrelu.inplace
    in_place.load_state_dict(out_of_place.state_dict())
    x = torch.randn(2, 3, 16, 16, 16)
    out, grads = gradients(out_of_place, x)
    out_i, grads_i = gradients(in_place, x)
    assert torch.equal(out, out_i)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_i, strict=True))
