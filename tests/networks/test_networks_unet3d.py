"""MultiModalUNet3D and its per-modality heads: shapes, modality isolation, CGGM contracts."""

import pytest
import torch
from monai.bundle import ConfigParser

from cggm_seg.networks import MultiModalUNet3D, segmentation_heads
from cggm_seg.networks.heads import on_grid

SMALL = (4, 8, 16)


def small_net(modalities: int = 2, **kwargs) -> MultiModalUNet3D:
    torch.manual_seed(0)
    return MultiModalUNet3D(in_modalities=modalities, channels=SMALL, strides=(2, 2), **kwargs)


def capture_encoder_outputs(net: MultiModalUNet3D) -> tuple[list, list]:
    """Registers forward hooks on the named encoders, as the CGGM handler does."""
    captured: list = [None] * net.in_modalities
    modules = dict(net.named_modules())
    handles = []
    for i, name in enumerate(net.encoder_names()):

        def hook(_module, _inputs, output, i=i):
            captured[i] = output

        handles.append(modules[name].register_forward_hook(hook))
    return captured, handles


@pytest.mark.parametrize("modalities", [1, 2, 4])
@pytest.mark.parametrize(
    "channels,strides,size", [((4, 8, 16), (2, 2), (16, 16, 8)), ((4, 8, 8, 16), (2, 1, 2), (8, 12, 16))]
)
@pytest.mark.parametrize("fusion", ["concat", "sum"])
def test_output_shape(modalities, channels, strides, size, fusion):
    net = MultiModalUNet3D(
        in_modalities=modalities, out_channels=3, channels=channels, strides=strides, fusion=fusion
    )
    out = net(torch.rand(2, modalities, *size))
    assert out.shape == (2, 3, *size)
    assert all(len(net.encoders[i](torch.rand(1, 1, *size))) == len(channels) for i in range(modalities))


def test_non_divisible_size_names_the_size():
    net = small_net()
    with pytest.raises(ValueError, match=r"divisible by 4.*\[16, 18, 16\]"):
        net(torch.rand(1, 2, 16, 18, 16))


def test_wrong_modality_count_is_rejected():
    with pytest.raises(ValueError, match=r"\[B, 2, D, H, W\]"):
        small_net()(torch.rand(1, 3, 16, 16, 16))


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="strides"):
        MultiModalUNet3D(channels=(4, 8, 16), strides=(2,))
    with pytest.raises(ValueError, match="fusion"):
        MultiModalUNet3D(fusion="max")


def test_encoder_sees_only_its_channel():
    net = small_net(modalities=3).eval()
    captured, _ = capture_encoder_outputs(net)
    x = torch.rand(1, 3, 16, 16, 16)
    with torch.no_grad():
        net(x)
        before = [list(f) for f in captured]
        x[:, 2] = torch.rand_like(x[:, 2])
        net(x)
    for i in (0, 1):
        assert all(torch.equal(a, b) for a, b in zip(before[i], captured[i], strict=True))
    assert not torch.allclose(before[2][0], captured[2][0])


