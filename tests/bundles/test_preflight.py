"""What a bundle run checks before it writes anything (cggm_seg.preflight): every boolean id of every
bundle as users write it on the command line, writable output folders, the training data; and a user's
mistake that ends a run is its one line."""

from __future__ import annotations

import errno
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from monai.bundle import ConfigParser
from test_bundle_conformance import flatten

from cggm_seg.errors import UserError
from cggm_seg.modulation import METHODS
from cggm_seg.preflight import check_training_data, check_writable, flag

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
SEQUENCE = ("mosi_cggm", "iemocap_cggm", "food101_cggm")
#: the balancing methods' booleans, in their blocks of settings
METHOD_BOOLEANS = {"cggm#magnitude", "ogm_ge#gaussian_noise"}
BRATS_TRAIN = {"resume", "allow_other_fold", "amp", "cudnn_benchmark", *METHOD_BOOLEANS}
SEQUENCE_TRAIN = {"overwrite", "amp", *METHOD_BOOLEANS}
#: every boolean id of every bundle workflow (configs as they are combined on the command line)
BOOLEANS: dict[tuple[str, tuple[str, ...]], set[str]] = {
    ("brats_cggm", ("train.json",)): BRATS_TRAIN,
    ("brats_cggm", ("train.json", "multi_gpu_train.json")): BRATS_TRAIN,
    ("brats_cggm", ("train.json", "evaluate.json")): BRATS_TRAIN | {"overwrite"},
    ("brats_cggm", ("inference.json",)): {"amp"},
    **{
        (name, configs): SEQUENCE_TRAIN
        for name in SEQUENCE
        for configs in (("train.json",), ("train.json", "evaluate.json"))
    },
}
WORKFLOW_IDS = [f"{bundle}-{'+'.join(c[:-5] for c in configs)}" for bundle, configs in BOOLEANS]
CASES = [(bundle, configs, name) for (bundle, configs), names in BOOLEANS.items() for name in sorted(names)]
#: what `python -m monai.bundle run --ID VALUE` hands the bundle (fire keeps `false` a string) -> the bool
SPELLINGS = [
    ("false", False),
    ("False", False),
    ("FALSE", False),
    ("0", False),
    (0, False),
    (False, False),
    ("no", False),
    ("off", False),
    ("true", True),
    ("True", True),
    ("1", True),
    (1, True),
    (True, True),
    ("yes", True),
    (" on ", True),
    (np.bool_(True), True),
]
NOT_BOOLEANS = ["maybe", 2, -1, None, "", [True]]


def parser_for(bundle: str, configs: tuple[str, ...]) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(BUNDLES / bundle / "configs" / c) for c in configs])
    return parser


def boolean_ids(parser: ConfigParser) -> set[str]:
    """Top-level ids and settings of a method's block whose default is a boolean: a literal, or an expression
    of no other id (``is_main_rank`` of DDP training is computed from the process group, not set)."""
    settings = {
        f"{method}#{name}": value
        for method in METHODS
        if isinstance(parser.config.get(method), dict)
        for name, value in parser.config[method].items()
    }
    found = set()
    for key, raw in {**parser.config, **settings}.items():
        if isinstance(raw, str) and raw.startswith("$") and "@" not in raw and "torch.distributed" not in raw:
            raw = parser.get_parsed_content(key)
        if isinstance(raw, bool):
            found.add(key)
    return found


def read_flag(parser: ConfigParser, name: str) -> bool:
    """Boolean ``name`` as ``flags`` holds it: ``flags#amp``, or ``flags#cggm`` (its block's booleans) for
    ``cggm#magnitude``."""
    block, _, setting = name.rpartition("#")
    if block:
        return parser.get_parsed_content(f"flags#{block}")[setting]
    return parser.get_parsed_content(f"flags#{name}")


def flag_names(parser: ConfigParser) -> set[str]:
    """The booleans ``flags`` holds, by config id (``flags#cggm`` holds ``cggm#magnitude``)."""
    names = set()
    for key, value in parser.get_parsed_content("flags").items():
        names |= {f"{key}#{setting}" for setting in value} if isinstance(value, dict) else {key}
    return names


def user_error(error: BaseException) -> UserError:
    """The UserError behind MONAI's "Failed to evaluate" wrapper."""
    while error is not None and not isinstance(error, UserError):
        error = error.__cause__
    assert error is not None, "no UserError in the exception chain"
    return error


@pytest.mark.parametrize("bundle, configs", BOOLEANS, ids=WORKFLOW_IDS)
def test_every_boolean_id_is_read_through_flag(bundle, configs):
    parser = parser_for(bundle, configs)
    assert boolean_ids(parser) == BOOLEANS[bundle, configs] == flag_names(parser)
    for config_id, value in flatten(parser.config).items():
        for name in BOOLEANS[bundle, configs]:
            if not config_id.startswith("flags#"):
                assert not re.search(rf"@{name}(?![\w#])", str(value)), f"{config_id} reads @{name} unparsed"
        for method in ("cggm", "ogm_ge"):  # whole blocks go where their booleans are read: build_modulation
            if not config_id.startswith(("flags#", "modulation_handler#settings#")):
                assert not re.search(rf"@{method}(?![\w#])", str(value)), f"{config_id} reads @{method}"


