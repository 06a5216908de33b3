"""Food-101 network whose image and text encoders are a pretrained ViT and BERT, trained end to end.

With frozen features (``cggm-seg food101 extract``, :class:`SequenceFusionNet`) the encoders
CGGM modulates are layers on top of fixed ViT/BERT tokens. Here the encoders are the
backbones themselves, loaded from local Hugging Face folders, so ``rho * B_i`` scales the
gradients of the ViT and of BERT. The bundle's ``encoders`` setting chooses between the two
(:func:`food101_network`).

- ``encoders.image`` / ``encoders.text`` (:class:`PretrainedEncoder`): the backbone's last
  hidden states, linearly mapped to ``d_model``, zero at padded text steps, so the
  :func:`cggm_seg.networks.sequence.sequence_heads` serve as CGGM heads unchanged.
- fusion as in :class:`SequenceFusionNet`: a learned modality embedding on each token, a
  transformer over the image and text tokens together, the mean of the valid tokens, a
  residual MLP and ``output_layer``.

Input: ``{"image": pixel_values [B, 3, H, W], "text": token ids [B, T], "lengths": {"text": [B]}}``
(:func:`cggm_seg.adapters.food101_images.collate`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from cggm_seg.errors import UserError
from cggm_seg.networks.pretrained import from_local
from cggm_seg.networks.sequence import SequenceFusionNet, masked_mean

MODALITIES = ("image", "text")
#: the Food-101 bundle's ``encoders`` setting: trainable layers on frozen features, or the backbones
ENCODER_MODES = ("frozen_features", "finetune")


def _backbone(folder: str | os.PathLike, setting: str) -> nn.Module:
    # no pooler: its weights would get no gradient, which DistributedDataParallel refuses
    return from_local("AutoModel", folder, setting, add_pooling_layer=False)


class PretrainedEncoder(nn.Module):
    """A Hugging Face backbone's last hidden states mapped to ``d_model``; zero where ``valid`` is False.

    ``input_name`` is the backbone's input keyword (``pixel_values`` for a ViT, ``input_ids`` for
    BERT). The modality's input is the first positional argument of ``forward``, which is what
    :mod:`cggm_seg.networks.masking` blanks for unimodal training.
    """

    def __init__(self, backbone: nn.Module, input_name: str, d_model: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.input_name = input_name
        self.projection = nn.Linear(backbone.config.hidden_size, d_model)

    def forward(self, values: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        inputs = {self.input_name: values}
        if valid is not None:
            inputs["attention_mask"] = valid.long()
        tokens = self.projection(self.backbone(**inputs).last_hidden_state)
        return tokens if valid is None else tokens.masked_fill(~valid[..., None], 0.0)


class Food101FinetuneNet(nn.Module):
    """ViT and BERT encoders from local folders, a fusion transformer and ``output_layer``.

    Args:
        vit: folder of a ViT-like model (``AutoModel``, input ``pixel_values``).
        bert: folder of a BERT-like model (``AutoModel``, inputs ``input_ids``, ``attention_mask``).
        num_outputs: number of classes.
        d_model, num_heads, fusion_layers, dropout: width, heads and depth of the fusion transformer
            and its dropout (the backbones keep their own).
    """

    def __init__(
        self,
        vit: str | os.PathLike,
        bert: str | os.PathLike,
        num_outputs: int,
        d_model: int = 40,
        num_heads: int = 5,
        fusion_layers: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict(
            {
                "image": PretrainedEncoder(_backbone(vit, "vit_dir"), "pixel_values", d_model),
                "text": PretrainedEncoder(_backbone(bert, "bert_dir"), "input_ids", d_model),
            }
        )
        self.modality_embedding = nn.Parameter(0.02 * torch.randn(len(MODALITIES), d_model))
        layer = nn.TransformerEncoderLayer(
            d_model, num_heads, dim_feedforward=4 * d_model, dropout=dropout, batch_first=True
        )
        self.fusion = nn.TransformerEncoder(layer, fusion_layers, enable_nested_tensor=False)
        self.refine = nn.Sequential(
            nn.Linear(d_model, d_model), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d_model, d_model)
        )
        self.output_layer = nn.Linear(d_model, num_outputs)

    def encoder_names(self) -> list[str]:
        """Dotted names of the encoder modules, in modality order (what CGGM hooks and scales)."""
        return [f"encoders.{name}" for name in MODALITIES]

    def parameter_groups(self, backbone_lr: float) -> list[dict[str, Any]]:
        """Optimizer groups: the pretrained backbones at ``backbone_lr``, everything else at the default."""
        backbone = {id(p) for encoder in self.encoders.values() for p in encoder.backbone.parameters()}
        return [
            {"params": [p for p in self.parameters() if id(p) in backbone], "lr": backbone_lr},
            {"params": [p for p in self.parameters() if id(p) not in backbone]},
        ]

    def forward(self, inputs: Mapping[str, Any]) -> torch.Tensor:
        ids = inputs["text"]
        lengths = (inputs.get("lengths") or {}).get("text")
        if lengths is None:
            text_valid = torch.ones(ids.shape, dtype=torch.bool, device=ids.device)
        else:
            steps = torch.arange(ids.shape[1], device=ids.device)
            text_valid = steps[None, :] < lengths.to(ids.device).clamp(min=1)[:, None]
        image = self.encoders["image"](inputs["image"])
        text = self.encoders["text"](ids, text_valid)
        image_valid = torch.ones(image.shape[:2], dtype=torch.bool, device=image.device)
        tokens = torch.cat([image + self.modality_embedding[0], text + self.modality_embedding[1]], dim=1)
        valid = torch.cat([image_valid, text_valid], dim=1)
        pooled = masked_mean(self.fusion(tokens, src_key_padding_mask=~valid), valid)
        return self.output_layer(pooled + self.refine(pooled))


def food101_network(
    encoders: str,
    input_dims: Mapping[str, int] | None,
    num_outputs: int,
    d_model: int = 40,
    num_heads: int = 5,
    encoder_layers: int = 4,
    fusion_layers: int = 2,
    kernel_size: int | Mapping[str, int] = 1,
    dropout: float = 0.1,
    vit: str | os.PathLike | None = None,
    bert: str | os.PathLike | None = None,
) -> nn.Module:
    """The Food-101 bundle's network for its ``encoders`` setting (see :data:`ENCODER_MODES`).

    ``frozen_features``: :class:`SequenceFusionNet` on the features' ``input_dims``;
    ``finetune``: :class:`Food101FinetuneNet` on the ``vit`` and ``bert`` folders
    (``encoder_layers`` and ``kernel_size`` do not apply: the backbones are the encoders).
    """
    if encoders == "frozen_features":
        return SequenceFusionNet(
            input_dims, num_outputs, d_model, num_heads, encoder_layers, fusion_layers, kernel_size, dropout
        )
    if encoders == "finetune":
        return Food101FinetuneNet(vit, bert, num_outputs, d_model, num_heads, fusion_layers, dropout)
    raise UserError(f"encoders: {encoders!r} is not one of {', '.join(ENCODER_MODES)}")