def test_heads_leave_network_output_and_grads_unchanged():
    net = small_net()
    heads = net.make_heads()
    x = torch.rand(2, 2, 16, 16, 16)

    def network_step(run_heads: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        net.zero_grad()
        captured, handles = capture_encoder_outputs(net)
        out = net(x)
        out.sum().backward()
        if run_heads:
            logits = heads([[f.detach() for f in feats] for feats in captured])
            sum(t.sum() for t in logits).backward()
        for handle in handles:
            handle.remove()
        return out.detach(), [p.grad.clone() for p in net.parameters()]

    out_plain, grads_plain = network_step(run_heads=False)
    out_heads, grads_heads = network_step(run_heads=True)
    assert torch.equal(out_plain, out_heads)
    assert all(torch.equal(a, b) for a, b in zip(grads_plain, grads_heads, strict=True))
    assert all(p.grad is not None for p in heads.parameters())


def test_head_output_matches_network_output_and_layer_shape():
    net = small_net(modalities=2)
    heads = net.make_heads()
    captured, _ = capture_encoder_outputs(net)
    out = net(torch.rand(2, 2, 16, 8, 16))
    for i, head in enumerate(heads):
        assert head(captured[i]).shape == out.shape
    for layer in heads.output_layers():
        assert layer.weight.shape == net.output_layer.weight.shape == (3, SMALL[0], 1, 1, 1)
    assert getattr(net, net.output_layer_name) is net.output_layer


def test_segmentation_heads_builder():
    heads = segmentation_heads((4, 8), num_modalities=3, out_channels=2, hidden=5)
    assert len(heads) == 3
    logits = heads[1]([torch.rand(1, 4, 8, 8, 8), torch.rand(1, 8, 4, 4, 4)])
    assert logits.shape == (1, 2, 8, 8, 8)
    with pytest.raises(ValueError, match="2 feature levels"):
        heads[0]([torch.rand(1, 4, 8, 8, 8)])


def test_head_level_reads_the_coarser_levels_and_predicts_on_their_grid():
    features = [torch.rand(1, 4, 8, 8, 8), torch.rand(1, 8, 4, 4, 4)]
    head = segmentation_heads((4, 8), num_modalities=1, out_channels=2, hidden=5, level=1)[0]
    assert len(head.projections) == 1 and head.projections[0].in_channels == 8
    logits = head(features)
    assert logits.shape == (1, 2, 4, 4, 4)
    torch.testing.assert_close(logits, head.output_layer(head.act(head.projections[0](features[1]))))
    # the finest level is not read, so a handler keeps only the coarser ones for it
    kept = head.reads(features)
    assert kept[0] is None and kept[1] is features[1]
    assert torch.equal(head(kept), logits)
    with pytest.raises(ValueError, match=r"level must be in \[0, 1\]"):
        segmentation_heads((4, 8), num_modalities=1, level=2)


def test_on_grid_samples_a_segmentation_target_to_a_coarser_prediction():
    target = (torch.rand(2, 3, 8, 8, 6) > 0.5).float()
    coarse = on_grid(target, torch.zeros(2, 3, 4, 4, 3))
    assert torch.equal(coarse, target[:, :, ::2, ::2, ::2])
    assert on_grid(target, torch.zeros(2, 3, 8, 8, 6)) is target
    labels = torch.tensor([0, 2])
    assert on_grid(labels, torch.zeros(2, 3)) is labels


def test_state_dict_has_no_head_parameters():
    net = small_net()
    heads = net.make_heads()
    net_tensors = {t.data_ptr() for t in net.state_dict().values()}
    assert not net_tensors & {p.data_ptr() for p in heads.parameters()}
    assert set(net.encoder_names()) <= dict(net.named_modules()).keys()
    assert {k.split(".")[0] for k in net.state_dict()} == {"encoders", "fusion", "decoder", "output_layer"}


def test_builds_from_bundle_config():
    config = {
        "network_def": {
            "_target_": "cggm_seg.networks.unet3d.MultiModalUNet3D",
            "in_modalities": 4,
            "out_channels": 3,
            "channels": [4, 8, 16],
            "strides": [2, 2],
            "norm": ["group", {"num_groups": 2}],
            "act": ["leakyrelu", {"negative_slope": 0.02}],
            "fusion": "sum",
        }
    }
    parser = ConfigParser(config)
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, MultiModalUNet3D)
    with torch.no_grad():
        assert net.eval()(torch.rand(1, 4, 16, 16, 16)).shape == (1, 3, 16, 16, 16)


def test_gradients_reach_every_encoder():
    net = small_net(modalities=4, fusion="sum")
    net(torch.rand(2, 4, 16, 16, 16)).pow(2).mean().backward()
    for name in net.encoder_names():
        grads = [p.grad for p in net.get_submodule(name).parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in grads), name
