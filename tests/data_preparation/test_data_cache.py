"""The BraTS bundle's data paths (``data_cache: none | memory | disk``): same input, compact, safe cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.utils import set_determinism

from cggm_seg import data_cache
from cggm_seg.data_cache import PreparedCaseDataset, case_dataset
from cggm_seg.errors import UserError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_brats import CONFIGS, TINY, prepared_brats  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def brats(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepared_brats(tmp_path_factory.mktemp("brats"), cases=3)


def parser_for(brats: Path, tmp_path: Path, **overrides: object) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update(
        {
            **TINY,
            "amp": False,
            "dataset_dir": str(brats),
            "output_dir": str(tmp_path / "run"),
            "cache_dir": str(tmp_path / "cache"),
            **overrides,
        }
    )
    return parser


def draws(parser: ConfigParser, dataset_id: str, seed: int = 0) -> list[dict]:
    """Every item of the dataset, drawn twice, from one seed: what the network would be given."""
    dataset = parser.get_parsed_content(dataset_id)
    set_determinism(seed)
    dataset.transform.set_random_state(seed)
    return [dataset[i] for _ in range(2) for i in range(len(dataset))]


@pytest.mark.parametrize("dataset_id", ["train#dataset", "validate#dataset"])
def test_every_data_cache_gives_the_network_the_same_tensors(brats: Path, tmp_path: Path, dataset_id: str):
    paths = ("none", "memory", "disk")
    items = {path: draws(parser_for(brats, tmp_path, data_cache=path), dataset_id) for path in paths}
    # the disk path twice: the first draw prepares and writes, the second reads the file back
    items["disk again"] = draws(parser_for(brats, tmp_path, data_cache="disk"), dataset_id)
    reference = items.pop("none")
    for path, got in items.items():
        for expected, item in zip(reference, got, strict=True):
            for key in ("image", "label"):
                assert item[key].dtype == expected[key].dtype == torch.float32, (path, key)
                assert torch.equal(torch.as_tensor(item[key]), torch.as_tensor(expected[key])), (path, key)


def test_prepared_case_holds_the_uncached_pipelines_voxels(brats: Path, tmp_path: Path):
    """The compact case is the float32 full-volume pipeline's result cut to the brain, to float16 precision:
    nothing training uses is lost (the voxels cut away are background in every channel)."""
    parser = parser_for(brats, tmp_path)
    full = parser.get_parsed_content("train#prepare_transforms")
    compact = parser.get_parsed_content("train#prepare")
    for entry in parser.get_parsed_content("split")[0]:
        item = dict(entry)
        for transform in full:
            item = transform(item)
        image, label = np.asarray(item["image"]), np.asarray(item["label"])
        prepared = compact(dict(entry))
        start, end = prepared["foreground_start_coord"], prepared["foreground_end_coord"]
        box = tuple(slice(int(s), int(e)) for s, e in zip(start, end, strict=True))
        assert prepared["image"].dtype == torch.float16 and prepared["label"].dtype == torch.uint8
        inside = image[(slice(None), *box)]
        stored = np.asarray(prepared["image"], dtype=np.float32)
        np.testing.assert_allclose(stored, inside, rtol=1e-3, atol=1e-3)
        np.testing.assert_array_equal(np.asarray(prepared["label"]), label[(slice(None), *box)])
        outside = np.ones(image.shape[1:], bool)
        outside[box] = False
        assert not image[:, outside].any() and not label[:, outside].any()
        assert 0 < inside[0].size < image[0].size  # the phantom's background was cut away


def test_cache_key_follows_files_and_transforms(brats: Path, tmp_path: Path):
    parser = parser_for(brats, tmp_path, data_cache="disk")
    entry = parser.get_parsed_content("split")[0][0]
    prepare = parser.get_parsed_content("train#prepare")
    first = PreparedCaseDataset([entry], prepare, tmp_path / "cache").cache_file(entry)

    changed = parser_for(brats, tmp_path, data_cache="disk")
    changed["train#prepare_transforms#4#nonzero"] = False  # NormalizeIntensityd over the whole volume
    other = PreparedCaseDataset([entry], changed.get_parsed_content("train#prepare"), tmp_path / "cache")
    assert other.cache_file(entry) != first

    label = Path(entry["label"])
    os.utime(label, ns=(label.stat().st_atime_ns, label.stat().st_mtime_ns + 10**9))  # a replaced file
    assert PreparedCaseDataset([entry], prepare, tmp_path / "cache").cache_file(entry) != first


def test_cache_key_is_the_same_in_a_fresh_process(brats: Path, tmp_path: Path):
    """Runs share the cache only if every process computes the same key for the same case and pipeline."""
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from test_data_cache import parser_for; from cggm_seg.data_cache import PreparedCaseDataset;"
        "from pathlib import Path; p = parser_for(Path(sys.argv[2]), Path(sys.argv[3]), data_cache='disk');"
        "e = p.get_parsed_content('split')[0][0];"
        "d = PreparedCaseDataset([e], p.get_parsed_content('train#prepare'), sys.argv[3]);"
        "print(d.cache_file(e).name)"
    )
    keys = {
        subprocess.run(
            [sys.executable, "-c", script, str(Path(__file__).parent), str(brats), str(tmp_path)],
            capture_output=True,
            text=True,
            check=True,
            cwd=tmp_path,
        ).stdout.strip()
        for _ in range(2)
    }
    assert len(keys) == 1 and keys.pop().endswith(".pt")


def test_a_failed_write_leaves_no_file_that_is_read_later(brats: Path, tmp_path: Path, monkeypatch):
    parser = parser_for(brats, tmp_path, data_cache="disk")
    entries = parser.get_parsed_content("split")[0]
    dataset = PreparedCaseDataset(entries, parser.get_parsed_content("train#prepare"), tmp_path / "cache")
    real_save = torch.save

    def killed_half_way(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        Path(path).write_bytes(Path(path).read_bytes()[:1000])  # what a kill during the write leaves
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_half_way)
    with pytest.raises(KeyboardInterrupt):
        dataset[0]
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.setattr(torch, "save", real_save)
    resumed = dataset[0]
    assert dataset.cache_file(entries[0]).is_file()
    assert torch.equal(dataset[0]["image"], resumed["image"])


def test_unknown_data_cache_is_one_line_naming_the_setting():
    with pytest.raises(UserError, match=r"^data_cache must be one of none, memory, disk, not 'ram'$"):
        case_dataset("ram", [], None, None, "")
    with pytest.raises(UserError, match="data_cache 'disk' needs a cache_dir"):
        case_dataset("disk", [], None, None, "")


def test_a_cache_folder_that_cannot_be_written_is_one_line(tmp_path: Path):
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the folder should be: no user, root included, can write in it
    with pytest.raises(UserError, match=rf"^cache_dir {blocked / 'cache'}: cannot write there \(.+\); set"):
        case_dataset("disk", [], None, None, blocked / "cache")


def test_default_cache_folder_follows_the_environment(monkeypatch, tmp_path: Path):
    monkeypatch.setenv(data_cache.CACHE_ENV, str(tmp_path / "c"))
    assert data_cache.default_cache_dir() == str(tmp_path / "c")
    monkeypatch.delenv(data_cache.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_cache.default_cache_dir() == str(tmp_path / "xdg" / "cggm-seg")


def test_training_reads_the_cases_prepare_brats_wrote(tmp_path: Path):
    """`cggm-seg prepare brats --cache` fills the cache a training run then reads without preparing again."""
    data, cache = tmp_path / "brats", tmp_path / "cache"
    env = {**os.environ, "CGGM_SEG_CACHE_DIR": str(cache)}
    cli = [sys.executable, "-m", "cggm_seg.cli"]
    run = {"check": True, "env": env, "cwd": tmp_path, "capture_output": True, "text": True}
    subprocess.run([*cli, "synth", "brats", "--out", str(data), "--cases", "4", "--size", "24"], **run)
    prepared = subprocess.run(
        [*cli, "prepare", "brats", "--root", str(data), "--out", str(data / "datalist.json"), "--folds", "2"]
        + ["--cache", "--workers", "2"],
        **run,
    )
    assert f"cache {cache}: 4 cases" in prepared.stdout
    before = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert len(before) == 4
    run_dir = tmp_path / "run"
    settings = {**TINY, "amp": False, "epochs": 1, "dataset_dir": str(data), "output_dir": str(run_dir)}
    overrides = [arg for key, value in settings.items() for arg in (f"--{key}", json.dumps(value))]
    train = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIGS / "train.json")]
    subprocess.run([*train, *overrides], **run)
    assert (run_dir / "checkpoint_final.pt").is_file()
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == before
