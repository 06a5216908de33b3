"""3D U-Net with one encoder per MRI sequence, for CGGM on BraTS.

CGGM scales the gradients of each modality's encoder separately, so every input channel
gets its own encoder (``encoders[i]`` sees only channel i). The per-level features of the
M encoders are fused, decoded with skip connections and projected by ``output_layer``;
fusion, decoder and output layer together are the paper's fusion module Omega.

The network compiles with ``torch.jit.script`` (``python -m monai.bundle ckpt_export`` with its
defaults), so its forward code keeps to what TorchScript accepts.

What a training step keeps for the backward pass (``cggm-seg benchmark cost``, docs/PERFORMANCE.md)
is mostly the M encoders' full-resolution maps: the activations work in place, the concat fusion
convolves each modality's slice of its weight instead of copying the M maps into one tensor, and
``checkpoint_encoders`` recomputes the encoders in the backward pass instead of keeping their maps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, UnetResBlock, UnetUpBlock
from torch import nn
from torch.utils.checkpoint import checkpoint

from cggm_seg.networks.heads import DEFAULT_ACT, ModalityHeads, segmentation_heads

FUSION_MODES = ("concat", "sum")
#: instance norm with a learnt scale and shift, as in MONAI's DynUNet and nnU-Net: without them each
#: channel's activation threshold is pinned at its mean over the volume, and some training seeds never
#: lifted a tumour region above threshold (docs/METHOD.md)
DEFAULT_NORM: tuple = ("instance", {"affine": True})


class ModalityEncoder(nn.Module):
    """Encodes one single-channel volume into per-level features, finest (full resolution) first.

    With ``checkpointed`` a training forward keeps only the input for the backward pass and runs the
    levels again there (activation checkpointing): same gradients, about a third more encoder FLOPs.
    A forward hook on the encoder still fires once per step: the recomputation calls the levels,
    not the encoder.
    """

    def __init__(
        self,
        channels: Sequence[int],
        strides: Sequence[int],
        norm: str | tuple,
        act: str | tuple,
        dropout: float | None,
        checkpointed: bool = False,
    ) -> None:
        super().__init__()
        self.checkpointed = checkpointed
        in_channels = (1, *channels[:-1])
        level_strides = (1, *strides)
        self.levels = nn.ModuleList(
            UnetResBlock(
                3, c_in, c_out, kernel_size=3, stride=s, norm_name=norm, act_name=act, dropout=dropout
            )
            for c_in, c_out, s in zip(in_channels, channels, level_strides, strict=True)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # training only: TorchScript leaves the branch out (checkpoint is not scriptable)
        if not torch.jit.is_scripting() and self.checkpointed and self.training and torch.is_grad_enabled():
            return checkpoint(self._levels, x, use_reentrant=False)
        return self._levels(x)

    def _levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for level in self.levels:
            x = level(x)
            features.append(x)
        return features


class LevelFusion(nn.Module):
    """Merges the M encoders' features level by level into one feature map per level.

    "concat" learns how much each modality contributes (a 1x1x1 conv over the concatenated maps);
    "sum" adds the maps and has no parameters, leaving the weighting to the decoder.

    The concat conv is computed as the sum of each modality's map convolved with its slice of the
    weight: the same function and parameters, without the concatenated copy that autograd would
    keep (M times a level's map, at full resolution the largest tensor of the step).
    """

    def __init__(self, channels: Sequence[int], num_modalities: int, mode: str) -> None:
        super().__init__()
        if mode not in FUSION_MODES:
            raise ValueError(f"fusion must be one of {FUSION_MODES}, got {mode!r}.")
        self.mode = mode
        self.mixers = nn.ModuleList()
        if mode == "concat":
            self.mixers.extend(
                Convolution(3, num_modalities * c, c, kernel_size=1, conv_only=True) for c in channels
            )

    def forward(self, features_per_modality: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        levels = len(features_per_modality[0])
        if self.mode == "sum":
            return [torch.stack([f[k] for f in features_per_modality]).sum(dim=0) for k in range(levels)]
        fused = []
        for k, mixer in enumerate(self.mixers):
            weight, bias = mixer.conv.weight, mixer.conv.bias
            width = weight.shape[1] // len(features_per_modality)
            mixed = F.conv3d(features_per_modality[0][k], weight[:, :width], bias)
            for i in range(1, len(features_per_modality)):
                part = weight[:, i * width : (i + 1) * width]
                mixed = mixed + F.conv3d(features_per_modality[i][k], part)
            fused.append(mixed)
        return fused


@torch.jit.interface
class _UpBlock(nn.Module):
    """What the decoder calls on each ``UnetUpBlock``: lets TorchScript pick the block by level."""

    def forward(self, inp: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        pass


class UNetDecoder(nn.Module):
    """Upsamples from the deepest fused level to the finest, concatenating each fused skip."""

    def __init__(
        self,
        channels: Sequence[int],
        strides: Sequence[int],
        norm: str | tuple,
        act: str | tuple,
        dropout: float | None,
    ) -> None:
        super().__init__()
        # blocks[k] goes from level k + 1 up to level k
        self.blocks = nn.ModuleList(
            UnetUpBlock(
                3,
                channels[k + 1],
                channels[k],
                kernel_size=3,
                stride=s,
                upsample_kernel_size=s,
                norm_name=norm,
                act_name=act,
                dropout=dropout,
            )
            for k, s in enumerate(strides)
        )

    def forward(self, fused: list[torch.Tensor]) -> torch.Tensor:
        x = fused[-1]
        # TorchScript indexes a ModuleList with a loop variable only through a module interface, whose
        # ``forward`` is called directly: hooks registered on the blocks themselves would not run
        for k in range(len(self.blocks) - 1, -1, -1):
            block: _UpBlock = self.blocks[k]
            x = block.forward(x, fused[k])
        return x


class MultiModalUNet3D(nn.Module):
    """Multimodal 3D U-Net: input ``[B, M, D, H, W]`` (channel i = modality i), logits ``[B, out, D, H, W]``.

    Sub-modules: ``encoders`` (one per modality), ``fusion``, ``decoder``, ``output_layer``.
    Every spatial size must be divisible by ``prod(strides)``. Sigmoid/softmax belongs to
    the loss and post-transforms, not here. ``checkpoint_encoders`` trades encoder FLOPs for the
    memory of their activations in training (:class:`ModalityEncoder`); it changes no result.
    """

    output_layer_name: ClassVar[str] = "output_layer"

    def __init__(
        self,
        in_modalities: int = 4,
        out_channels: int = 3,
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[int] = (2, 2, 2),
        norm: str | tuple = DEFAULT_NORM,
        act: str | tuple = DEFAULT_ACT,
        dropout: float = 0.0,
        fusion: str = "concat",
        checkpoint_encoders: bool = False,
    ) -> None:
        super().__init__()
        if in_modalities < 1:
            raise ValueError(f"in_modalities must be >= 1, got {in_modalities}.")
        if len(strides) != len(channels) - 1:
            raise ValueError(
                f"strides needs one entry per downsampling (len(channels) - 1 = {len(channels) - 1}), "
                f"got {len(strides)}: channels={list(channels)}, strides={list(strides)}."
            )
        self.in_modalities = in_modalities
        self.out_channels = out_channels
        self.channels = tuple(channels)
        self.size_divisor = math.prod(strides)
        # MONAI adds a Dropout(p=0) layer for any non-None dropout; None keeps the model clean.
        drop = dropout or None
        self.encoders = nn.ModuleList(
            ModalityEncoder(channels, strides, norm, act, drop, checkpoint_encoders)
            for _ in range(in_modalities)
        )
        self.fusion = LevelFusion(channels, in_modalities, fusion)
        self.decoder = UNetDecoder(channels, strides, norm, act, drop)
        self.output_layer = nn.Conv3d(channels[0], out_channels, kernel_size=1)

    def encoder_names(self) -> list[str]:
        """Dotted names of the encoders, in modality order, for CGGM's forward hooks."""
        return [f"encoders.{i}" for i in range(self.in_modalities)]

    def make_heads(
        self, hidden: int | None = None, act: str | tuple = DEFAULT_ACT, refine: int = 0, level: int = 0
    ) -> ModalityHeads:
        """Training-only per-modality heads matching this network's encoders and output layer."""
        return segmentation_heads(
            self.channels, self.in_modalities, self.out_channels, hidden, act, refine, level
        )

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != self.in_modalities:
            raise ValueError(
                f"MultiModalUNet3D expects input [B, {self.in_modalities}, D, H, W], got {list(x.shape)}."
            )
        spatial = list(x.shape[2:])
        if any([s % self.size_divisor != 0 for s in spatial]):  # a list: TorchScript has no generators
            raise ValueError(
                f"MultiModalUNet3D needs every spatial size divisible by {self.size_divisor} "
                f"(the product of strides), got spatial size {spatial}."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        features = [encoder(x[:, i : i + 1]) for i, encoder in enumerate(self.encoders)]
        return self.output_layer(self.decoder(self.fusion(features)))
