"""docs/RELIABILITY.md names, beside each promise, tests that exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: `tests/FILE.py::test_name`, or `::test_name` for another test of the file named before it
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)?::(test_\w+)`")


def test_every_test_the_reliability_page_names_exists():
    named, current = [], None
    for match in REFERENCE.finditer((ROOT / "docs" / "RELIABILITY.md").read_text()):
        current = match.group(1) or current
        named.append((current, match.group(2)))
    assert len(named) > 20
    missing = []
    for file, name in named:
        tree = ast.parse((ROOT / file).read_text())
        if name not in {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}:
            missing.append(f"{file}::{name}")
    assert not missing, f"docs/RELIABILITY.md names tests that do not exist: {missing}"