@pytest.mark.parametrize(
    "bundle, configs, name", CASES, ids=[f"{b}-{'+'.join(c[:-5] for c in cs)}-{n}" for b, cs, n in CASES]
)
def test_each_boolean_parses_as_users_write_it_or_is_refused(bundle, configs, name):
    parser = parser_for(bundle, configs)
    for spelling, expected in SPELLINGS:
        parser[name] = spelling
        assert read_flag(parser, name) is expected, spelling
    for bad in NOT_BOOLEANS:
        parser[name] = bad
        with pytest.raises(Exception) as caught:
            read_flag(parser, name)
        assert str(user_error(caught.value)) == (
            f"{name}: {bad!r} is not a boolean; write true or false (yes/no, on/off, 1/0 work too)"
        )


@pytest.mark.parametrize(("spelling", "expected"), SPELLINGS)
def test_flag(spelling, expected):
    assert flag(spelling, "amp") is expected


def test_an_unwritable_output_folder_is_named(tmp_path, monkeypatch):
    check_writable(tmp_path / "new" / "deeper", "output_dir")  # created later: its nearest folder is writable
    assert not (tmp_path / "new").exists() and list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("")
    with pytest.raises(
        UserError,
        match=rf"^output_dir: cannot create {tmp_path}/file/run: {tmp_path}/file "
        "is a file, not a folder$",
    ):
        check_writable(tmp_path / "file" / "run", "output_dir")

    def read_only(**kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    with pytest.raises(UserError, match=rf"^--out: cannot write in {tmp_path} \(Read-only file system\)$"):
        check_writable(tmp_path, "--out")


def _entry(root: Path, case: str) -> dict:
    return {
        "case_id": case,
        "image": [str(root / f"{case}_flair.nii.gz")],
        "label": str(root / f"{case}.nii"),
    }


def test_training_data_every_file_and_a_batch_that_fits(tmp_path):
    split = ([_entry(tmp_path, "a"), _entry(tmp_path, "b")], [_entry(tmp_path, "c")])
    for entry in [*split[0], *split[1]]:
        for path in (*entry["image"], entry["label"]):
            Path(path).write_bytes(b"")
    assert check_training_data(split, batch_size=2)
    with pytest.raises(UserError, match=r"^batch_size: 3 is more than the 2 training case\(s\); incomplete "):
        check_training_data(split, batch_size=3)
    Path(split[1][0]["label"]).unlink()
    Path(split[0][1]["image"][0]).unlink()
    with pytest.raises(
        UserError,
        match=rf"^datalist: case b: {tmp_path}/b_flair.nii.gz does not exist "
        r"\(1 more listed file\(s\) missing\)$",
    ):
        check_training_data(split, batch_size=1)


#: an error that ends an engine as a bundle run meets it: a progress bar half-way, MONAI's StatsHandler
#: logger (made when the trainer is built, after ``check_run``) logging it with its traceback, MONAI's wrapper
ENDED_BY = r"""
import sys
from monai.apps.utils import get_logger
from tqdm import tqdm
from cggm_seg.errors import UserError
from cggm_seg.preflight import check_run
check_run({}, {})
tqdm(total=2, desc="Epoch [3/4]").update(1)
logger = get_logger("monai.handlers.StatsHandler")
try:
    try:
        if sys.argv[1] == "mistake":
            raise UserError("checkpoint: cannot write /run/model.pt: No space left on device")
        raise ValueError("a bug")
    except ValueError as err:
        raise RuntimeError("Failed to evaluate") from err
except RuntimeError as err:
    logger.exception(f"Exception: {err}")
    raise
"""


@pytest.mark.parametrize("error", ["mistake", "bug"])
def test_a_users_mistake_that_ends_a_run_is_one_line_last_and_logged_without_traceback(error):
    result = subprocess.run(
        [sys.executable, "-c", ENDED_BY, error], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    if error == "bug":  # anything else keeps its tracebacks
        assert "Traceback" in result.stdout
        assert result.stderr.splitlines()[-1] == "RuntimeError: Failed to evaluate"
        return
    assert result.stdout.splitlines()[-1].endswith(" - Exception: Failed to evaluate")
    assert "Traceback" not in result.stdout + result.stderr
    bar, line = result.stderr.splitlines()[-2:]
    assert "Epoch [3/4]" in bar  # closed before the line, not drawn again after it
    assert line == "error: checkpoint: cannot write /run/model.pt: No space left on device"
