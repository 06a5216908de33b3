"""The layering stays true: ``docs/ARCHITECTURE.md``'s layer table is read, and every module of
``cggm_seg/`` and ``data_prep/`` imports only from its own layer and the layers listed before it; every
`cggm-seg` subcommand is a module of `cggm_seg.commands`."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from cggm_seg.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[2]
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"


def read_layers(text: str) -> list[tuple[str, list[str]]]:
    """(layer, module paths) of the "## Layers" table, in its order (foundation first)."""
    section = text.split("## Layers", 1)[1].split("\n#", 1)[0]
    layers = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[1].startswith("`"):
            layers.append((cells[0], re.findall(r"`([^`]+)`", cells[1])))
    return layers


LAYERS = read_layers(ARCHITECTURE.read_text())


def layer_of(path: str, layers: list[tuple[str, list[str]]] = LAYERS) -> int | None:
    """The index of the layer holding ``path`` (``cggm_seg/metrics/scoring`` or a module file), if any."""
    for index, (_, entries) in enumerate(layers):
        for entry in entries:
            stem = entry.removesuffix(".py").rstrip("/")
            if path == stem or path.startswith(stem + "/"):
                return index
    return None


def _library_files() -> list[Path]:
    files = sorted((ROOT / "cggm_seg").rglob("*.py")) + sorted((ROOT / "data_prep").rglob("*.py"))
    return [f for f in files if "bundles" not in f.relative_to(ROOT).parts]


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


def _project_imports(source: str) -> set[str]:
    """The project modules ``source`` imports, as paths (``cggm_seg/metrics/scoring``)."""
    return {
        m.replace(".", "/")
        for m in imported_modules(source)
        if m.split(".")[0] in ("cggm_seg", "data_prep") and m not in ("cggm_seg", "data_prep")
    }


def test_the_table_is_read_and_the_checker_sees_imports():
    assert [name for name, _ in LAYERS][0] == "foundation" and [name for name, _ in LAYERS][-1] == "commands"
    assert layer_of("cggm_seg/metrics/scoring") < layer_of("cggm_seg/commands/evaluate")
    assert layer_of("cggm_seg/errors/UserError") == 0 and layer_of("cggm_seg/errorsx") is None
    found = _project_imports("import cggm_seg.cli\nfrom cggm_seg import commands\nimport os\n")
    assert {"cggm_seg/cli", "cggm_seg/commands"} <= found and not any(f.startswith("os") for f in found)


def test_every_subcommand_is_a_command_module():
    leaves = [entry for entry in COMMANDS.values() if isinstance(entry, tuple)]
    leaves += [leaf for entry in COMMANDS.values() if isinstance(entry, dict) for leaf in entry.values()]
    assert all(module.startswith("cggm_seg.commands.") for _, module in leaves)


@pytest.mark.parametrize("path", _library_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_imports_only_its_layer_and_those_below(path: Path):
    name = path.relative_to(ROOT).with_suffix("").as_posix()
    own = layer_of(name)
    assert own is not None, f"{name} is in no layer of {ARCHITECTURE.name}'s table; add it there"
    imports = _project_imports(path.read_text())
    above = sorted(f"{m} ({LAYERS[layer_of(m)][0]})" for m in imports if (layer_of(m) or 0) > own)
    assert not above, f"{name} ({LAYERS[own][0]}) imports from a later layer: {above}"
