"""What every modality-balancing handler shares: how it attaches to MONAI's ``SupervisedTrainer``, the
per-modality heads (captured encoder outputs, head training, utilisation, DDP averaging), encoder-gradient
scaling, the ``cggm/`` curves and the checkpointed state.

The trainer stays MONAI's. ``SupervisedTrainer._iteration`` fires ``IterationEvents.LOSS_COMPLETED``
after the loss and before ``backward()``, and ``IterationEvents.BACKWARD_COMPLETED`` after
``backward()`` and before ``optimizer.step()``; that is all a gradient-modulation method needs
(``docs/ARCHITECTURE.md`` has the event timeline). Every handler logs under ``cggm/`` so one
TensorBoard layout and one ``cggm-seg report`` read every method.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from monai.engines import IterationEvents
from monai.utils import CommonKeys as Keys
from torch import nn
from torch.utils._pytree import tree_map

from cggm_seg.errors import UserError
from cggm_seg.networks.heads import on_grid
from cggm_seg.networks.utils import encoder_parameters, submodule, unwrap

logger = logging.getLogger(__name__)

SCALAR_PREFIX = "cggm/"


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

    The dtype stays: under autocast the fp32 copy for the heads is made when a head runs (``_measure``),
    so the step never holds fp32 copies of every encoder's features at once.
    """

    def leaf(t: Any) -> Any:
        if isinstance(t, MetaTensor):
            t = t.as_tensor()
        return t.detach() if isinstance(t, torch.Tensor) else t

    return tree_map(leaf, value)


def _float32(value: Any) -> Any:
    """Floating tensors of ``value`` as float32: the heads run outside autocast (see ``_measure``)."""

    def leaf(t: Any) -> Any:
        return t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t

    return tree_map(leaf, value)


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _grads(params: Sequence[nn.Parameter]) -> list[torch.Tensor]:
    return [p.grad for p in params if p.grad is not None]


