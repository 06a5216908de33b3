"""Every bundle config imports what its expressions use, checked in a fresh interpreter.

A config run by ``python -m monai.bundle run`` starts with nothing but its ``imports`` and MONAI's
default globals; a test process that imported the package beforehand hides a missing import. So each
config (and each overlay, as users combine them) is resolved in its own subprocess: the ``imports``
run, then every dotted name an expression uses (``cggm_seg.checkpoint.check_network_fits``) is looked
up attribute by attribute, as evaluation would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUNDLES = sorted(p.parent for p in ROOT.glob("bundles/*/configs"))
COMBINATIONS = (
    ("train.json",),
    ("train.json", "evaluate.json"),
    ("inference.json",),
    ("train.json", "multi_gpu_train.json"),
)

# runs in the fresh interpreter: argv[1] is a JSON list of config files
RESOLVE = r"""
import json, re, sys
from monai.bundle import ConfigParser

parser = ConfigParser()
parser.read_config(json.loads(sys.argv[1]))
namespace = {"monai": __import__("monai"), "torch": __import__("torch"), "numpy": __import__("numpy"),
             "np": __import__("numpy")}
for statement in parser.get("imports", []):
    exec(statement.lstrip("$"), namespace)

def expressions(value):
    if isinstance(value, str) and value.startswith("$"):
        yield value[1:]
    elif isinstance(value, dict):
        for item in value.values():
            yield from expressions(item)
    elif isinstance(value, list):
        for item in value:
            yield from expressions(item)

missing = set()
for expression in expressions(parser.get()):
    code = re.sub(r"'[^']*'|\"[^\"]*\"", "''", expression)  # names inside strings are not looked up
    for dotted in re.findall(r"(?<![@\w.#])([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)", code):
        root, *attributes = dotted.split(".")
        if root not in namespace:  # a local name (comprehension variable), not a module
            continue
        value = namespace[root]
        for depth, attribute in enumerate(attributes):
            if not hasattr(value, attribute):
                if isinstance(value, type(sys)):  # a module without the attribute: not imported
                    missing.add(".".join([root, *attributes[:depth + 1]]))
                break
            value = getattr(value, attribute)
print(json.dumps(sorted(missing)))
"""


def cases() -> list:
    found = []
    for bundle in BUNDLES:
        for combination in COMBINATIONS:
            if all((bundle / "configs" / name).is_file() for name in combination):
                found.append(pytest.param(bundle, combination, id=f"{bundle.name}:{'+'.join(combination)}"))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("bundle, combination", cases())
def test_config_imports_what_its_expressions_use(bundle: Path, combination: tuple[str, ...]):
    files = [str(bundle / "configs" / name) for name in combination]
    result = subprocess.run(
        [sys.executable, "-c", RESOLVE, json.dumps(files)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=bundle,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    missing = json.loads(result.stdout.strip().splitlines()[-1])
    assert missing == [], f"{' + '.join(combination)} uses {missing} without importing it"


def test_the_check_finds_a_missing_import(tmp_path: Path):
    """The resolver itself: a config that calls a submodule it never imports is caught."""
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {"imports": ["$import cggm_seg"], "run": ["$cggm_seg.checkpoint.check_network_fits(@a, @b)"]}
        )
    )
    result = subprocess.run(
        [sys.executable, "-c", RESOLVE, json.dumps([str(config)])],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == ["cggm_seg.checkpoint"], result.stderr
