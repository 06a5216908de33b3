"""``CGGMHandler``: Classifier-Guided Gradient Modulation on MONAI's ``SupervisedTrainer``.

The maths is in :mod:`cggm_seg.cggm_math`; ``docs/METHOD.md`` states the algorithm, every setting and
where it follows or departs from the paper and the authors' code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.utils import CommonKeys as Keys
from torch import nn

from cggm_seg.cggm_math import (
    COEFFICIENT_RULES,
    DEFAULT_SUM_TOLERANCE,
    balance_coefficients,
    balancing_term,
    flat_cosine,
    level_coefficients,
    share_coefficients,
    smoothed_utilisation,
    windowed_improvement,
)
from cggm_seg.errors import UserError
from cggm_seg.modulation.base import GradientModulationHandler, UpdateScaler, amp_scaler
from cggm_seg.networks.utils import submodule

DIRECTIONS = ("gradient", "weights")
#: what the heads' utilisation ``u_i`` is: ``metric`` (paper), ``soft_metric``, or minus the head loss
UTILISATIONS = ("metric", "soft", "loss")
#: ``absolute``: ``L + lambda L_gm`` (paper); ``relative``: ``L + lambda L.detach() L_gm``
DIRECTION_SCALES = ("absolute", "relative")
#: where ``rho * B_i`` acts: on the encoder's gradient (paper) or on its optimizer update
APPLY_TO = ("gradient", "update")


class CGGMHandler(GradientModulationHandler):
    """Classifier-Guided Gradient Modulation for a MONAI ``SupervisedTrainer``.

    Args:
        encoders: dotted names of the modality encoders in the network, in modality order;
            a forward hook captures what each returns.
        fusion_layer: dotted name of the fusion module's output layer (has ``.weight``).
        heads: indexable module; ``heads[i](output of encoder i)`` predicts the task target
            in the same form as the network output. Training only: keep it out of the network.
        head_optimizer: optimizer over ``heads.parameters()``.
        metric: utilisation ``eps_i = metric(head_prediction, target)``, a 0-d tensor,
            higher is better (accuracy, sign accuracy, mean Dice).
        head_output_layer: dotted name of the output layer inside each head.
        head_loss: loss for the heads; default: the trainer's ``loss_function``.
        rho: gradient scale ``rho`` of the paper; ``None`` turns magnitude modulation off.
        lam: weight ``lambda`` of the balancing term; ``0`` turns direction modulation off.
        direction: ``"gradient"`` (paper: cosine of loss gradients w.r.t. the output-layer
            weights, differentiable through ``g_F``) or ``"weights"`` (authors' code: cosine of
            the output-layer weights themselves).
        magnitude: ``False`` turns magnitude modulation off (same as ``rho=None``).
        coeff_clip: optional ``(lo, hi)`` bound on the coefficients; off by default.
        sum_tolerance: ``|sum_k d_k|`` below this gives all coefficients 1 (no modulation).
        utilisation_momentum: EMA of the utilisation before taking improvements; 0 = paper.
        warmup_iterations: iterations in which heads train but nothing is modulated.
        modality_names: names used in logs; default ``modality0, modality1, ...``.
        utilisation: ``"metric"`` (paper: ``metric`` of the heads' predictions), ``"soft"``
            (``soft_metric``, e.g. soft Dice or the probability of the true class: weak heads still
            move it) or ``"loss"`` (minus each head's loss, for any task).
        soft_metric: the ``"soft"`` utilisation, same signature as ``metric``.
        improvement_window: ``d_i`` is the change of the (smoothed) utilisation over this many
            iterations; 1 = paper.
        coefficient_rule: ``"paper"`` (``(S - d_i)/S``), ``"share"`` (bounded, mean 1:
            :func:`~cggm_seg.cggm_math.share_coefficients`) or ``"level"`` (from the heads' smoothed
            losses: :func:`~cggm_seg.cggm_math.level_coefficients`).
        direction_scale: ``"absolute"`` (paper: ``L + lambda L_gm``) or ``"relative"``
            (``L + lambda L.detach() L_gm``, so the balancing term shrinks with the task loss).
        apply_to: ``"gradient"`` (paper: encoder gradients times ``rho B_i``) or ``"update"``
            (the encoder's optimizer update times ``rho B_i``, which Adam cannot divide away).

    ``docs/METHOD.md`` explains each setting and what the benchmark measured with it.
    """

    method = "CGGM"

    def __init__(
        self,
        encoders: Sequence[str],
        fusion_layer: str,
        heads: nn.Module,
        head_optimizer: torch.optim.Optimizer,
        metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        head_output_layer: str = "output_layer",
        head_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        rho: float | None = 1.0,
        lam: float = 0.1,
        direction: str = "gradient",
        magnitude: bool = True,
        coeff_clip: Sequence[float] | None = None,
        sum_tolerance: float = DEFAULT_SUM_TOLERANCE,
        utilisation_momentum: float = 0.0,
        warmup_iterations: int = 0,
        modality_names: Sequence[str] | None = None,
        utilisation: str = "metric",
        soft_metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        improvement_window: int = 1,
        coefficient_rule: str = "paper",
        direction_scale: str = "absolute",
        apply_to: str = "gradient",
    ) -> None:
        super().__init__(
            encoders, heads, head_optimizer, metric, head_loss, warmup_iterations, modality_names
        )
        for setting, value, choices in (
            ("utilisation", utilisation, UTILISATIONS),
            ("coefficient_rule", coefficient_rule, COEFFICIENT_RULES),
            ("direction_scale", direction_scale, DIRECTION_SCALES),
            ("apply_to", apply_to, APPLY_TO),
        ):
            if value not in choices:
                raise UserError(f"{setting}: {value!r} is not one of {choices}")
        if utilisation == "soft" and soft_metric is None:
            raise UserError("utilisation: 'soft' needs a soft_metric (soft Dice, true-class probability)")
        if int(improvement_window) != improvement_window or improvement_window < 1:
            raise UserError(f"improvement_window: expected a whole number >= 1, got {improvement_window}")
        if direction not in DIRECTIONS:
            raise UserError(f"direction: {direction!r} is not one of {DIRECTIONS}")
        if rho is not None and rho <= 0:
            raise UserError(f"rho: must be > 0 (or None to turn magnitude modulation off), got {rho}")
        if lam < 0:
            raise UserError(f"lambda: must be >= 0, got {lam}")
        if coeff_clip is not None and (len(coeff_clip) != 2 or coeff_clip[0] >= coeff_clip[1]):
            raise UserError(f"coeff_clip: expected (lo, hi) with lo < hi, got {coeff_clip}")
        if not 0.0 <= utilisation_momentum < 1.0:
            raise UserError(f"utilisation_momentum: expected a value in [0, 1), got {utilisation_momentum}")
        self.fusion_layer_name = fusion_layer
        self.head_output_layer = head_output_layer
        self.rho = rho if magnitude else None
        self.lam = float(lam)
        self.direction = direction
        self.coeff_clip = tuple(coeff_clip) if coeff_clip is not None else None
        self.sum_tolerance = sum_tolerance
        self.momentum = utilisation_momentum
        self.utilisation = utilisation
        self.soft_metric = soft_metric
        self.improvement_window = int(improvement_window)
        self.coefficient_rule = coefficient_rule
        self.direction_scale = direction_scale
        self.apply_to = apply_to
        self.history: list[torch.Tensor] = []  # smoothed utilisations of the last iterations, newest last
        self.average_head_loss: torch.Tensor | None = None  # smoothed like the utilisation; "level" rule
        self._fusion_weight: nn.Parameter | None = None
        self._head_weights: list[nn.Parameter] = []
        self._updates = UpdateScaler()

    def _check_network(self, network: nn.Module) -> None:
        fusion = submodule(network, self.fusion_layer_name, "fusion_layer")
        if not isinstance(getattr(fusion, "weight", None), torch.Tensor):
            raise UserError(f"fusion_layer: {self.fusion_layer_name!r} has no weight tensor")
        self._head_weights = []
        for i, head in enumerate(self.heads):
            layer = submodule(head, self.head_output_layer, f"head_output_layer (head {i})")
            weight = getattr(layer, "weight", None)
            if not isinstance(weight, torch.Tensor):
                raise UserError(f"head_output_layer: {self.head_output_layer!r} of head {i} has no weight")
            if weight.shape != fusion.weight.shape:
                raise UserError(
                    f"head_output_layer: head {i} output layer weight {tuple(weight.shape)} differs from "
                    f"fusion_layer {self.fusion_layer_name!r} weight {tuple(fusion.weight.shape)}; "
                    "CGGM compares them, so they must have the same shape"
                )
            self._head_weights.append(weight)
        self._fusion_weight = fusion.weight

    def _describe(self) -> str:
        return (
            f"rho={self.rho} lambda={self.lam} direction={self.direction} clip={self.coeff_clip} "
            f"momentum={self.momentum} warm-up={self.warmup_iterations} utilisation={self.utilisation} "
            f"window={self.improvement_window} rule={self.coefficient_rule} "
            f"direction_scale={self.direction_scale} apply_to={self.apply_to}"
        )

    def _register(self, engine: Engine) -> None:
        super()._register(engine)
        if self.apply_to == "update":
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._scale_update)

    def _score(
        self, predictions: list[torch.Tensor], target: torch.Tensor, losses: torch.Tensor
    ) -> torch.Tensor:
        if self.utilisation == "loss":
            return -losses.float()
        metric = self.soft_metric if self.utilisation == "soft" else self.metric
        return torch.stack([metric(p, target).float().reshape(()) for p in predictions])

    def _coefficients(
        self, improvements: torch.Tensor, head_losses: torch.Tensor, clip: Sequence[float] | None
    ) -> torch.Tensor:
        if self.coefficient_rule == "paper":
            return balance_coefficients(improvements, clip, self.sum_tolerance)
        if self.coefficient_rule == "share":
            coefficients = share_coefficients(improvements)
        else:
            coefficients = level_coefficients(head_losses, self.sum_tolerance)
        return coefficients.clamp(min=clip[0], max=clip[1]) if clip is not None else coefficients

    def _cosines(self, engine: Engine) -> torch.Tensor:
        weight = self._fusion_weight
        if self.direction == "weights":
            return torch.stack([flat_cosine(w.detach(), weight) for w in self._head_weights])
        loss = engine.state.output[Keys.LOSS]
        scaler = amp_scaler(engine)
        if scaler is not None:  # cosine is scale-invariant; scaling only protects fp16 from underflow
            loss = scaler.scale(loss)
        (fusion_grad,) = torch.autograd.grad(loss, weight, create_graph=True, retain_graph=True)
        head_grads = [w.grad if w.grad is not None else torch.zeros_like(w) for w in self._head_weights]
        return torch.stack([flat_cosine(g, fusion_grad) for g in head_grads])

    def _on_loss_completed(self, engine: Engine) -> None:
        utilisation, head_losses = self._measure(engine, engine.state.output[Keys.LABEL])
        device = utilisation.device
        previous = self.previous_utilisation.to(device)
        current = smoothed_utilisation(utilisation, previous, self.momentum)
        improvements = windowed_improvement(self.history, current, self.improvement_window)
        average_loss = (
            head_losses
            if self.average_head_loss is None
            else smoothed_utilisation(head_losses, self.average_head_loss.to(device), self.momentum)
        )
        coefficients = self._coefficients(improvements, average_loss, self.coeff_clip)
        clipped = torch.zeros((), device=device)
        if self.coeff_clip is not None:
            clipped = (self._coefficients(improvements, average_loss, None) != coefficients).sum()
        self.history = [*self.history, current.detach()][-self.improvement_window :]
        self.average_head_loss = average_loss.detach()
        self.coefficients = coefficients.detach()

        curves = {"utilisation": utilisation, "coeff": coefficients, "head_loss": head_losses}
        gm_loss = torch.zeros((), device=device)
        if self.lam > 0 and self._active(engine):
            cosines = self._cosines(engine)
            gm_loss = balancing_term(coefficients, cosines)
            task_loss = engine.state.output[Keys.LOSS]
            weight = self.lam * (task_loss.detach() if self.direction_scale == "relative" else 1.0)
            engine.state.output[Keys.LOSS] = task_loss + weight * gm_loss
            curves["cosine"] = cosines
        self.head_optimizer.step()
        self._record(curves, {"l_gm": gm_loss, "coeff_clipped": clipped})

    def _gradient_scales(self) -> list[float] | None:
        if self.rho is None:
            return None
        return [self.rho * c for c in self.coefficients.tolist()]

    def _modulate_gradients(self) -> None:
        if self.apply_to == "gradient":
            super()._modulate_gradients()
            return
        scales = self._gradient_scales()  # update mode: remember the weights, rescale after the step
        if scales is not None:
            self._updates.snapshot(list(zip(self._encoder_params, scales)))

    def _scale_update(self, engine: Engine) -> None:
        self._updates.apply()

    @property
    def previous_utilisation(self) -> torch.Tensor:
        """The last smoothed utilisation, the EMA's base (``u^0 = 0`` before the first iteration)."""
        return self.history[-1] if self.history else torch.zeros(len(self.encoder_names))

    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), "previous_utilisation": self.previous_utilisation.cpu()}
        if self.history:
            state["utilisation_history"] = torch.stack(self.history).cpu()
        if self.average_head_loss is not None:
            state["average_head_loss"] = self.average_head_loss.cpu()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores the state of :meth:`state_dict`; a state saved before any history was kept
        continues from its ``previous_utilisation``."""
        super().load_state_dict(state)
        history = state.get("utilisation_history")
        saved = [state["previous_utilisation"]] if history is None else list(history)
        self.history = [row.clone() for row in saved]
        loss = state.get("average_head_loss")
        self.average_head_loss = loss.clone() if loss is not None else None
