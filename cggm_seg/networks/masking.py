"""Blank chosen modalities at their encoders' inputs: the one mechanism behind unimodal training
(``cggm_seg.modulation.unimodal.UnimodalHandler``) and reliance measurement (``cggm_seg.metrics.reliance``).

A forward pre-hook on encoder i replaces the first positional argument of its ``forward`` (the
modality's input: channel i of a BraTS volume, a MOSI feature sequence) before the encoder sees
it. Working at the encoder, not the batch, makes it independent of the input format, and the
network code needs no switch for it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from cggm_seg.errors import UserError
from cggm_seg.networks.utils import submodule, unwrap

#: "zero": the input becomes zeros (after BraTS's per-channel normalisation, the brain's mean);
#: "mean": every sample's input becomes its own mean over all non-batch dimensions.
FILLS = ("zero", "mean")


def blank(value: torch.Tensor, fill: str) -> torch.Tensor:
    """``value`` with each sample replaced as ``fill`` says (see :data:`FILLS`)."""
    if fill == "zero":
        return torch.zeros_like(value)
    dims = tuple(range(1, value.dim()))
    return value.mean(dim=dims, keepdim=True).expand_as(value).clone() if dims else value.clone()


def check_fill(fill: str) -> str:
    """``fill`` if it is one of :data:`FILLS`, else a one-line error."""
    if fill not in FILLS:
        raise UserError(f"fill: {fill!r} is not one of {FILLS}")
    return fill


def _pre_hook(fill: str, name: str):
    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        if not args or not isinstance(args[0], torch.Tensor):
            raise RuntimeError(
                f"encoder {name!r} was called without a positional input tensor; "
                "its modality cannot be blanked"
            )
        return (blank(args[0], fill), *args[1:])

    return hook


def blank_encoder_inputs(
    network: nn.Module, encoders: Sequence[str], fill: str = "zero"
) -> list[RemovableHandle]:
    """Blank the inputs of the named encoders of ``network`` until the returned handles are removed."""
    check_fill(fill)
    root = unwrap(network)
    return [
        submodule(root, name, "encoders").register_forward_pre_hook(_pre_hook(fill, name))
        for name in encoders
    ]


@contextmanager
def blanked(network: nn.Module, encoders: Sequence[str], fill: str = "zero") -> Iterator[None]:
    """Context in which the named encoders of ``network`` see blank inputs."""
    handles = blank_encoder_inputs(network, encoders, fill)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
