"""The layering stays true: library modules never import the command modules (`cggm_seg.commands`,
`cggm_seg.cli`), and every `cggm-seg` subcommand is a module of `cggm_seg.commands`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cggm_seg.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
COMMAND_PACKAGES = ("cggm_seg.commands", "cggm_seg.cli")


def _library_files() -> list[Path]:
    files = sorted((ROOT / "cggm_seg").rglob("*.py")) + sorted((ROOT / "data_prep").rglob("*.py"))
    return [f for f in files if "commands" not in f.relative_to(ROOT).parts and f.name != "cli.py"
            and "bundles" not in f.relative_to(ROOT).parts]


def imported_modules(source: str) -> set[str]:
    """Every module an ``import`` or ``from ... import`` statement in ``source`` names."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _is_command(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in COMMAND_PACKAGES)


def test_the_checker_sees_command_imports():
    assert _is_command("cggm_seg.commands.evaluate")
    assert not _is_command("cggm_seg.commandsx")
    found = imported_modules("import cggm_seg.cli\nfrom cggm_seg import commands\n")
    assert {"cggm_seg.cli", "cggm_seg.commands"} <= found


def test_every_subcommand_is_a_command_module():
    leaves = [entry for entry in COMMANDS.values() if isinstance(entry, tuple)]
    leaves += [leaf for entry in COMMANDS.values() if isinstance(entry, dict) for leaf in entry.values()]
    assert all(module.startswith("cggm_seg.commands.") for _, module in leaves)


@pytest.mark.parametrize("path", _library_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_library_module_imports_no_command_module(path: Path):
    offending = sorted(m for m in imported_modules(path.read_text()) if _is_command(m))
    assert not offending, f"{path.relative_to(ROOT)} imports command module(s) {offending}"

