"""An Ignite handler that ends training on a NaN or infinite loss before the weights take the step."""

from __future__ import annotations

import torch
import torch.distributed as dist
from ignite.engine import Engine
from monai.engines.utils import IterationEvents

from cggm_seg.errors import UserError


class StopOnNonFiniteLoss:
    """Stop training with a clear error when the loss is NaN or infinite, before the optimizer applies it.

    Checked after ``backward()`` (``BACKWARD_COMPLETED``), when the loss holds every term the
    modulation handlers added and the weights are still untouched: a NaN step would make every
    weight NaN, and training would go on saving them. Under DDP the ranks agree, so all of them stop.
    """

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        loss = engine.state.output["loss"].detach()
        bad = (~torch.isfinite(loss)).any().float()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(bad)
        if bad.item():
            value = loss.item() if loss.numel() == 1 else "not finite"
            finite_here = bool(torch.isfinite(loss).all())
            where = "another rank's loss is not finite" if finite_here else f"the loss is {value}"
            raise UserError(
                f"training: {where} at epoch {engine.state.epoch}, iteration {engine.state.iteration}; "
                "stopped before the weights took the step (check the images for NaN/Inf with `cggm-seg "
                "prepare brats`, or lower learning_rate)"
            )
