"""Every bundle through the checks of MONAI model-zoo's ``ci/verify_bundle.py``: the files a bundle must
have, version and changelog, the metadata schema, the inference workflow's properties, the network's
input and output as ``metadata.json`` declares them, and ``ckpt_export`` with its defaults (TorchScript
by scripting). Model-zoo verifies a bundle without trained weights by saving random ones of its
``network_def``; so do these tests. Nothing is downloaded: the schema is a copy in ``tests/data``."""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, verify_metadata, verify_net_in_out
from monai.bundle.scripts import _get_fake_input_shape
from monai.data import load_net_with_metadata
from packaging.version import Version
from test_bundle_conformance import write_tiny_datasets

import cggm_seg

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest brings tomli
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
BUNDLES = ROOT / "bundles"
ALL = ("brats_cggm", "mosi_cggm", "iemocap_cggm", "food101_cggm")
#: MONAI's metadata schema, as named by the bundles' ``schema`` url (model-zoo downloads it from there)
SCHEMA = Path(__file__).parents[1] / "data" / "meta_schema_20240725.json"
#: model-zoo's necessary files and the preferred inference config (``models/model.pt`` is not shipped)
REQUIRED = ("configs/metadata.json", "LICENSE", "configs/inference.json")
NET_ID = "network_def"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def files(bundle: str) -> dict[str, str]:
    """The paths model-zoo passes to MONAI's bundle tools for ``bundle``."""
    folder = BUNDLES / bundle
    return {
        "bundle_root": str(folder),
        "meta_file": str(folder / "configs" / "metadata.json"),
        "config_file": str(folder / "configs" / "inference.json"),
    }


def metadata(bundle: str) -> dict:
    return json.loads(Path(files(bundle)["meta_file"]).read_text())


def inference_parser(bundle: str) -> ConfigParser:
    """``inference.json`` with the metadata, as ``ckpt_export`` and ``verify_net_in_out`` read them."""
    paths = files(bundle)
    parser = ConfigParser()
    parser.read_config(paths["config_file"])
    parser.read_meta(paths["meta_file"])
    parser["bundle_root"] = paths["bundle_root"]
    return parser


def network(bundle: str, seed: int) -> torch.nn.Module:
    """A freshly initialised ``network_def``: different seeds give different weights."""
    torch.manual_seed(seed)
    return inference_parser(bundle).get_parsed_content(NET_ID).eval()


def fake_weights(bundle: str, folder: Path) -> Path:
    """Random weights of the bundle's network saved as ``folder/model.pt`` (model-zoo's fake weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.pt"
    torch.save(network(bundle, seed=0).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    return write_tiny_datasets(tmp_path_factory.mktemp("bundle_data"))


# ------------------------------------------------------------------------------------------ files
@pytest.mark.parametrize("bundle", ALL)
def test_bundle_has_the_files_model_zoo_requires(bundle):
    folder = BUNDLES / bundle
    assert [name for name in REQUIRED if not (folder / name).is_file()] == []
    assert PYPROJECT["project"]["license"]["text"] == "Apache-2.0"
    assert " ".join((folder / "LICENSE").read_text().split()[:4]) == "Apache License Version 2.0,"


@pytest.mark.parametrize("bundle", ALL)
def test_the_wheel_ships_the_files_model_zoo_requires(bundle):
    """An installed bundle (``cggm-seg bundle path NAME``) must verify as the checkout's does."""
    shipped = PYPROJECT["tool"]["setuptools"]["package-data"]["cggm_seg"]
    for name in REQUIRED:
        path = f"bundles/{bundle}/{name}"
        assert any(fnmatch.fnmatch(path, pattern) for pattern in shipped), path


# -------------------------------------------------------------------------------------- metadata
@pytest.mark.parametrize("bundle", ALL)
def test_version_is_the_newest_changelog_entry(bundle):
    meta = metadata(bundle)
    assert meta["version"] in meta["changelog"]
    assert meta["version"] == max(meta["changelog"], key=Version)


@pytest.mark.parametrize("bundle", ALL)
def test_metadata_names_this_package_version(bundle):
    assert metadata(bundle)["required_packages_version"]["cggm-seg"] == cggm_seg.__version__


@pytest.mark.parametrize("bundle", ALL)
def test_metadata_verifies_against_the_schema_it_names(bundle):
    assert metadata(bundle)["schema"].rsplit("/", 1)[-1] == SCHEMA.name
    verify_metadata(meta_file=files(bundle)["meta_file"], filepath=str(SCHEMA))


# ------------------------------------------------------------------------------------- inference
@pytest.mark.parametrize("bundle", ALL)
def test_inference_config_has_monai_infer_properties(bundle, datasets, tmp_path):
    logging_file = BUNDLES / bundle / "configs" / "logging.conf"
    weights = fake_weights(bundle, tmp_path / "models")
    flow = ConfigWorkflow(
        workflow_type="infer",
        logging_file=str(logging_file),
        **files(bundle),
        dataset_dir=str(datasets[bundle]),
        ckpt_dir=str(weights.parent),
        output_dir=str(tmp_path / "out"),
        device="cpu",
    )
    flow.initialize()
    assert flow.check_properties() == []


@pytest.mark.parametrize("bundle", ALL)
def test_network_input_and_output_match_metadata(bundle):
    verify_net_in_out(net_id=NET_ID, **files(bundle))


@pytest.mark.slow
@pytest.mark.parametrize("bundle", ALL)
def test_ckpt_export_scripts_the_checkpoints_network(bundle, tmp_path):
    """``python -m monai.bundle ckpt_export`` with its defaults, in a fresh interpreter."""
    weights = fake_weights(bundle, tmp_path)
    exported = tmp_path / "model.ts"
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "ckpt_export",
        NET_ID,
        "--filepath",
        str(exported),
        "--ckpt_file",
        str(weights),
    ]
    command += [word for key, path in files(bundle).items() for word in (f"--{key}", path)]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]

    scripted, meta, _ = load_net_with_metadata(str(exported))
    assert meta["version"] == metadata(bundle)["version"]
    eager = network(bundle, seed=1)  # other initial weights: only the checkpoint makes the two agree
    eager.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    shape = _get_fake_input_shape(inference_parser(bundle))  # what ckpt_export traces with: 16^3 for BraTS
    inputs = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(scripted(inputs), eager(inputs))
