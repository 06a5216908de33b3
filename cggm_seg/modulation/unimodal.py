"""``UnimodalHandler``: train on one modality, every other encoder fed a blank input."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from torch import nn
from torch.utils.hooks import RemovableHandle

from cggm_seg.errors import UserError
from cggm_seg.modulation.base import EncoderHandler, modality_labels
from cggm_seg.networks.masking import blank_encoder_inputs

logger = logging.getLogger(__name__)


class UnimodalHandler(EncoderHandler):
    """Train on one modality only: every other encoder sees zeros instead of its input.

    The network keeps its M encoders, so the model, the transforms and the data stay those of the
    bundle; the blanked encoders receive a constant input, which leaves them (and their share of
    the fusion) a learned constant. The blanking is a forward pre-hook on the network object, so
    the trainer's own validation sees it too; a separate evaluation or inference of a unimodal
    model must blank the same encoders (:func:`keep_only_modality`).

    Args:
        encoders: dotted names of the modality encoders, in modality order.
        modality: the modality to keep, by name (from ``modality_names``) or index.
        modality_names: names of the modalities, in encoder order.
    """

    def __init__(
        self, encoders: Sequence[str], modality: str | int, modality_names: Sequence[str] | None = None
    ) -> None:
        super().__init__(encoders, modality_names)
        self.index = modality_index(modality, self.modality_names)
        self.handles: list[RemovableHandle] = []

    def _on_network(self, network: nn.Module) -> None:
        self.handles = keep_only_modality(network, self.encoder_names, self.index)
        logger.info("unimodal training on %s", self.modality_names[self.index])


def modality_index(modality: str | int, names: Sequence[str]) -> int:
    """Index of ``modality`` given by name or index, with a one-line error naming the setting."""
    if isinstance(modality, str) and modality in names:
        return list(names).index(modality)
    if isinstance(modality, int) and not isinstance(modality, bool) and 0 <= modality < len(names):
        return modality
    raise UserError(f"modality: {modality!r} is neither one of {list(names)} nor an index below {len(names)}")


def keep_only_modality(
    network: nn.Module,
    encoders: Sequence[str],
    modality: str | int,
    modality_names: Sequence[str] | None = None,
) -> list[RemovableHandle]:
    """Blank every encoder of ``network`` but the one of ``modality``; returns the hooks' handles."""
    names = modality_labels(modality_names, len(encoders))
    index = modality_index(modality, names)
    return blank_encoder_inputs(network, [e for i, e in enumerate(encoders) if i != index])
