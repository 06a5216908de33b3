"""Pick the gradient-modulation method by name, so a bundle switches it with one config value."""

from __future__ import annotations

from typing import Any

from cggm_seg.errors import UserError
from cggm_seg.handlers import CGGMHandler

METHODS = ("none", "cggm")


def build_modulation(method: str, **settings: Any) -> CGGMHandler | None:
    """The handler for ``method`` built from ``settings``; ``None`` for plain joint training."""
    if method == "none":
        return None
    if method == "cggm":
        return CGGMHandler(**settings)
    raise UserError(f"modulation: {method!r} is not one of {METHODS}")
