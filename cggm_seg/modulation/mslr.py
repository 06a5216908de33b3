"""``MSLRHandler``: modality-specific learning rates (Yao & Mihalcea, 2022)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from ignite.engine import Engine, Events
from monai.engines import IterationEvents
from torch import nn

from cggm_seg.errors import UserError
from cggm_seg.modulation.base import EncoderHandler, UpdateScaler, per_modality
from cggm_seg.networks.utils import encoder_parameters

logger = logging.getLogger(__name__)


class MSLRHandler(EncoderHandler):
    """Modality-specific learning rates: encoder i learns at ``lr_scales[i]`` times the optimizer's rate.

    Implemented by scaling the update, not the gradient: the encoder parameters are copied just
    before ``optimizer.step()`` (BACKWARD_COMPLETED) and, after the step (ITERATION_COMPLETED),
    set to ``before + s_i * (after - before)``. For every optimizer whose step is
    ``p -= lr * u(state, grad)`` with a state that does not depend on ``lr`` — SGD with momentum,
    Nesterov and weight decay, Adam, AdamW, RMSprop — this is exactly what a parameter group
    with learning rate ``s_i * lr`` would do, schedulers included, without rebuilding the
    optimizer the bundle made. Scaling the gradient instead would be exact only for plain SGD:
    with weight decay the decay term stays unscaled, and Adam divides the scale away.
    A skipped AMP step moves nothing and stays unmoved. Fusion parameters are untouched.

    Args:
        encoders: dotted names of the modality encoders, in modality order.
        lr_scales: ``{modality name: factor}`` (unnamed modalities 1.0) or one factor per encoder.
        modality_names: names of the modalities, in encoder order.
    """

    def __init__(
        self,
        encoders: Sequence[str],
        lr_scales: Mapping[str, float] | Sequence[float],
        modality_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(encoders, modality_names)
        self.lr_scales = per_modality(lr_scales, self.modality_names, 1.0, "lr_scales")
        if any(s < 0 for s in self.lr_scales):
            raise UserError(f"lr_scales: factors must be >= 0, got {self.lr_scales}")
        self._params: list[tuple[list[nn.Parameter], float]] = []
        self._updates = UpdateScaler()

    def _register(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self._snapshot)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._rescale)

    def _on_network(self, network: nn.Module) -> None:
        groups = encoder_parameters(network, self.encoder_names)
        self._params = [(params, scale) for params, scale in zip(groups, self.lr_scales) if scale != 1.0]
        logger.info("MSLR learning-rate factors %s", dict(zip(self.modality_names, self.lr_scales)))

    def _snapshot(self, engine: Engine) -> None:
        self._updates.snapshot(self._params)

    def _rescale(self, engine: Engine) -> None:
        self._updates.apply()
