"""The balancing methods CGGM is compared with, in the same engine: OGM-GE, MSLR and unimodal training.

Each is an Ignite handler for MONAI's ``SupervisedTrainer`` that ``cggm_seg.modulation.build_modulation``
selects by name; joint training is no handler at all.

* :class:`OGMGEHandler` — on-the-fly gradient modulation with generalisation enhancement (Peng et
  al., CVPR 2022), generalised from two modalities to M with the per-modality heads' scores.
* :class:`MSLRHandler` — modality-specific learning rates (Yao & Mihalcea, 2022): each encoder's
  optimizer update is multiplied by its own factor.
* :class:`UnimodalHandler` — train on one modality: every other encoder sees blank input.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines import IterationEvents
from monai.utils import CommonKeys as Keys
from torch import nn
from torch.utils.hooks import RemovableHandle

from cggm_seg.errors import UserError
from cggm_seg.handlers import GradientModulationHandler, NetworkHandler, encoder_parameters, modality_labels
from cggm_seg.modality_mask import blank_encoder_inputs

logger = logging.getLogger(__name__)

#: scores below this count as zero when forming OGM-GE's discrepancy ratios
SCORE_TOLERANCE = 1e-6


def ogm_ge_coefficients(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """OGM-GE coefficients ``k`` [M] from per-modality scores [M], generalised to M modalities.

    OGM-GE (two modalities u, v) forms the discrepancy ratio ``rho_u = s_u / s_v`` and slows the
    leading modality down: ``k_u = 1 - tanh(alpha * rho_u)`` if ``rho_u > 1``, else 1. With M
    modalities modality i is compared with the mean of the others,
    ``rho_i = s_i / mean_{j != i} s_j`` (for M = 2 this is the paper's ratio), and the paper's
    rule is kept as it is, jump at ``rho = 1`` included. A ratio is 1 (no modulation) when both
    sides are below :data:`SCORE_TOLERANCE`; a positive score over others that are all ~0 gives
    ``k = 0``.
    """
    if scores.dim() != 1 or scores.numel() < 2:
        raise ValueError(f"scores must be a 1-D tensor with one entry per modality (>= 2), "
                         f"got shape {tuple(scores.shape)}")
    scores = scores.float()
    others = (scores.sum() - scores) / (scores.numel() - 1)
    both_zero = (scores < SCORE_TOLERANCE) & (others < SCORE_TOLERANCE)
    ratios = torch.where(both_zero, torch.ones_like(scores), scores / others.clamp(min=SCORE_TOLERANCE))
    return torch.where(ratios > 1, 1 - torch.tanh(alpha * ratios), torch.ones_like(scores))


class OGMGEHandler(GradientModulationHandler):
    """OGM-GE for M modalities on a MONAI ``SupervisedTrainer``.

    OGM-GE scores each modality by the confidence its own branch of a late-fusion classifier
    gives the true class. That decomposition does not exist for a U-Net decoder or a fusion
    transformer, so here modality i's score is ``metric(heads[i](encoder output i), target)``
    — the same training-only heads and utilisation metric CGGM uses (mean Dice on BraTS, sign
    accuracy on MOSI). The coefficients are :func:`ogm_ge_coefficients` of those scores; encoder
    i's gradients are multiplied by ``k_i`` between ``backward()`` and ``optimizer.step()``.

    Generalisation enhancement (``gaussian_noise=True``): then every encoder gradient tensor
    ``g`` becomes ``k_i * g + N(0, std(g)^2)``, with ``std(g)`` the standard deviation of its
    entries before scaling, on every modality (not only the slowed one) and every tensor with
    more than one entry (the authors' code restricts it to conv weights, an artefact of 2-D
    CNN encoders). The noise comes from one generator seeded by ``noise_seed``, so DDP ranks draw
    the same noise and a resumed run continues the same sequence. Fusion parameters are never
    touched.

    Args:
        encoders, heads, head_optimizer, metric, head_loss, warmup_iterations, modality_names:
            as for :class:`~cggm_seg.handlers.CGGMHandler`; no modulation during the warm-up.
        alpha: OGM-GE's ``alpha`` (> 0): how hard the leading modality is slowed down.
        gaussian_noise: add the generalisation-enhancement noise (OGM-GE); ``False`` gives OGM.
        noise_seed: seed of the noise generator.
    """

    method = "OGM-GE"

    def __init__(
        self,
        encoders: Sequence[str],
        heads: nn.Module,
        head_optimizer: torch.optim.Optimizer,
        metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        alpha: float = 0.5,
        gaussian_noise: bool = True,
        noise_seed: int = 0,
        head_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        warmup_iterations: int = 0,
        modality_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(encoders, heads, head_optimizer, metric, head_loss, warmup_iterations,
                         modality_names)
        if not alpha > 0:
            raise UserError(f"alpha: OGM-GE needs alpha > 0, got {alpha}")
        self.alpha = float(alpha)
        self.gaussian_noise = bool(gaussian_noise)
        self.noise_seed = int(noise_seed)
        self._generator: torch.Generator | None = None

    def _resolve(self, engine: Engine) -> None:
        super()._resolve(engine)
        if self._generator is None:
            self._generator = torch.Generator(device=self._device).manual_seed(self.noise_seed)

    def _describe(self) -> str:
        return f"alpha={self.alpha} noise={self.gaussian_noise} warm-up={self.warmup_iterations}"

    def _on_loss_completed(self, engine: Engine) -> None:
        scores, head_losses = self._measure(engine, engine.state.output[Keys.LABEL])
        self.head_optimizer.step()
        self.coefficients = ogm_ge_coefficients(scores, self.alpha)
        self._record({"utilisation": scores, "coeff": self.coefficients, "head_loss": head_losses}, {})

    def _gradient_scales(self) -> list[float]:
        return self.coefficients.tolist()

    def _modulate_gradients(self) -> None:
        noise = self._noise() if self.gaussian_noise else []
        super()._modulate_gradients()
        for grad, sample in noise:
            grad.add_(sample)

    def _noise(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(gradient, noise) pairs, the noise drawn with the std of the still unscaled gradient."""
        pairs = []
        for params in self._encoder_params:
            for param in params:
                grad = param.grad
                if grad is not None and grad.numel() > 1:
                    sample = torch.randn(grad.shape, generator=self._generator, device=grad.device,
                                         dtype=grad.dtype)
                    pairs.append((grad, sample.mul_(grad.std())))
        return pairs

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self._generator is not None:
            state["noise_generator"] = self._generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "noise_generator" in state:
            if self._generator is None:
                self._generator = torch.Generator(device=self._device or "cpu")
            self._generator.set_state(state["noise_generator"])


def _per_modality(values: Mapping[str, float] | Sequence[float], names: Sequence[str], default: float,
                  setting: str) -> list[float]:
    """One value per modality from a ``{name: value}`` mapping (others ``default``) or a full list."""
    if isinstance(values, Mapping):
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise UserError(f"{setting}: unknown modalities {unknown}; expected names from {list(names)}")
        return [float(values.get(n, default)) for n in names]
    if len(values) != len(names):
        raise UserError(f"{setting}: {len(values)} values for {len(names)} modalities {list(names)}")
    return [float(v) for v in values]


class _EncoderHandler(NetworkHandler):
    """What the handlers that act on named encoders but need no heads share."""

    def __init__(self, encoders: Sequence[str], modality_names: Sequence[str] | None) -> None:
        self.encoder_names = list(encoders)
        if not self.encoder_names:
            raise UserError("encoders: expected the names of the modality encoders, got none")
        self.modality_names = modality_labels(modality_names, len(self.encoder_names))
        self._resolved = False

    def _register(self, engine: Engine) -> None:
        """The events this handler listens to (none by default)."""

    def _resolve(self, engine: Engine) -> None:
        if not self._resolved:
            self._resolved = True
            self._on_network(engine.network)

    def _on_network(self, network: nn.Module) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Nothing to resume: everything comes from the settings (kept for the bundle's checkpoints)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore (see :meth:`state_dict`)."""


class MSLRHandler(_EncoderHandler):
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

    def __init__(self, encoders: Sequence[str], lr_scales: Mapping[str, float] | Sequence[float],
                 modality_names: Sequence[str] | None = None) -> None:
        super().__init__(encoders, modality_names)
        self.lr_scales = _per_modality(lr_scales, self.modality_names, 1.0, "lr_scales")
        if any(s < 0 for s in self.lr_scales):
            raise UserError(f"lr_scales: factors must be >= 0, got {self.lr_scales}")
        self._params: list[tuple[list[nn.Parameter], float]] = []
        self._before: list[list[torch.Tensor]] = []

    def _register(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self._snapshot)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._rescale)

    def _on_network(self, network: nn.Module) -> None:
        groups = encoder_parameters(network, self.encoder_names)
        self._params = [(params, scale) for params, scale in zip(groups, self.lr_scales) if scale != 1.0]
        logger.info("MSLR learning-rate factors %s", dict(zip(self.modality_names, self.lr_scales)))

    @torch.no_grad()
    def _snapshot(self, engine: Engine) -> None:
        self._before = [[p.detach().clone() for p in params] for params, _ in self._params]

    @torch.no_grad()
    def _rescale(self, engine: Engine) -> None:
        for (params, scale), before in zip(self._params, self._before):
            torch._foreach_lerp_(before, [p.detach() for p in params], scale)
            torch._foreach_copy_([p.detach() for p in params], before)
        self._before = []


class UnimodalHandler(_EncoderHandler):
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

    def __init__(self, encoders: Sequence[str], modality: str | int,
                 modality_names: Sequence[str] | None = None) -> None:
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


def keep_only_modality(network: nn.Module, encoders: Sequence[str], modality: str | int,
                       modality_names: Sequence[str] | None = None) -> list[RemovableHandle]:
    """Blank every encoder of ``network`` but the one of ``modality``; returns the hooks' handles."""
    names = modality_labels(modality_names, len(encoders))
    index = modality_index(modality, names)
    return blank_encoder_inputs(network, [e for i, e in enumerate(encoders) if i != index])
