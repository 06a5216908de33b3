"""Argument types the subcommands share (not a subcommand itself)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
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


def parse_shape(text: str) -> tuple[int, int, int]:
    """``"240,240,155"`` -> ``(240, 240, 155)``."""
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three integers like 240,240,155, got {text!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive integers like 240,240,155, got {text!r}")
    return shape


def add_override_option(parser: argparse._ActionsContainer, help_text: str) -> None:
    """``--set ID=VALUE`` (repeatable): a bundle config override, as ``--ID VALUE`` on ``monai.bundle``."""
    parser.add_argument(
        "--set", type=bundle_override, action="append", default=[], metavar="ID=VALUE", help=help_text
    )


def print_json(document: dict[str, Any], out: Path | None) -> None:
    """Print a bench's JSON document and, with ``--out``, write it there too."""
    text = json.dumps(document, indent=2)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
