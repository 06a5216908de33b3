"""Argument types the subcommands share (not a subcommand itself)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def bundle_override(text: str) -> tuple[str, Any]:
    """``ID=JSON`` command-line override -> (id, value); a value that is not JSON stays a string, so bundle
    expressions such as ``$torch.bfloat16`` pass through."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected ID=JSON, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value
