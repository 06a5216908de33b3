"""``OGMGEHandler``: on-the-fly gradient modulation with generalisation enhancement (Peng et al., CVPR
2022), generalised from two modalities to M with the per-modality heads' scores."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from ignite.engine import Engine
from monai.utils import CommonKeys as Keys
from torch import nn

from cggm_seg.errors import UserError
from cggm_seg.modulation.base import GradientModulationHandler

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
        raise ValueError(
            f"scores must be a 1-D tensor with one entry per modality (>= 2), got shape {tuple(scores.shape)}"
        )
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
            as for :class:`~cggm_seg.modulation.cggm.CGGMHandler`; no modulation during the warm-up.
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
        super().__init__(
            encoders, heads, head_optimizer, metric, head_loss, warmup_iterations, modality_names
        )
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
                    sample = torch.randn(
                        grad.shape, generator=self._generator, device=grad.device, dtype=grad.dtype
                    )
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
