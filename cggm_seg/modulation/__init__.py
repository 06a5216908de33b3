"""Modality-balancing methods as Ignite handlers for MONAI's ``SupervisedTrainer``, picked by name.

One module a method, on the shared base in :mod:`~cggm_seg.modulation.base`:

* :mod:`~cggm_seg.modulation.cggm` — CGGM (Guo et al., NeurIPS 2024; ``docs/METHOD.md``);
* :mod:`~cggm_seg.modulation.ogm_ge` — OGM-GE (Peng et al., CVPR 2022), M-modality form;
* :mod:`~cggm_seg.modulation.mslr` — modality-specific learning rates;
* :mod:`~cggm_seg.modulation.unimodal` — train on one modality;
* :mod:`~cggm_seg.modulation.monitor` — heads and curves only, for methods without heads.

A handler's arguments are of two kinds. The *wiring* (:data:`WIRING`: encoders, heads, metrics, ...)
comes from the network and the task and is shared by every method; each method takes what it needs of
it. Everything else is a *setting* of that method, and a bundle keeps each method's settings in a block
of its own, named after the method (``"cggm": {"rho": 1.0, "lambda": 0.1, ...}``), so that what
applies to a run is what its block says and ``--modulation`` switches method with no other edit.
:func:`build_modulation` checks every block against its method's handler, whichever method runs: a
setting the method does not take is refused, naming its config id (``cggm#lamda``), never dropped;
:func:`block_flags` reads a block's booleans for the bundle's ``flags``, checked before a run writes
anything.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from cggm_seg.errors import UserError
from cggm_seg.modulation.base import (
    SCALAR_PREFIX,
    GradientModulationHandler,
    ModalityHeadsHandler,
    modulation_scalars,
)
from cggm_seg.modulation.cggm import CGGMHandler
from cggm_seg.modulation.clip import ClipGradNorm
from cggm_seg.modulation.monitor import HeadMonitor
from cggm_seg.modulation.mslr import MSLRHandler
from cggm_seg.modulation.ogm_ge import OGMGEHandler
from cggm_seg.modulation.unimodal import UnimodalHandler, keep_only_modality
from cggm_seg.preflight import flag

__all__ = [
    "CONFIG_NAMES",
    "METHODS",
    "SCALAR_PREFIX",
    "WIRING",
    "CGGMHandler",
    "ClipGradNorm",
    "GradientModulationHandler",
    "HeadMonitor",
    "MSLRHandler",
    "ModalityHeadsHandler",
    "OGMGEHandler",
    "UnimodalHandler",
    "block_flags",
    "build_modulation",
    "keep_only_modality",
    "method_settings",
    "modulation_scalars",
]

#: method name -> handler class; ``None`` is plain joint training
METHODS: dict[str, type | None] = {
    "none": None,
    "cggm": CGGMHandler,
    "ogm_ge": OGMGEHandler,
    "mslr": MSLRHandler,
    "unimodal": UnimodalHandler,
}

#: handler arguments that come from the network and the task, not from a method's block of settings
WIRING = frozenset(
    {
        "encoders",
        "fusion_layer",
        "heads",
        "head_optimizer",
        "head_output_layer",
        "head_loss",
        "metric",
        "soft_metric",
        "modality_names",
        "noise_seed",
    }
)
#: a setting whose config name is not its argument's name (``lambda`` is a Python keyword)
CONFIG_NAMES = {"lam": "lambda"}


def _parameters(handler: type) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(handler).parameters)


def _config_name(argument: str) -> str:
    return CONFIG_NAMES.get(argument, argument)


def method_settings(method: str) -> dict[str, inspect.Parameter]:
    """The settings ``method`` takes, by config name: its handler's arguments that are not wiring."""
    return {_config_name(name): p for name, p in _parameters(METHODS[method]).items() if name not in WIRING}


def _is_boolean(parameter: inspect.Parameter) -> bool:
    return parameter.annotation in (bool, "bool")


def _arguments(method: str, block: Any) -> dict[str, Any]:
    """The handler arguments of ``method``'s block of settings; booleans read as users write them."""
    if not isinstance(block, Mapping):
        raise UserError(f"{method}: expected a block of {method}'s settings ({{name: value}}), got {block!r}")
    takes = method_settings(method)
    arguments = {}
    for name, value in block.items():
        if name not in takes:
            raise UserError(
                f"{method}#{name}: not a setting of {method} (it takes {', '.join(sorted(takes))})"
            )
        arguments[takes[name].name] = flag(value, f"{method}#{name}") if _is_boolean(takes[name]) else value
    return arguments


def block_flags(method: str, block: Mapping[str, Any]) -> dict[str, bool]:
    """The booleans of ``method``'s block, read as users write them (``--cggm#magnitude false``), once the
    whole block is checked. A bundle lists them in its ``flags``, which ``check_run`` settles before a run
    writes anything, so a mistake in the block is found then (a config expression cannot name the id
    itself: MONAI rewrites every ``#`` in it)."""
    arguments = _arguments(method, block)
    return {
        name: arguments[p.name]
        for name, p in method_settings(method).items()
        if _is_boolean(p) and p.name in arguments
    }


def build_modulation(
    method: str, settings: Mapping[str, Mapping[str, Any]] | None = None, **wiring: Any
) -> Any:
    """The handler for ``method``, or ``None`` for joint training (``"none"``).

    ``settings`` maps methods to their blocks of settings by config name (``{"cggm": {"lambda": 0.1}}``).
    Every block is checked, not only the chosen method's: a mistake in one is found before a run
    switches to its method. ``wiring`` holds :data:`WIRING` arguments; the handler gets those it takes,
    then its own block.
    """
    if method not in METHODS:
        raise UserError(f"modulation: {method!r} is not one of {list(METHODS)}")
    configurable = [name for name, handler in METHODS.items() if handler is not None]
    arguments = {}
    for name, block in (settings or {}).items():
        if name not in configurable:
            raise UserError(
                f"modulation_handler#settings#{name}: not a method with settings ({', '.join(configurable)})"
            )
        arguments[name] = _arguments(name, block)
    unknown = sorted(set(wiring) - WIRING)
    if unknown:
        raise UserError(
            f"modulation_handler#{unknown[0]}: not one of the network's and task's arguments "
            f"({', '.join(sorted(WIRING))}); a method's settings go in its own block"
        )
    handler = METHODS[method]
    if handler is None:
        return None
    parameters = _parameters(handler)
    given = {name: value for name, value in wiring.items() if name in parameters}
    given.update(arguments.get(method, {}))
    missing = [name for name, p in parameters.items() if p.default is p.empty and name not in given]
    if missing:
        config_id = (
            f"modulation_handler#{missing[0]}"
            if missing[0] in WIRING
            else f"{method}#{_config_name(missing[0])}"
        )
        raise UserError(f"{config_id}: missing; {method} needs it")
    try:
        return handler(**given)
    except UserError as err:  # the handler names its argument; the user wrote the config id
        raise UserError(_with_config_id(method, str(err))) from None


def _with_config_id(method: str, message: str) -> str:
    """A handler's ``name: ...`` message with ``name`` as the bundle spells it (``cggm#rho: ...``)."""
    name, _, _ = message.partition(":")
    if name in method_settings(method):
        return f"{method}#{message}"
    return f"modulation_handler#{message}" if name in WIRING else message
