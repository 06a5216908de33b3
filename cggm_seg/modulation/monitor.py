"""``HeadMonitor``: the heads' utilisation curves for methods that have no heads of their own."""

from __future__ import annotations

from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines import IterationEvents
from monai.utils import CommonKeys as Keys

from cggm_seg.modulation.base import ModalityHeadsHandler


class HeadMonitor(ModalityHeadsHandler):
    """Trains and scores the heads after each optimizer step and modulates nothing.

    It gives joint training (and any method without heads) the same ``cggm/utilisation``
    curves as CGGM. It runs at ITERATION_COMPLETED, when the network's graph is already
    freed, so it leaves the training step's peak memory unchanged, and a step timer that
    stops before it does not count it.
    """

    method = "head monitor"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._target: torch.Tensor | None = None

    def _register(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self._keep_target)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._on_iteration_completed)

    def _keep_target(self, engine: Engine) -> None:
        """The label, taken before the trainer decollates its output at ITERATION_COMPLETED."""
        self._target = engine.state.output[Keys.LABEL]

    def _on_iteration_completed(self, engine: Engine) -> None:
        utilisation, head_losses = self._measure(engine, self._target)
        self._target = None
        self.head_optimizer.step()
        self._record({"utilisation": utilisation, "head_loss": head_losses}, {})
        self._publish(engine)
