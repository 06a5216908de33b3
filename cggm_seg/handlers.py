"""Ignite handlers that balance modalities on MONAI's own ``SupervisedTrainer``.

The trainer stays MONAI's. ``SupervisedTrainer._iteration`` fires
``IterationEvents.LOSS_COMPLETED`` after the loss and before ``backward()``, and
``IterationEvents.BACKWARD_COMPLETED`` after ``backward()`` and before
``optimizer.step()``; that is all a gradient-modulation method needs.

:class:`ModalityHeadsHandler` owns what CGGM and OGM-GE share: forward hooks capture the
encoder outputs, the per-modality heads are trained on them (detached, so no head loss
reaches an encoder), each modality's utilisation is measured (all-reduced under DDP), the
curves are logged and the state is checkpointed. On top of it:

* :class:`CGGMHandler` — LOSS_COMPLETED: coefficients from the utilisation improvements,
  ``lambda * L_gm`` added to the loss; BACKWARD_COMPLETED: encoder-i gradients times
  ``rho * B_i`` (after DDP has averaged them; fusion parameters untouched).
* :class:`~cggm_seg.baselines.OGMGEHandler` — the OGM-GE baseline (in ``baselines``).
* :class:`HeadMonitor` — trains and scores the heads after the step and changes nothing,
  so joint training gets the same utilisation curves.

All of them log under ``cggm/`` so that one TensorBoard layout and one ``cggm-seg report``
read every method.
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


def submodule(root: nn.Module, name: str, setting: str) -> nn.Module:
    """``root.get_submodule(name)`` with a one-line error naming the config ``setting``."""
    try:
        return root.get_submodule(name)
    except AttributeError:
        children = [n for n, _ in root.named_children()]
        raise UserError(f"{setting}: no sub-module named {name!r} in {type(root).__name__} "
                        f"(its top-level sub-modules are {children})") from None


def encoder_parameters(network: nn.Module, names: Sequence[str]) -> list[list[nn.Parameter]]:
    """The trainable parameters of each named encoder of ``network`` (DDP unwrapped), in order."""
    root = unwrap(network)
    return [[p for p in submodule(root, n, "encoders").parameters() if p.requires_grad] for n in names]


def modality_labels(names: Sequence[str] | None, count: int) -> list[str]:
    """``names`` checked against ``count`` encoders, or ``modality0, modality1, ...``."""
    labels = list(names) if names is not None else [f"modality{i}" for i in range(count)]
    if len(labels) != count:
        raise UserError(f"modality_names: {len(labels)} names for {count} encoders")
    return labels


def amp_scaler(engine: Engine) -> Any:
    """The trainer's GradScaler when it trains with AMP, else ``None``."""
    return getattr(engine, "scaler", None) if getattr(engine, "amp", False) else None


def _detached(value: Any) -> Any:
    """Detach every tensor of an encoder output (tensor, sequence or dict), dropping MONAI metadata.

    Floating tensors become float32: the heads run outside autocast (see ``_measure``).
    """

    def leaf(t: Any) -> Any:
        if isinstance(t, MetaTensor):
            t = t.as_tensor()
        if not isinstance(t, torch.Tensor):
            return t
        return t.detach().float() if t.is_floating_point() else t.detach()

    return tree_map(leaf, value)


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _grads(params: Sequence[nn.Parameter]) -> list[torch.Tensor]:
    return [p.grad for p in params if p.grad is not None]


class NetworkHandler:
    """How every balancing handler attaches: register its events, then resolve the settings against
    the trainer's network now or, when listed in ``train_handlers`` (attached before the trainer has
    its network), when the run starts. ``_resolve`` must be idempotent."""

    def attach(self, engine: Engine) -> None:
        self._register(engine)
        if hasattr(engine, "network"):
            self._resolve(engine)
        else:
            engine.add_event_handler(Events.STARTED, self._resolve)

    def _register(self, engine: Engine) -> None:
        raise NotImplementedError

    def _resolve(self, engine: Engine) -> None:
        raise NotImplementedError


