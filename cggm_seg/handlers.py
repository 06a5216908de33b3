"""Ignite handlers that apply CGGM to MONAI's own ``SupervisedTrainer``.

The trainer stays MONAI's. ``SupervisedTrainer._iteration`` fires
``IterationEvents.LOSS_COMPLETED`` after the loss and before ``backward()``, and
``IterationEvents.BACKWARD_COMPLETED`` after ``backward()`` and before
``optimizer.step()``; that is all CGGM needs:

* LOSS_COMPLETED: run the per-modality heads on the encoder outputs captured by forward
  hooks (detached, so no head loss reaches an encoder), train the heads, measure each
  modality's utilisation, compute the coefficients and cosines, add ``lambda * L_gm`` to
  the loss that the trainer is about to back-propagate.
* BACKWARD_COMPLETED: multiply every encoder-i gradient by ``rho * B_i`` (after DDP has
  averaged them; fusion parameters untouched).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from monai.engines import IterationEvents
from monai.utils import CommonKeys as Keys
from torch import nn
from torch.utils._pytree import tree_map

from cggm_seg.cggm import (
    DEFAULT_SUM_TOLERANCE,
    balance_coefficients,
    balancing_term,
    flat_cosine,
    smoothed_utilisation,
)
from cggm_seg.errors import UserError

logger = logging.getLogger(__name__)

DIRECTIONS = ("gradient", "weights")
SCALAR_PREFIX = "cggm/"


def unwrap(network: nn.Module) -> nn.Module:
    """The module inside DDP/DataParallel, so settings can name sub-modules without ``module.``."""
    while isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        network = network.module
    return network


def _submodule(root: nn.Module, name: str, setting: str) -> nn.Module:
    try:
        return root.get_submodule(name)
    except AttributeError:
        children = [n for n, _ in root.named_children()]
        raise UserError(f"{setting}: no sub-module named {name!r} in {type(root).__name__} "
                        f"(its top-level sub-modules are {children})") from None


def _detached(value: Any) -> Any:
    """Detach every tensor of an encoder output (tensor, sequence or dict), dropping MONAI metadata."""

    def leaf(t: Any) -> Any:
        if isinstance(t, MetaTensor):
            t = t.as_tensor()
        return t.detach() if isinstance(t, torch.Tensor) else t

    return tree_map(leaf, value)


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class CGGMHandler:
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
    """

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
    ) -> None:
        self.encoder_names = list(encoders)
        num = len(self.encoder_names)
        if num < 2:
            raise UserError(f"encoders: CGGM needs at least 2 modality encoders, got {self.encoder_names}")
        if len(heads) != num:
            raise UserError(f"heads: {len(heads)} heads for {num} encoders {self.encoder_names}; "
                            "expected one head per modality")
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
        if warmup_iterations < 0:
            raise UserError(f"warmup_iterations: expected >= 0, got {warmup_iterations}")
        names = list(modality_names) if modality_names is not None else [f"modality{i}" for i in range(num)]
        if len(names) != num:
            raise UserError(f"modality_names: {len(names)} names for {num} encoders")

        self.fusion_layer_name = fusion_layer
        self.heads = heads
        self.head_optimizer = head_optimizer
        self.metric = metric
        self.head_output_layer = head_output_layer
        self.head_loss = head_loss
        self.rho = rho if magnitude else None
        self.lam = float(lam)
        self.direction = direction
        self.coeff_clip = tuple(coeff_clip) if coeff_clip is not None else None
        self.sum_tolerance = sum_tolerance
        self.momentum = utilisation_momentum
        self.warmup_iterations = warmup_iterations
        self.modality_names = names

        self.previous_utilisation = torch.zeros(num)
        self.coefficients = torch.ones(num)
        self.latest: dict[str, float] = {}
        self._features: list[Any] = [None] * num
        self._encoder_params: list[list[nn.Parameter]] = []
        self._fusion_weight: nn.Parameter | None = None
        self._head_weights: list[nn.Parameter] = []

    # ------------------------------------------------------------------ attach
    def attach(self, engine: Engine) -> None:
        """Register the iteration-event handlers; resolve the named modules now or, when listed in
        ``train_handlers`` (attached before the trainer has its network), when the run starts."""
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self._on_loss_completed)
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self._on_backward_completed)
        if hasattr(engine, "network"):
            self._resolve(engine)
        else:
            engine.add_event_handler(Events.STARTED, self._resolve)

    def _resolve(self, engine: Engine) -> None:
        """Check the settings against the network, register the forward hooks."""
        if self._fusion_weight is not None:
            return
        if getattr(engine, "accumulation_steps", 1) > 1:
            raise UserError(f"accumulation_steps={engine.accumulation_steps}: CGGM needs the utilisation and "
                            "gradients of one optimizer step per batch; set accumulation_steps to 1")
        network = unwrap(engine.network)
        encoders = [_submodule(network, n, "encoders") for n in self.encoder_names]
        fusion = _submodule(network, self.fusion_layer_name, "fusion_layer")
        if not isinstance(getattr(fusion, "weight", None), torch.Tensor):
            raise UserError(f"fusion_layer: {self.fusion_layer_name!r} has no weight tensor")
        self._head_weights = []
        for i, head in enumerate(self.heads):
            layer = _submodule(head, self.head_output_layer, f"head_output_layer (head {i})")
            weight = getattr(layer, "weight", None)
            if not isinstance(weight, torch.Tensor):
                raise UserError(f"head_output_layer: {self.head_output_layer!r} of head {i} has no weight")
            if weight.shape != fusion.weight.shape:
                raise UserError(
                    f"head_output_layer: head {i} output layer weight {tuple(weight.shape)} differs from "
                    f"fusion_layer {self.fusion_layer_name!r} weight {tuple(fusion.weight.shape)}; "
                    "CGGM compares them, so they must have the same shape")
            self._head_weights.append(weight)
        head_params = {id(p) for p in self.heads.parameters()}
        if any(id(p) in head_params for p in network.parameters()):
            raise UserError("heads: the heads are part of the network; keep them out of it so they are "
                            "trained only by the head optimizer and absent from the exported model")
        self._encoder_params = [[p for p in e.parameters() if p.requires_grad] for e in encoders]
        self._fusion_weight = fusion.weight
        self.heads.to(fusion.weight.device)
        for i, encoder in enumerate(encoders):
            encoder.register_forward_hook(self._capture_hook(i))
        logger.info("CGGM on %s: rho=%s lambda=%s direction=%s clip=%s momentum=%s warm-up=%d",
                    dict(zip(self.modality_names, self.encoder_names)), self.rho, self.lam, self.direction,
                    self.coeff_clip, self.momentum, self.warmup_iterations)

    def _capture_hook(self, index: int) -> Callable:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if module.training:
                self._features[index] = _detached(output)

        return hook

    # -------------------------------------------------------------- iteration
    def _active(self, engine: Engine) -> bool:
        return engine.state.iteration > self.warmup_iterations

    def _train_heads(self, engine: Engine) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of data for the heads: returns per-modality (utilisation, loss), grads left in place."""
        if any(f is None for f in self._features):
            missing = [n for n, f in zip(self.encoder_names, self._features) if f is None]
            raise RuntimeError(f"CGGM: encoders {missing} produced no output in this forward pass")
        target = engine.state.output[Keys.LABEL]
        target = target.as_tensor() if isinstance(target, MetaTensor) else target
        loss_fn = self.head_loss or engine.loss_function
        self.heads.train()
        self.head_optimizer.zero_grad(set_to_none=True)
        predictions = [head(features) for head, features in zip(self.heads, self._features)]
        self._features = [None] * len(self._features)
        losses = torch.stack([loss_fn(p, target).mean() for p in predictions])
        losses.sum().backward()
        with torch.no_grad():
            scores = [self.metric(p.detach(), target).float().reshape(()) for p in predictions]
        utilisation = torch.stack(scores)
        return utilisation, losses.detach()

    def _all_reduce_heads(self, utilisation: torch.Tensor) -> torch.Tensor:
        """Average utilisation and head gradients over ranks: identical coefficients and heads everywhere."""
        world = _world_size()
        if world == 1:
            return utilisation
        dist.all_reduce(utilisation)
        for param in self.heads.parameters():
            if param.grad is not None:
                dist.all_reduce(param.grad)
                param.grad.div_(world)
        return utilisation / world

    def _cosines(self, engine: Engine) -> torch.Tensor:
        weight = self._fusion_weight
        if self.direction == "weights":
            return torch.stack([flat_cosine(w.detach(), weight) for w in self._head_weights])
        loss = engine.state.output[Keys.LOSS]
        scaler = getattr(engine, "scaler", None) if engine.amp else None
        if scaler is not None:  # cosine is scale-invariant; scaling only protects fp16 from underflow
            loss = scaler.scale(loss)
        (fusion_grad,) = torch.autograd.grad(loss, weight, create_graph=True, retain_graph=True)
        head_grads = [w.grad if w.grad is not None else torch.zeros_like(w) for w in self._head_weights]
        return torch.stack([flat_cosine(g, fusion_grad) for g in head_grads])

    def _on_loss_completed(self, engine: Engine) -> None:
        utilisation, head_losses = self._train_heads(engine)
        device = utilisation.device
        utilisation = self._all_reduce_heads(utilisation)
        previous = self.previous_utilisation.to(device)
        current = smoothed_utilisation(utilisation, previous, self.momentum)
        improvements = current - previous
        coefficients = balance_coefficients(improvements, self.coeff_clip, self.sum_tolerance)
        clipped = torch.zeros((), device=device)
        if self.coeff_clip is not None:
            clipped = (balance_coefficients(improvements, None, self.sum_tolerance) != coefficients).sum()
        self.previous_utilisation = current.detach()
        self.coefficients = coefficients.detach()

        cosines = None
        gm_loss = torch.zeros((), device=device)
        if self.lam > 0 and self._active(engine):
            cosines = self._cosines(engine)
            gm_loss = balancing_term(coefficients, cosines)
            engine.state.output[Keys.LOSS] = engine.state.output[Keys.LOSS] + self.lam * gm_loss
        self.head_optimizer.step()
        self._record(utilisation, coefficients, cosines, head_losses, gm_loss.detach(), clipped)

    def _on_backward_completed(self, engine: Engine) -> None:
        norms = self._encoder_grad_norms()
        scaler = getattr(engine, "scaler", None) if engine.amp else None
        if scaler is not None:
            norms = norms / scaler.get_scale()
        skipped = not bool(torch.isfinite(norms).all())  # the GradScaler will skip this step
        if self.rho is not None and self._active(engine) and not skipped:
            for params, coefficient in zip(self._encoder_params, self.coefficients.tolist()):
                grads = [p.grad for p in params if p.grad is not None]
                if grads:
                    torch._foreach_mul_(grads, self.rho * coefficient)
        for name, norm in zip(self.modality_names, norms.tolist()):
            self.latest[f"grad_norm/{name}"] = norm
        self.latest["skipped_step"] = float(skipped)
        self._publish(engine)

    def _encoder_grad_norms(self) -> torch.Tensor:
        norms = []
        for params in self._encoder_params:
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                norms.append(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))
            else:
                norms.append(torch.zeros((), device=self._fusion_weight.device))
        return torch.stack(norms).float()

    # ---------------------------------------------------------------- logging
    def _record(self, utilisation: torch.Tensor, coefficients: torch.Tensor, cosines: torch.Tensor | None,
                head_losses: torch.Tensor, gm_loss: torch.Tensor, clipped: torch.Tensor) -> None:
        """Keep this iteration's curves as floats, with one device sync for all of them."""
        kinds = {"utilisation": utilisation, "coeff": coefficients, "head_loss": head_losses}
        if cosines is not None:
            kinds["cosine"] = cosines.detach()
        values = torch.cat([*kinds.values(), gm_loss.reshape(1), clipped.reshape(1).float()]).tolist()
        num = len(self.modality_names)
        latest = {"l_gm": values[-2], "coeff_clipped": values[-1]}
        for offset, kind in enumerate(kinds):
            for name, value in zip(self.modality_names, values[offset * num:(offset + 1) * num]):
                latest[f"{kind}/{name}"] = value
        self.latest = latest

    def _publish(self, engine: Engine) -> None:
        """Flat ``cggm/...`` float keys in the iteration output: MONAI decollation keeps scalars."""
        for key, value in self.latest.items():
            engine.state.output[SCALAR_PREFIX + key] = value

    # ------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly (used by MONAI CheckpointSaver)."""
        return {
            "previous_utilisation": self.previous_utilisation.cpu(),
            "coefficients": self.coefficients.cpu(),
            "heads": self.heads.state_dict(),
            "head_optimizer": self.head_optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state saved by :meth:`state_dict` (used by MONAI CheckpointLoader)."""
        self.previous_utilisation = state["previous_utilisation"].clone()
        self.coefficients = state["coefficients"].clone()
        self.heads.load_state_dict(state["heads"])
        self.head_optimizer.load_state_dict(state["head_optimizer"])


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
        scaler = getattr(engine, "scaler", None) if engine.amp else None
        if scaler is not None:
            scaler.unscale_(engine.optimizer)
        torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.max_norm)


def modulation_scalars(output: Any) -> dict[str, float]:
    """``output_transform`` for MONAI's StatsHandler/TensorBoardStatsHandler: loss plus the CGGM curves."""
    first = output[0] if isinstance(output, list) else output
    return {key: float(value) for key, value in first.items()
            if key == Keys.LOSS or key.startswith(SCALAR_PREFIX)}
