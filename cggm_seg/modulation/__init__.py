"""Modality-balancing methods as Ignite handlers for MONAI's ``SupervisedTrainer``, picked by name.

One module a method, on the shared base in :mod:`~cggm_seg.modulation.base`:

* :mod:`~cggm_seg.modulation.cggm` — CGGM (Guo et al., NeurIPS 2024; ``docs/METHOD.md``);
* :mod:`~cggm_seg.modulation.ogm_ge` — OGM-GE (Peng et al., CVPR 2022), M-modality form;
* :mod:`~cggm_seg.modulation.mslr` — modality-specific learning rates;
* :mod:`~cggm_seg.modulation.unimodal` — train on one modality;
* :mod:`~cggm_seg.modulation.monitor` — heads and curves only, for methods without heads.

A bundle passes the settings of every method it offers (``rho`` for CGGM, ``alpha`` for OGM-GE,
``lr_scales`` for MSLR, ...); :func:`build_modulation` gives each method the ones its handler
accepts, so switching ``modulation`` needs no other edit. A setting that no method knows is an
error (a typo must not be ignored silently).
"""

from __future__ import annotations

import inspect
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

__all__ = [
    "METHODS", "SCALAR_PREFIX", "CGGMHandler", "ClipGradNorm", "GradientModulationHandler", "HeadMonitor",
    "MSLRHandler", "ModalityHeadsHandler", "OGMGEHandler", "UnimodalHandler", "build_modulation",
    "keep_only_modality", "modulation_scalars",
]

#: method name -> handler class; ``None`` is plain joint training
METHODS: dict[str, type | None] = {
    "none": None,
    "cggm": CGGMHandler,
    "ogm_ge": OGMGEHandler,
    "mslr": MSLRHandler,
    "unimodal": UnimodalHandler,
}


def _parameters(handler: type) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(handler).parameters)


def build_modulation(method: str, **settings: Any) -> Any:
    """The handler for ``method`` built from the ``settings`` it accepts; ``None`` for joint training."""
    if method not in METHODS:
        raise UserError(f"modulation: {method!r} is not one of {list(METHODS)}")
    known = {name for handler in METHODS.values() if handler is not None for name in _parameters(handler)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise UserError(f"modulation_handler: unknown setting(s) {unknown}; the methods take {sorted(known)}")
    handler = METHODS[method]
    if handler is None:
        return None
    parameters = _parameters(handler)
    missing = [name for name, p in parameters.items() if p.default is p.empty and name not in settings]
    if missing:
        raise UserError(f"modulation {method!r}: missing setting(s) {missing}")
    return handler(**{name: value for name, value in settings.items() if name in parameters})