class UpdateScaler:
    """Scale the optimizer's update of parameter groups: ``theta <- before + s (after - before)``.

    :meth:`snapshot` before ``optimizer.step()``, :meth:`apply` after it. For every optimizer whose step
    is ``p -= lr * u(state, grad)`` with a state that does not depend on ``lr`` (SGD with momentum and
    weight decay, Adam, AdamW, RMSprop) this equals training the group at ``s * lr``; scaling the
    gradient instead would be undone by Adam's normalisation.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[list[nn.Parameter], list[torch.Tensor], float]] = []

    @torch.no_grad()
    def snapshot(self, groups: Sequence[tuple[Sequence[nn.Parameter], float]]) -> None:
        self._pending = [
            (list(params), [p.detach().clone() for p in params], float(scale))
            for params, scale in groups
            if params
        ]

    @torch.no_grad()
    def apply(self) -> None:
        for params, before, scale in self._pending:
            torch._foreach_lerp_(before, [p.detach() for p in params], scale)
            torch._foreach_copy_([p.detach() for p in params], before)
        self._pending = []


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
            raise UserError(
                f"encoders: {self.method} needs at least 2 modality encoders, got {self.encoder_names}"
            )
        if len(heads) != num:
            raise UserError(
                f"heads: {len(heads)} heads for {num} encoders {self.encoder_names}; "
                "expected one head per modality"
            )
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
            raise UserError(
                f"accumulation_steps={engine.accumulation_steps}: {self.method} needs the "
                "utilisation and gradients of one optimizer step per batch; set "
                "accumulation_steps to 1"
            )
        network = unwrap(engine.network)
        encoders = [submodule(network, n, "encoders") for n in self.encoder_names]
        self._check_network(network)
        head_params = {id(p) for p in self.heads.parameters()}
        if any(id(p) in head_params for p in network.parameters()):
            raise UserError(
                "heads: the heads are part of the network; keep them out of it so they are "
                "trained only by the head optimizer and absent from the exported model"
            )
        self._encoder_params = encoder_parameters(network, self.encoder_names)
        self._device = next(network.parameters()).device
        self.heads.to(self._device)
        for i, encoder in enumerate(encoders):
            encoder.register_forward_hook(self._capture_hook(i))
        logger.info(
            "%s on %s: %s", self.method, dict(zip(self.modality_names, self.encoder_names)), self._describe()
        )

    def _describe(self) -> str:
        return f"warm-up={self.warmup_iterations}"

    def _capture_hook(self, index: int) -> Callable:
        # a head that reads only part of its encoder's output (``ModalityHead.reads``) gets only that
        # part kept, so the rest is freed as soon as the network is done with it
        reads = getattr(self.heads[index], "reads", None)

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if module.training:
                self._features[index] = _detached(reads(output) if reads else output)

        return hook

    # -------------------------------------------------------------- iteration
    def _active(self, engine: Engine) -> bool:
        return engine.state.iteration > self.warmup_iterations

    def _measure(self, engine: Engine, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Heads forward and backward on this batch (not stepped): per-modality (utilisation, loss).

        One head at a time, each backward before the next forward: the gradients are those of the
        heads' summed loss (no head reads another's parameters), but the step holds one head's graph
        instead of M while the network's graph waits for its backward pass. A head that predicts on a
        coarser grid is scored against the target sampled to its grid (``networks.heads.on_grid``).

        Under DDP the utilisation, the losses and the head gradients are averaged over the ranks, so
        every rank computes the same coefficients (whichever rule reads them) and keeps the same heads.
        """
        if any(f is None for f in self._features):
            missing = [n for n, f in zip(self.encoder_names, self._features) if f is None]
            raise RuntimeError(f"{self.method}: encoders {missing} produced no output in this forward pass")
        target = target.as_tensor() if isinstance(target, MetaTensor) else target
        loss_fn = self.head_loss or engine.loss_function
        self.heads.train()
        self.head_optimizer.zero_grad(set_to_none=True)
        features, self._features = self._features, [None] * len(self._features)
        scores, losses = [], []
        for i, head in enumerate(self.heads):
            # fp32 even under AMP: no GradScaler scales the heads' loss, and per-voxel Dice gradients over
            # 128^3 crops (~1e-8) fall below fp16's range. The heads are light, so this costs little.
            with torch.autocast(self._device.type, enabled=False):
                prediction = head(_float32(features[i]))
                head_target = on_grid(target, prediction)
                loss = loss_fn(prediction, head_target).mean()
            features[i] = None
            loss.backward()
            with torch.no_grad():
                scores.append(self._score([prediction.detach()], head_target, loss.detach()[None]))
            losses.append(loss.detach())
        measured = torch.stack([torch.cat(scores), torch.stack(losses)])
        utilisation, losses = self._all_reduce_heads(measured)
        return utilisation, losses

    def _score(
        self, predictions: list[torch.Tensor], target: torch.Tensor, losses: torch.Tensor
    ) -> torch.Tensor:
        """Per-modality utilisation [M] of the heads' predictions: the ``metric`` of each."""
        return torch.stack([self.metric(p, target).float().reshape(()) for p in predictions])

    def _all_reduce_heads(self, measured: torch.Tensor) -> torch.Tensor:
        """``measured`` and the heads' gradients averaged over the DDP ranks (unchanged in one process)."""
        world = _world_size()
        if world == 1:
            return measured
        dist.all_reduce(measured)
        for param in self.heads.parameters():
            if param.grad is not None:
                dist.all_reduce(param.grad)
                param.grad.div_(world)
        return measured / world

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
            for name, value in zip(self.modality_names, values[offset * num : (offset + 1) * num]):
                latest[f"{kind}/{name}"] = value
        latest.update(zip(scalars, values[len(per_modality) * num :]))
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


def per_modality(
    values: Mapping[str, float] | Sequence[float], names: Sequence[str], default: float, setting: str
) -> list[float]:
    """One value per modality from a ``{name: value}`` mapping (others ``default``) or a full list."""
    if isinstance(values, Mapping):
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise UserError(f"{setting}: unknown modalities {unknown}; expected names from {list(names)}")
        return [float(values.get(n, default)) for n in names]
    if len(values) != len(names):
        raise UserError(f"{setting}: {len(values)} values for {len(names)} modalities {list(names)}")
    return [float(v) for v in values]


class EncoderHandler(NetworkHandler):
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


def modulation_scalars(output: Any) -> dict[str, float]:
    """``output_transform`` for MONAI's Stats/TensorBoardStatsHandler: the loss and the ``cggm/`` curves."""
    first = output[0] if isinstance(output, list) else output
    return {
        key: float(value.detach() if isinstance(value, torch.Tensor) else value)
        for key, value in first.items()
        if key == Keys.LOSS or key.startswith(SCALAR_PREFIX)
    }