class ModalityHeadsHandler(NetworkHandler):
    """Per-modality heads on the captured encoder outputs: training, utilisation, logging, state.

    Subclasses choose the events (:meth:`_register`) and what the utilisation drives.

    Args:
        encoders: dotted names of the modality encoders in the network, in modality order;
            a forward hook captures what each returns.
        heads: indexable module; ``heads[i](output of encoder i)`` predicts the task target
            in the same form as the network output. Training only: keep it out of the network.
        head_optimizer: optimizer over ``heads.parameters()``.
        metric: utilisation ``eps_i = metric(head_prediction, target)``, a 0-d tensor,
            higher is better (accuracy, sign accuracy, mean Dice).
        head_loss: loss for the heads; default: the trainer's ``loss_function``.
        warmup_iterations: iterations in which heads train but nothing is modulated.
        modality_names: names used in logs; default ``modality0, modality1, ...``.
    """

    #: the method's name in error messages
    method = "modality heads"

    def __init__(
        self,
        encoders: Sequence[str],
        heads: nn.Module,
        head_optimizer: torch.optim.Optimizer,
        metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        head_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        warmup_iterations: int = 0,
        modality_names: Sequence[str] | None = None,
    ) -> None:
        self.encoder_names = list(encoders)
        num = len(self.encoder_names)
        if num < 2:
            raise UserError(f"encoders: {self.method} needs at least 2 modality encoders, "
                            f"got {self.encoder_names}")
        if len(heads) != num:
            raise UserError(f"heads: {len(heads)} heads for {num} encoders {self.encoder_names}; "
                            "expected one head per modality")
        if warmup_iterations < 0:
            raise UserError(f"warmup_iterations: expected >= 0, got {warmup_iterations}")
        self.heads = heads
        self.head_optimizer = head_optimizer
        self.metric = metric
        self.head_loss = head_loss
        self.warmup_iterations = warmup_iterations
        self.modality_names = modality_labels(modality_names, num)
        self.latest: dict[str, float] = {}
        self._features: list[Any] = [None] * num
        self._encoder_params: list[list[nn.Parameter]] = []
        self._device: torch.device | None = None

    # ------------------------------------------------------------------ attach
    def _check_network(self, network: nn.Module) -> None:
        """Subclass hook: check settings that name parts of the network (called once, unwrapped)."""

    def _resolve(self, engine: Engine) -> None:
        """Check the settings against the network, register the forward hooks."""
        if self._device is not None:
            return
        if getattr(engine, "accumulation_steps", 1) > 1:
            raise UserError(f"accumulation_steps={engine.accumulation_steps}: {self.method} needs the "
                            "utilisation and gradients of one optimizer step per batch; set "
                            "accumulation_steps to 1")
        network = unwrap(engine.network)
        encoders = [submodule(network, n, "encoders") for n in self.encoder_names]
        self._check_network(network)
        head_params = {id(p) for p in self.heads.parameters()}
        if any(id(p) in head_params for p in network.parameters()):
            raise UserError("heads: the heads are part of the network; keep them out of it so they are "
                            "trained only by the head optimizer and absent from the exported model")
        self._encoder_params = encoder_parameters(network, self.encoder_names)
        self._device = next(network.parameters()).device
        self.heads.to(self._device)
        for i, encoder in enumerate(encoders):
            encoder.register_forward_hook(self._capture_hook(i))
        logger.info("%s on %s: %s", self.method, dict(zip(self.modality_names, self.encoder_names)),
                    self._describe())

    def _describe(self) -> str:
        return f"warm-up={self.warmup_iterations}"

    def _capture_hook(self, index: int) -> Callable:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if module.training:
                self._features[index] = _detached(output)

        return hook

    # -------------------------------------------------------------- iteration
    def _active(self, engine: Engine) -> bool:
        return engine.state.iteration > self.warmup_iterations

    def _measure(self, engine: Engine, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Heads forward and backward on this batch (not stepped): per-modality (utilisation, loss).

        Under DDP the utilisation and the head gradients are averaged over the ranks, so every
        rank computes the same coefficients and keeps the same heads.
        """
        if any(f is None for f in self._features):
            missing = [n for n, f in zip(self.encoder_names, self._features) if f is None]
            raise RuntimeError(f"{self.method}: encoders {missing} produced no output in this forward pass")
        target = target.as_tensor() if isinstance(target, MetaTensor) else target
        loss_fn = self.head_loss or engine.loss_function
        self.heads.train()
        self.head_optimizer.zero_grad(set_to_none=True)
        # fp32 even under AMP: no GradScaler scales the heads' loss, and per-voxel Dice gradients over
        # 128^3 crops (~1e-8) fall below fp16's range. The heads are light, so this costs little.
        with torch.autocast(self._device.type, enabled=False):
            predictions = [head(features) for head, features in zip(self.heads, self._features)]
            losses = torch.stack([loss_fn(p, target).mean() for p in predictions])
        self._features = [None] * len(self._features)
        losses.sum().backward()
        with torch.no_grad():
            scores = [self.metric(p.detach(), target).float().reshape(()) for p in predictions]
        utilisation = torch.stack(scores)
        return self._all_reduce_heads(utilisation), losses.detach()

    def _all_reduce_heads(self, utilisation: torch.Tensor) -> torch.Tensor:
        world = _world_size()
        if world == 1:
            return utilisation
        dist.all_reduce(utilisation)
        for param in self.heads.parameters():
            if param.grad is not None:
                dist.all_reduce(param.grad)
                param.grad.div_(world)
        return utilisation / world

    def _encoder_grad_norms(self) -> torch.Tensor:
        norms = []
        for params in self._encoder_params:
            grads = _grads(params)
            if grads:
                norms.append(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))
            else:
                norms.append(torch.zeros((), device=self._device))
        return torch.stack(norms).float()

    # ---------------------------------------------------------------- logging
    def _record(self, per_modality: dict[str, torch.Tensor], scalars: dict[str, torch.Tensor]) -> None:
        """Keep this iteration's curves as floats, with one device sync for all of them."""
        flat = [t.detach().float().reshape(-1) for t in (*per_modality.values(), *scalars.values())]
        values = torch.cat(flat).tolist() if flat else []
        num = len(self.modality_names)
        latest = {}
        for offset, kind in enumerate(per_modality):
            for name, value in zip(self.modality_names, values[offset * num:(offset + 1) * num]):
                latest[f"{kind}/{name}"] = value
        latest.update(zip(scalars, values[len(per_modality) * num:]))
        self.latest = latest

    def _publish(self, engine: Engine) -> None:
        """Flat ``cggm/...`` float keys in the iteration output (in every item once it is decollated)."""
        output = engine.state.output
        for item in output if isinstance(output, list) else [output]:
            item.update({SCALAR_PREFIX + key: value for key, value in self.latest.items()})

    # ------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly (used by MONAI CheckpointSaver)."""
        return {"heads": self.heads.state_dict(), "head_optimizer": self.head_optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state saved by :meth:`state_dict` (used by MONAI CheckpointLoader)."""
        self.heads.load_state_dict(state["heads"])
        self.head_optimizer.load_state_dict(state["head_optimizer"])


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


class GradientModulationHandler(ModalityHeadsHandler):
    """Heads measured at LOSS_COMPLETED; encoder gradients scaled at BACKWARD_COMPLETED.

    Subclasses set ``self.coefficients`` in :meth:`_on_loss_completed` and say in
    :meth:`_gradient_scales` what each encoder's gradients are multiplied by. Nothing is
    modulated during warm-up or on a step whose gradients are not finite (the AMP
    GradScaler skips it).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.coefficients = torch.ones(len(self.encoder_names))

    def _register(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self._on_loss_completed)
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self._on_backward_completed)

    def _on_loss_completed(self, engine: Engine) -> None:
        raise NotImplementedError

    def _gradient_scales(self) -> list[float] | None:
        """Per-encoder gradient multipliers, or ``None`` to leave the gradients alone."""
        raise NotImplementedError

    def _modulate_gradients(self) -> None:
        scales = self._gradient_scales()
        if scales is None:
            return
        for params, scale in zip(self._encoder_params, scales):
            grads = _grads(params)
            if grads:
                torch._foreach_mul_(grads, scale)

    def _on_backward_completed(self, engine: Engine) -> None:
        norms = self._encoder_grad_norms()
        scaler = amp_scaler(engine)
        if scaler is not None:
            norms = norms / scaler.get_scale()
        skipped = not bool(torch.isfinite(norms).all())  # the GradScaler will skip this step
        if self._active(engine) and not skipped:
            self._modulate_gradients()
        for name, norm in zip(self.modality_names, norms.tolist()):
            self.latest[f"grad_norm/{name}"] = norm
        self.latest["skipped_step"] = float(skipped)
        self._publish(engine)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "coefficients": self.coefficients.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.coefficients = state["coefficients"].clone()


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
    ) -> None:
        super().__init__(encoders, heads, head_optimizer, metric, head_loss, warmup_iterations,
                         modality_names)
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
        self.previous_utilisation = torch.zeros(len(self.encoder_names))
        self._fusion_weight: nn.Parameter | None = None
        self._head_weights: list[nn.Parameter] = []

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
                    "CGGM compares them, so they must have the same shape")
            self._head_weights.append(weight)
        self._fusion_weight = fusion.weight

    def _describe(self) -> str:
        return (f"rho={self.rho} lambda={self.lam} direction={self.direction} clip={self.coeff_clip} "
                f"momentum={self.momentum} warm-up={self.warmup_iterations}")

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
        improvements = current - previous
        coefficients = balance_coefficients(improvements, self.coeff_clip, self.sum_tolerance)
        clipped = torch.zeros((), device=device)
        if self.coeff_clip is not None:
            clipped = (balance_coefficients(improvements, None, self.sum_tolerance) != coefficients).sum()
        self.previous_utilisation = current.detach()
        self.coefficients = coefficients.detach()

        curves = {"utilisation": utilisation, "coeff": coefficients, "head_loss": head_losses}
        gm_loss = torch.zeros((), device=device)
        if self.lam > 0 and self._active(engine):
            cosines = self._cosines(engine)
            gm_loss = balancing_term(coefficients, cosines)
            engine.state.output[Keys.LOSS] = engine.state.output[Keys.LOSS] + self.lam * gm_loss
            curves["cosine"] = cosines
        self.head_optimizer.step()
        self._record(curves, {"l_gm": gm_loss, "coeff_clipped": clipped})

    def _gradient_scales(self) -> list[float] | None:
        if self.rho is None:
            return None
        return [self.rho * c for c in self.coefficients.tolist()]

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "previous_utilisation": self.previous_utilisation.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.previous_utilisation = state["previous_utilisation"].clone()


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


def modulation_scalars(output: Any) -> dict[str, float]:
    """``output_transform`` for MONAI's Stats/TensorBoardStatsHandler: the loss and the ``cggm/`` curves."""
    first = output[0] if isinstance(output, list) else output
    return {key: float(value.detach() if isinstance(value, torch.Tensor) else value)
            for key, value in first.items() if key == Keys.LOSS or key.startswith(SCALAR_PREFIX)}
