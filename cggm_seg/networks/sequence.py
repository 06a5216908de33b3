"""Multimodal sequence network for CMU-MOSI, IEMOCAP and Food-101, and its CGGM heads.

Shape of the model (after MulT and the CGGM authors' sequence models):

- one :class:`ModalityEncoder` per modality, ``encoders.<modality>``: a 1-D convolution
  projects the features to ``d_model``, sinusoidal positions are added, and a
  ``nn.TransformerEncoder`` runs over the valid steps. Its output ``[B, T, d_model]`` is
  zero at padded steps; it is the module CGGM hooks (:meth:`SequenceFusionNet.encoder_names`).
- fusion: the encoded sequences, each tagged with a learned modality embedding, are
  concatenated in time and run through a second transformer; the valid steps are
  mean-pooled, refined by a residual MLP, and ``output_layer`` maps them to the outputs.
- :func:`sequence_heads`: the training-only per-modality classifiers. Each pools its
  encoder's output over the non-zero (valid) steps, applies a small MLP and an
  ``output_layer`` with the same weight shape as the network's, as CGGM's "weights"
  direction mode needs.

The network takes the dict :func:`cggm_seg.adapters.sequence_core.prepare_sequence_batch`
makes: ``{modality: [B, T, D], "lengths": {modality: [B]}}`` (``lengths`` optional).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from cggm_seg.networks.heads import ModalityHeads


def sinusoidal_positions(length: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """The transformer's fixed sine/cosine position code ``[length, dim]`` (any length, no table)."""
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    even = torch.arange(0, dim, 2, device=device, dtype=torch.float32)
    frequency = torch.exp(even * (-math.log(1e4) / dim))
    code = torch.zeros(length, dim, device=device)
    code[:, 0::2] = torch.sin(position * frequency)
    code[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return code


def masked_mean(features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``features [B, T, d]`` over the steps where ``valid [B, T]`` is True (0 if none)."""
    weights = valid.to(features.dtype)[..., None]
    return (features * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def _transformer(d_model: int, num_heads: int, num_layers: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(d_model, num_heads, dim_feedforward=4 * d_model, dropout=dropout,
                                       batch_first=True)
    return nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)


class ModalityEncoder(nn.Module):
    """Features ``[B, T, in_dim]`` -> ``[B, T, d_model]``, zero at padded steps."""

    def __init__(self, in_dim: int, d_model: int, num_heads: int, num_layers: int, kernel_size: int = 1,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd to keep the sequence length, got {kernel_size}")
        self.projection = nn.Conv1d(in_dim, d_model, kernel_size, padding=kernel_size // 2, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.transformer = _transformer(d_model, num_heads, num_layers, dropout)
        self.scale = math.sqrt(d_model)

    def forward(self, features: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        steps = self.projection(features.transpose(1, 2)).transpose(1, 2)
        positions = sinusoidal_positions(steps.shape[1], steps.shape[2], steps.device)
        steps = self.dropout(steps * self.scale + positions)
        padding = None if valid is None else ~valid
        steps = self.transformer(steps, src_key_padding_mask=padding)
        return steps if padding is None else steps.masked_fill(padding[..., None], 0.0)


class SequenceFusionNet(nn.Module):
    """Per-modality transformer encoders, a fusion transformer and ``output_layer``.

    Args:
        input_dims: modality name -> feature size, in modality order (a dataset's ``feature_dims()``).
        num_outputs: 1 for regression, the number of classes for classification.
        d_model: width of every encoder and of the fusion (``d_fusion``).
        num_heads: attention heads; must divide ``d_model``.
        encoder_layers / fusion_layers: transformer depth per modality / of the fusion.
        kernel_size: projection kernel, one odd int for all or modality -> int.
        dropout: dropout inside the transformers and the output MLP.
    """

    def __init__(self, input_dims: Mapping[str, int], num_outputs: int, d_model: int = 40, num_heads: int = 5,
                 encoder_layers: int = 4, fusion_layers: int = 2, kernel_size: int | Mapping[str, int] = 1,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if len(input_dims) < 2:
            raise ValueError(f"a multimodal network needs at least two modalities, got {list(input_dims)}")
        kernels = kernel_size if isinstance(kernel_size, Mapping) else dict.fromkeys(input_dims, kernel_size)
        self.modalities = tuple(input_dims)
        self.encoders = nn.ModuleDict({
            name: ModalityEncoder(int(dim), d_model, num_heads, encoder_layers, kernels[name], dropout)
            for name, dim in input_dims.items()
        })
        self.modality_embedding = nn.Parameter(0.02 * torch.randn(len(self.modalities), d_model))
        self.fusion = _transformer(d_model, num_heads, fusion_layers, dropout)
        self.refine = nn.Sequential(nn.Linear(d_model, d_model), nn.ReLU(), nn.Dropout(dropout),
                                    nn.Linear(d_model, d_model))
        self.output_layer = nn.Linear(d_model, num_outputs)

    def encoder_names(self) -> list[str]:
        """Dotted names of the encoder modules, in modality order (what CGGM hooks)."""
        return [f"encoders.{name}" for name in self.modalities]

    def forward(self, inputs: Mapping[str, Any]) -> torch.Tensor:
        missing = [name for name in self.modalities if name not in inputs]
        if missing:
            raise KeyError(f"network inputs lack modalities {missing}; expected keys {list(self.modalities)}")
        lengths = inputs.get("lengths") or {}
        encoded, masks = [], []
        for index, name in enumerate(self.modalities):
            features = inputs[name]
            steps = torch.arange(features.shape[1], device=features.device)
            if name in lengths:  # a 0-length sample keeps its first (zero) step: attention needs one key
                valid = steps[None, :] < lengths[name].to(features.device).clamp(min=1)[:, None]
            else:
                valid = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
            encoded.append(self.encoders[name](features, valid) + self.modality_embedding[index])
            masks.append(valid)
        valid = torch.cat(masks, dim=1)
        fused = self.fusion(torch.cat(encoded, dim=1), src_key_padding_mask=~valid)
        pooled = masked_mean(fused, valid)
        return self.output_layer(pooled + self.refine(pooled))


class SequenceHead(nn.Module):
    """Pools one encoder's output over its non-zero steps -> MLP -> ``output_layer``.

    The encoder zeroes padded steps, so the head finds the valid steps from the features
    alone: CGGM hands it nothing but the captured encoder output.
    """

    def __init__(self, d_model: int, num_outputs: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d_model, d_model), nn.ReLU(), nn.Dropout(dropout))
        self.output_layer = nn.Linear(d_model, num_outputs)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        valid = features.abs().amax(dim=-1) > 0
        return self.output_layer(self.mlp(masked_mean(features, valid)))


def sequence_heads(num_modalities: int, d_model: int, num_outputs: int,
                   dropout: float = 0.0) -> ModalityHeads:
    """One :class:`SequenceHead` per modality, in modality order, for a network of width ``d_model``."""
    if num_modalities < 1:
        raise ValueError(f"num_modalities must be >= 1, got {num_modalities}")
    return ModalityHeads(SequenceHead(d_model, num_outputs, dropout) for _ in range(num_modalities))
