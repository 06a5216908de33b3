"""The container image, built and run for real: ``./run.sh image --offline`` with podman on a Debian base
made here, then the demo and the BraTS bundle's train -> evaluate -> inference inside it, as its user.

The build gets what a clean clone has (tracked and not-ignored files) plus ``wheels/``: the wheels for
the base's Python, torch's CPU build among them (the one this machine has, found through pip's own
configuration), installed with no network. The bundle runs read a synthetic BraTS folder mounted
read-only, with the datalist written on the host, and write to a mounted folder, where the host checks
what they wrote. CI runs as root, and podman, mmdebstrap and runc are installed with apt when missing;
where that cannot be done, the test skips and says why.

Everything podman keeps (the base image, the layer cache) and the wheels live in :data:`CACHE`, so a
rerun rebuilds only what changed (docs/CONTAINER.md). Build time and image size are printed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cggm_seg.cli import main as cggm_seg
from data_prep.synth_brats import write_brats_dataset

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest brings tomli
    import tomli as tomllib

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cggm-seg-container"
IMAGE = "cggm-seg"  # the tag ./run.sh image gives
TOOLS = ("podman", "mmdebstrap", "runc")
#: the CI base: Debian with Python and venv from Debian's own mirror, no registry pull; its tag names
#: its recipe, so a changed recipe makes a new base
BASE_SUITE, BASE_PACKAGES = "bookworm", ("python3", "python3-venv")
BASE_IMAGE = (
    "localhost/cggm-seg-ci-base:" + hashlib.sha256(f"{BASE_SUITE} {BASE_PACKAGES}".encode()).hexdigest()[:12]
)
TINY_DEMO = ["--size", "32", "--epochs", "1", "--train-cases", "4", "--test-cases", "1"]
SMALL = ["--roi_size", "[16,16,16]", "--num_workers", "0"]
SMALL_TRAINING = ["--epochs", "1", "--val_interval", "1", *SMALL]


def torch_pin() -> str:
    """The torch version of constraints.txt, the one the project is tested with."""
    return next(
        line.split("==")[1]
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line.startswith("torch==")
    )


def run(args: list[str], timeout: int = 600, **kwargs) -> str:
    """stdout of ``args``; a non-zero exit fails with the ends of both streams."""
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert result.returncode == 0, f"{args[:6]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result.stdout


def install_tools() -> None:
    """podman, mmdebstrap and runc, with apt where missing; a skip where that cannot be done."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"no {', '.join(missing)}, and installing them needs root and apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for step in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
    ):
        result = subprocess.run(step, capture_output=True, text=True, env=env, timeout=600)
        if result.returncode != 0:
            pytest.skip(f"no container engine: `{' '.join(step)}` failed: {result.stderr.strip()[-500:]}")


def podman_environment() -> dict[str, str]:
    """The environment podman runs in here: runc, limits this host allows, overlay storage in CACHE."""
    # Podman asks for 1048576 open files and processes in each container, which a host without
    # CAP_SYS_RESOURCE refuses; ask for its own limits instead (it caps processes at pid_max).
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], pid_max)
    CACHE.mkdir(parents=True, exist_ok=True)
    containers, storage = CACHE / "containers.conf", CACHE / "storage.conf"
    containers.write_text(
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
    )
    storage.write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{CACHE / "storage"}"\nrunroot = "{CACHE / "run"}"\n'
    )
    return {
        **os.environ,
        "CONTAINERS_CONF": str(containers),
        "CONTAINERS_STORAGE_CONF": str(storage),
        "CGGM_CONTAINER_ENGINE": "podman",
    }


def base_image(env: dict[str, str], scratch: Path) -> str:
    """The CI base, made with mmdebstrap and imported once; later runs find it in CACHE's storage."""
    if subprocess.run(["podman", "image", "exists", BASE_IMAGE], env=env).returncode != 0:
        rootfs = scratch / "rootfs.tar"
        run(
            [
                "mmdebstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                BASE_SUITE,
                str(rootfs),
            ]
        )
        run(["podman", "import", str(rootfs), BASE_IMAGE], env=env)
        rootfs.unlink()
    return BASE_IMAGE


def offline_wheels(env: dict[str, str], base: str) -> Path:
    """Every wheel the image needs, for the base's Python and glibc, torch as its CPU build."""
    probe = "import platform, sys; print('%d.%d' % sys.version_info[:2], platform.libc_ver()[1])"
    version, glibc = run(
        ["podman", "run", "--rm", "--network", "none", base, "python3", "-c", probe], env=env
    ).split()
    machine = platform.machine()
    platforms = [f"manylinux_2_{minor}_{machine}" for minor in range(17, int(glibc.split(".")[1]) + 1)]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folder = CACHE / "wheels" / f"python{version}-glibc{glibc}-{machine}"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--dest",
            str(folder),
            "--only-binary=:all:",
            "--python-version",
            version,
            *(f"--platform={p}" for p in [f"manylinux2014_{machine}", *platforms]),
            "--constraint",
            str(ROOT / "constraints.txt"),
            f"torch=={torch_pin()}+cpu",
            *project["build-system"]["requires"],
            *project["project"]["dependencies"],
        ]
    )
    return folder


