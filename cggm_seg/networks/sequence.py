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

The network takes its inputs in either of two layouts (:meth:`SequenceFusionNet.forward`): the dict
:func:`cggm_seg.adapters.sequence_core.prepare_sequence_batch` makes, or one packed channel-first
tensor (:func:`pack_sequences`), the layout of the TorchScript export and of MONAI's bundle checks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from cggm_seg.errors import UserError
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


def _valid_steps(lengths: torch.Tensor | None, batch: int, steps: int, device: torch.device) -> torch.Tensor:
    """``[batch, steps]``, True at each sample's first ``lengths`` steps (all when None).

    A 0-length sample keeps its first (zero) step: attention needs one key.
    """
    if lengths is None:
        return torch.ones(batch, steps, dtype=torch.bool, device=device)
    return torch.arange(steps, device=device)[None, :] < lengths.to(device).clamp(min=1)[:, None]


def masked_mean(features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``features [B, T, d]`` over the steps where ``valid [B, T]`` is True (0 if none)."""
    weights = valid.to(features.dtype)[..., None]
    return (features * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def _transformer(d_model: int, num_heads: int, num_layers: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        d_model, num_heads, dim_feedforward=4 * d_model, dropout=dropout, batch_first=True
    )
    return nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)


class ModalityEncoder(nn.Module):
    """Features ``[B, T, in_dim]`` -> ``[B, T, d_model]``, zero at padded steps."""

    def __init__(
        self,
        in_dim: int,
        d_model: int,
        num_heads: int,
        num_layers: int,
        kernel_size: int = 1,
        dropout: float = 0.1,
    ) -> None:
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

    :meth:`forward` takes either input layout:

    - the data pipeline's dict ``{modality: [B, T_m, D_m], "lengths": {modality: [B]}}``
      (:func:`cggm_seg.adapters.sequence_core.pad_collate`; ``lengths`` optional), in eager mode;
    - ``packed [B, sum(D_m), T]``: the modalities' features stacked along channels in modality
      order, each zero-padded to ``T`` steps, with ``lengths [B, M]`` (valid steps per modality;
      None: all ``T``). A single channel-first tensor is what TorchScript and MONAI's
      ``verify_net_in_out`` can feed; :func:`pack_sequences` makes it from the dict.

    Both give the same outputs and run the encoders CGGM hooks the same way.

    Args:
        input_dims: modality name -> feature size, in modality order (a dataset's ``feature_dims()``).
        num_outputs: 1 for regression, the number of classes for classification.
        d_model: width of every encoder and of the fusion (``d_fusion``).
        num_heads: attention heads; must divide ``d_model``.
        encoder_layers / fusion_layers: transformer depth per modality / of the fusion.
        kernel_size: projection kernel, one odd int for all or modality -> int.
        dropout: dropout inside the transformers and the output MLP.
    """

    def __init__(
        self,
        input_dims: Mapping[str, int],
        num_outputs: int,
        d_model: int = 40,
        num_heads: int = 5,
        encoder_layers: int = 4,
        fusion_layers: int = 2,
        kernel_size: int | Mapping[str, int] = 1,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if len(input_dims) < 2:
            raise ValueError(f"a multimodal network needs at least two modalities, got {list(input_dims)}")
        kernels = kernel_size if isinstance(kernel_size, Mapping) else dict.fromkeys(input_dims, kernel_size)
        self.modalities = tuple(input_dims)
        self.feature_sizes = [int(dim) for dim in input_dims.values()]
        self.encoders = nn.ModuleDict(
            {
                name: ModalityEncoder(int(dim), d_model, num_heads, encoder_layers, kernels[name], dropout)
                for name, dim in input_dims.items()
            }
        )
        self.modality_embedding = nn.Parameter(0.02 * torch.randn(len(self.modalities), d_model))
        self.fusion = _transformer(d_model, num_heads, fusion_layers, dropout)
        self.refine = nn.Sequential(
            nn.Linear(d_model, d_model), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d_model, d_model)
        )
        self.output_layer = nn.Linear(d_model, num_outputs)

    def encoder_names(self) -> list[str]:
        """Dotted names of the encoder modules, in modality order (what CGGM hooks)."""
        return [f"encoders.{name}" for name in self.modalities]

    def check_feature_dims(self, dims: Mapping[str, int], source: str) -> bool:
        """One clear line when data from ``source`` has other feature sizes than the network's ``input_dims``.

        An inference config builds the network before it reads data (MONAI's export and checks read
        none), so the sizes are a setting there, not read from the data as in training.
        """
        expected = dict(zip(self.modalities, self.feature_sizes))
        if dict(dims) != expected:
            raise UserError(
                f"input_dims: the network takes features of sizes {expected}, but {source} holds "
                f'{dict(dims)}; pass --input_dims "{dict(dims)}" (the sizes training read)'
            )
        return True

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, num_outputs]`` from packed features and ``lengths``, or (eager) from the dict alone."""
        if isinstance(inputs, torch.Tensor):
            features, valid = self._unpack(inputs, lengths)
        else:  # the dict: TorchScript, for which ``inputs`` is a Tensor, compiles only the branch above
            features, valid = self._from_dict(inputs)
        encoded = []
        for index, encoder in enumerate(self.encoders.values()):
            encoded.append(encoder(features[index], valid[index]) + self.modality_embedding[index])
        mask = torch.cat(valid, dim=1)
        fused = self.fusion(torch.cat(encoded, dim=1), src_key_padding_mask=~mask)
        pooled = masked_mean(fused, mask)
        return self.output_layer(pooled + self.refine(pooled))

    def _from_dict(self, inputs: Mapping[str, Any]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        missing = [name for name in self.modalities if name not in inputs]
        if missing:
            raise KeyError(f"network inputs lack modalities {missing}; expected keys {list(self.modalities)}")
        lengths = inputs.get("lengths") or {}
        features = [inputs[name] for name in self.modalities]
        valid = [
            _valid_steps(lengths.get(name), steps.shape[0], steps.shape[1], steps.device)
            for name, steps in zip(self.modalities, features)
        ]
        return features, valid

    def _unpack(
        self, packed: torch.Tensor, lengths: torch.Tensor | None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        channels, modalities = sum(self.feature_sizes), len(self.feature_sizes)
        if packed.dim() != 3 or packed.shape[1] != channels:
            raise ValueError(f"expected packed features [B, {channels}, T], got {list(packed.shape)}")
        if lengths is not None and list(lengths.shape) != [packed.shape[0], modalities]:
            raise ValueError(f"expected lengths [B, {modalities}], got {list(lengths.shape)}")
        features: list[torch.Tensor] = []
        valid: list[torch.Tensor] = []
        for index, block in enumerate(torch.split(packed, self.feature_sizes, dim=1)):
            given = None if lengths is None else lengths[:, index]
            mask = _valid_steps(given, packed.shape[0], packed.shape[2], packed.device)
            longest = int(mask.sum(dim=1).max())  # as pad_collate pads: no attention over the shared padding
            features.append(block[:, :, :longest].transpose(1, 2))
            valid.append(mask[:, :longest])
        return features, valid


def pack_sequences(inputs: Mapping[str, Any], modalities: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The dict layout -> ``(packed [B, sum(D_m), T], lengths [B, M])``, the TorchScript export's inputs.

    Each modality of ``modalities`` (the network's order) is zero-padded to the longest one and
    stacked along channels; ``lengths`` are the dict's, or each modality's full length.
    """
    given = inputs.get("lengths") or {}
    steps = max(inputs[name].shape[1] for name in modalities)
    blocks, lengths = [], []
    for name in modalities:
        features = inputs[name]
        blocks.append(nn.functional.pad(features, (0, 0, 0, steps - features.shape[1])).transpose(1, 2))
        full = torch.full((features.shape[0],), features.shape[1], dtype=torch.long, device=features.device)
        lengths.append(given[name].to(features.device) if name in given else full)
    return torch.cat(blocks, dim=1), torch.stack(lengths, dim=1)


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


def sequence_heads(
    num_modalities: int, d_model: int, num_outputs: int, dropout: float = 0.0
) -> ModalityHeads:
    """One :class:`SequenceHead` per modality, in modality order, for a network of width ``d_model``."""
    if num_modalities < 1:
        raise ValueError(f"num_modalities must be >= 1, got {num_modalities}")
    return ModalityHeads(SequenceHead(d_model, num_outputs, dropout) for _ in range(num_modalities))
