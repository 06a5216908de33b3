"""Training-only per-modality segmentation heads for CGGM.

CGGM needs one small classifier per modality, reading that modality's detached encoder
features, to measure how much each modality has learned. The heads here are deliberately
light (one 1x1x1 projection per encoder level, upsampled and summed): full decoders made a
training step about 1.5x slower for no measured benefit. They live outside the network so
they never reach the exported model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers import get_act_layer
from torch import nn

#: in place: the activation's output replaces the norm's, so autograd keeps one map where it kept two
#: (leaky ReLU's gradient reads the same signs from its output as from its input)
DEFAULT_ACT: tuple = ("leakyrelu", {"negative_slope": 0.01, "inplace": True})


class ModalityHead(nn.Module):
    """Maps one encoder's per-level features (finest first) to logits on the grid of level ``level``.

    Each level from ``level`` on is projected to ``hidden`` channels by a 1x1x1 conv, upsampled
    (trilinear) and summed, then passed through the nonlinearity and ``output_layer``. ``refine`` > 0
    adds that many 3x3x3 conv + nonlinearity blocks first: a small decoder, for heads that must see
    spatial context to score a modality fairly (the light default sees one voxel).

    ``level`` > 0 makes the head read only that level and the coarser ones and predict on that
    level's grid, where it is scored against the target sampled to the same grid
    (:func:`on_grid`). On 3D volumes the heads' full-resolution work dominated their cost: the
    upsampling (``docs/METHOD.md``, *Cheaper heads*) and then the loss, whose graph kept about
    0.45 GiB a head at 128^3, batch 2 (``docs/PERFORMANCE.md``, *Step cost*); level 1 does it all on
    an eighth of the voxels.

    ``output_layer`` has the same weight shape as the network's fusion output layer, which
    the "weights" direction mode of CGGM compares directly.
    """

    def __init__(
        self,
        feature_channels: Sequence[int],
        out_channels: int,
        hidden: int,
        act: str | tuple = DEFAULT_ACT,
        refine: int = 0,
        level: int = 0,
    ) -> None:
        super().__init__()
        if refine < 0:
            raise ValueError(f"refine must be >= 0, got {refine}.")
        if not 0 <= level < len(feature_channels):
            raise ValueError(
                f"level must be in [0, {len(feature_channels) - 1}] (an encoder level), got {level}."
            )
        self.levels, self.level = len(feature_channels), level
        self.projections = nn.ModuleList(
            nn.Conv3d(c, hidden, kernel_size=1) for c in feature_channels[level:]
        )
        self.act = get_act_layer(act)
        self.refine = nn.Sequential(
            *(
                nn.Sequential(nn.Conv3d(hidden, hidden, kernel_size=3, padding=1), get_act_layer(act))
                for _ in range(refine)
            )
        )
        self.output_layer = nn.Conv3d(hidden, out_channels, kernel_size=1)

    def reads(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
        """``features`` with the levels this head does not read replaced by ``None``: what a handler
        that keeps an encoder's output for the head until after the forward pass needs to keep."""
        return [None] * self.level + list(features[self.level :])

    def forward(self, features: Sequence[torch.Tensor | None]) -> torch.Tensor:
        if len(features) != self.levels:
            raise ValueError(
                f"ModalityHead expects {self.levels} feature levels (finest first), got {len(features)}."
            )
        read = features[self.level :]
        # Coarse to fine, one upsampling per level: only the last one runs at the head's resolution,
        # which halves the head's CPU cost against upsampling every level straight to the finest.
        summed = self.projections[-1](read[-1])
        for projection, feature in zip(self.projections[-2::-1], read[-2::-1], strict=True):
            upsampled = F.interpolate(summed, size=feature.shape[2:], mode="trilinear", align_corners=False)
            summed = upsampled + projection(feature)
        return self.output_layer(self.refine(self.act(summed)))


def on_grid(target: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """``target`` sampled (nearest) to the spatial grid of a head's coarser ``prediction``; unchanged
    when the grids agree or the target has no spatial axes (the sequence tasks)."""
    if target.ndim < 3 or target.ndim != prediction.ndim or target.shape[2:] == prediction.shape[2:]:
        return target
    return F.interpolate(target, size=prediction.shape[2:], mode="nearest")


class ModalityHeads(nn.ModuleList):
    """One head per modality, in modality order.

    Its ``forward`` runs every head so the set can be wrapped in its own
    DistributedDataParallel (DDP needs a callable module to average the heads' gradients).
    """

    def forward(self, features_per_modality: Sequence[Sequence[torch.Tensor]]) -> list[torch.Tensor]:
        if len(features_per_modality) != len(self):
            raise ValueError(
                f"Expected features of {len(self)} modalities, got {len(features_per_modality)}."
            )
        return [head(features) for head, features in zip(self, features_per_modality, strict=True)]

    def output_layers(self) -> list[nn.Conv3d]:
        """The heads' output layers, whose weights or weight gradients CGGM compares with the network's."""
        return [head.output_layer for head in self]


def segmentation_heads(
    feature_channels: Sequence[int],
    num_modalities: int,
    out_channels: int = 3,
    hidden: int | None = None,
    act: str | tuple = DEFAULT_ACT,
    refine: int = 0,
    level: int = 0,
) -> ModalityHeads:
    """Builds ``num_modalities`` light heads for encoders whose levels have ``feature_channels``.

    ``hidden`` defaults to ``feature_channels[0]`` so each head's output layer matches a
    U-Net whose last decoder level has that many channels. ``refine`` adds that many 3x3x3 conv
    blocks to each head; ``level`` is the encoder level the heads compute at (see :class:`ModalityHead`).
    """
    if num_modalities < 1:
        raise ValueError(f"num_modalities must be >= 1, got {num_modalities}.")
    width = feature_channels[0] if hidden is None else hidden
    return ModalityHeads(
        ModalityHead(feature_channels, out_channels, width, act, refine, level) for _ in range(num_modalities)
    )