def build_context(folder: Path, wheels: Path) -> Path:
    """The checkout as a clean clone has it, plus ``wheels/``: the checkout itself is left alone."""
    names = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT).split("\0")
    for name in filter(None, names):
        source = ROOT / name
        if source.is_symlink() or source.exists():  # not a tracked file deleted in the working tree
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, folder / name, follow_symlinks=False)
    shutil.copytree(wheels, folder / "wheels")
    return folder


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment in which ``podman`` runs the image that ``./run.sh image --offline`` built."""
    started = time.perf_counter()
    install_tools()
    env = podman_environment()
    base = base_image(env, tmp_path_factory.mktemp("base"))
    wheels = offline_wheels(env, base)
    context = build_context(tmp_path_factory.mktemp("context"), wheels)
    prepared = time.perf_counter()
    run(["./run.sh", "image", "--offline", "--build-arg", f"BASE_IMAGE={base}"], cwd=context, env=env)
    built = time.perf_counter()
    size = int(run(["podman", "image", "inspect", "--format", "{{.Size}}", IMAGE], env=env))
    print(
        f"\ntools, base, wheels and context ready in {prepared - started:.0f} s; {IMAGE} on {base} built "
        f"in {built - prepared:.0f} s: {size / 1e9:.2f} GB"
    )
    return env


def in_image(env: dict[str, str], command: list[str], output: Path, data: Path | None = None) -> str:
    """stdout of ``command`` in the image, as its own user, with no network; ``output`` is /output."""
    mounts = ["-v", f"{output}:/output"] + (["-v", f"{data}:/data/brats:ro"] if data else [])
    started = time.perf_counter()
    stdout = run(["podman", "run", "--rm", "--network", "none", *mounts, IMAGE, *command], env=env)
    print(f"{time.perf_counter() - started:6.1f} s  {' '.join(command)[:120]}")
    return stdout


@pytest.fixture
def output(tmp_path: Path) -> Path:
    """A folder the image's user (uid 1000) may write, whoever runs the test."""
    folder = tmp_path / "output"
    folder.mkdir()
    folder.chmod(0o777)
    return folder


def test_image_runs_as_its_user_with_the_tested_torch_and_the_installed_bundles(podman, output):
    script = (
        "id -u; command -v cggm-seg; cggm-seg bundle path brats_cggm; readlink -f bundles/brats_cggm; "
        'python -c "import torch; print(torch.__version__)"'
    )
    uid, program, bundle, linked, torch = in_image(podman, ["sh", "-c", script], output).split()
    assert uid == "1000" and program == "/opt/venv/bin/cggm-seg"
    assert "/site-packages/cggm_seg/bundles/" in bundle and linked == bundle, (bundle, linked)
    assert torch == f"{torch_pin()}+cpu", f"the image has torch {torch}; constraints.txt: {torch_pin()}"


def test_demo_trains_and_scores_in_the_image(podman, output):
    in_image(podman, ["cggm-seg", "demo", "--out", "/output/demo", *TINY_DEMO], output)
    summary = json.loads((output / "demo" / "summary.json").read_text())
    assert 0.0 <= summary["dice_mean"] <= 1.0, summary


def test_installed_bundle_trains_evaluates_and_infers_in_the_image(podman, output, tmp_path):
    data = tmp_path / "brats"
    write_brats_dataset(data, cases=4, size=32, seed=0, layout="brats2021")
    # the data folder is read-only in the container, so its datalist is written here beforehand
    assert (
        cggm_seg(
            ["prepare", "brats", "--root", str(data), "--out", str(data / "datalist.json"), "--folds", "2"]
        )
        == 0
    )
    bundle_run = (
        'B="$(cggm-seg bundle path brats_cggm)/configs" && '
        "python -m monai.bundle run --output_dir /output/brats"
    )
    for step in (
        f'--config_file "$B/train.json" {shlex.join(SMALL_TRAINING)}',
        f"--config_file \"['$B/train.json','$B/evaluate.json']\" {shlex.join(SMALL_TRAINING)}",
        f'--config_file "$B/inference.json" --fold 0 {shlex.join(SMALL)}',
    ):
        in_image(podman, ["sh", "-c", f"{bundle_run} {step}"], output, data)

    entries = json.loads((data / "datalist.json").read_text())["training"]
    cases = {Path(e["case_id"]).name: data / e["image"][0] for e in entries if int(e["fold"]) == 0}
    assert (output / "brats" / "checkpoint_final.pt").is_file()
    with (output / "brats" / "eval" / "scores.csv").open(newline="") as table:
        assert sorted(row["case_id"] for row in csv.DictReader(table)) == sorted(cases)
    for case, image in cases.items():
        prediction, source = nib.load(output / "brats" / "predictions" / f"{case}.nii.gz"), nib.load(image)
        assert prediction.shape == source.shape[:3], (case, prediction.shape, source.shape)
        np.testing.assert_allclose(prediction.affine, source.affine, atol=1e-3, err_msg=case)
