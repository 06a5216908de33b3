"""Pick the modality-balancing method by name, so a bundle switches it with one config value.

A bundle passes the settings of every method it offers (``rho`` for CGGM, ``alpha`` for OGM-GE,
``lr_scales`` for MSLR, ...); each method takes the ones its handler accepts and ignores the
others, so switching ``modulation`` needs no other edit. A setting that no method knows is an
error (a typo must not be ignored silently).
"""

from __future__ import annotations

import inspect
from typing import Any

from cggm_seg.baselines import MSLRHandler, OGMGEHandler, UnimodalHandler
from cggm_seg.errors import UserError
from cggm_seg.handlers import CGGMHandler

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
