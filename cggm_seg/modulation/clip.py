"""``ClipGradNorm``: gradient-norm clipping between ``backward()`` and ``optimizer.step()``."""

from __future__ import annotations

import torch
from ignite.engine import Engine
from monai.engines import IterationEvents

from cggm_seg.errors import UserError
from cggm_seg.modulation.base import amp_scaler


class ClipGradNorm:
    """Clip the gradient norm between ``backward()`` and ``optimizer.step()`` (AMP-aware).

    Attach after a gradient-modulation handler so the clip sees the modulated gradients,
    as in the authors' CMU-MOSI training.
    """

    def __init__(self, max_norm: float) -> None:
        if max_norm <= 0:
            raise UserError(f"max_norm: expected > 0, got {max_norm}")
        self.max_norm = max_norm

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        scaler = amp_scaler(engine)
        if scaler is not None:
            scaler.unscale_(engine.optimizer)
        torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.max_norm)
