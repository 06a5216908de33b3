"""A user's data set as a benchmark task: ``cggm-seg benchmark balance --bundle NAME --dataset_dir D``.

The task of the bundle's kind (its scores, held-out splits and methods: :class:`BratsTask`,
:class:`MosiTask`, the IEMOCAP layout of :class:`ShortcutTask`) with the user's data and overrides in
place of the synthetic data and the built-in schedule. Its runs go through the same runner as the
built-in tasks and drive the bundle as ``python -m monai.bundle run --dataset_dir D --ID VALUE`` does:
what the user does not override is the bundle's as shipped. Every seed trains on the same data; the
seeds change the initial weights and the order of the data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from monai.bundle import ConfigParser

from cggm_seg.benchmark.tasks import SPLITS, TASKS, BratsTask, MosiTask, ShortcutTask, Task, variant_overrides
from cggm_seg.errors import UserError

#: epochs of each cost-only run on a user's data set (``--jobs`` above 1): one epoch of the bundle's length
COST_EPOCHS = 1


class OwnData(Task):
    """Mixed in before a task class: the user's overrides are the task's, and nothing is written."""

    held_out: ClassVar[str]  # which part of the data trains, validates and tests, for the page

    def __init__(self, setting: Mapping[str, Any], bundles_root: Path | None = None) -> None:
        super().__init__(setting, bundles_root)
        self.modalities = tuple(self.setting["modalities"])
        self.weak, self.dominant = self.setting["weak"], self.setting["dominant"]

    def data_dir(self, work: Path, data_seed: int) -> Path | None:
        return None

    def task_overrides(self, data_dir: Path | None) -> dict[str, Any]:
        return dict(self.setting["overrides"])

    def describe(self) -> str:
        s, data = self.setting, self.setting["data_file"]
        overrides = ", ".join(f"`{key}={json.dumps(value)}`" for key, value in s["overrides"].items())
        digest = f" (sha256 {data['sha256'][:16]})" if data["sha256"] else ""
        return (
            f"Bundle `{self.bundle}` with {overrides}; everything else as the bundle ships it. Data: "
            f"`{self.data_id}` is `{data['path']}`{digest}; {self.held_out}. Every seed trains on these "
            f"same data: the seeds change the initial weights and the order of the data. Weak modality "
            f"(headroom check, `unimodal_weak`, `oracle`): {self.weak}; dominant (`mslr`): {self.dominant}."
        )


class OwnBrats(OwnData, BratsTask):
    name = "brats_cggm"
    held_out = "its fold 0 is the test split, fold 1 the validation split, the other folds train"


class OwnMosi(OwnData, MosiTask):
    name = "mosi_cggm"
    held_out = "its `train` split trains, `valid` validates and `test` reports"


class OwnIemocap(OwnData, ShortcutTask):
    name = "iemocap_cggm"
    held_out = OwnMosi.held_out


#: bundle -> its task on a user's data set
OWN_DATA_TASKS: dict[str, type[Task]] = {cls.bundle: cls for cls in (OwnBrats, OwnMosi, OwnIemocap)}
#: every task a benchmark run can belong to, by name: how a run's process rebuilds it
TASK_TYPES: dict[str, type[Task]] = {**TASKS, **{cls.name: cls for cls in OWN_DATA_TASKS.values()}}


def _parser(task: Task, overrides: Mapping[str, Any]) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(task.train_config), str(task.eval_config)])
    parser.update(dict(overrides))
    return parser


def _modality(name: str | None, default: str, modalities: Sequence[str], option: str) -> str:
    """``name``, or the task's default, checked against the bundle's ``modalities`` (which ``--set`` may
    change)."""
    chosen = default if name is None else name
    if chosen not in modalities:
        raise UserError(f"{option}: {chosen!r} is not one of the bundle's modalities {list(modalities)}")
    return chosen


def _data_file(task: Task, parser: ConfigParser, option: str) -> dict[str, Any]:
    """The file or folder the bundle reads the data from, with the sha256 of a file: a later run of the
    benchmark on other data in the same work folder is refused."""
    path = Path(parser.get_parsed_content(task.data_id)).absolute()
    if not path.exists():
        raise UserError(f"{option}: the bundle's {task.data_id} {path} does not exist")
    if not path.is_file():
        return {"path": str(path), "sha256": None}
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path), "sha256": digest.hexdigest()}


def _benchmark_ids(task: Task, methods: Sequence[str]) -> set[str]:
    """The config ids every run sets itself: its folders and held-out splits, the methods' settings."""
    empty = type(task)({**task.setting, "overrides": {}})
    ids = {key for split in SPLITS for key in empty.eval_overrides(None, Path("run"), split)}
    return ids | {key for m in methods for key in variant_overrides(task.variants()[m], 0)}


def own_data_task(
    bundle: str,
    dataset_dir: Path,
    datalist: Path | None,
    sets: Sequence[tuple[str, Any]],
    methods: Sequence[str],
    weak: str | None = None,
    dominant: str | None = None,
) -> Task:
    """The task of ``bundle`` on the user's data with the user's overrides (``--set ID=VALUE``), every
    option checked first: a mistake is one line naming the option, before anything runs."""
    cls = OWN_DATA_TASKS[bundle]
    if not dataset_dir.is_dir():
        raise UserError(f"--dataset_dir: {dataset_dir} is not a folder")
    given = {"dataset_dir": str(dataset_dir.absolute())}
    if datalist is not None:
        given["datalist"] = str(datalist.absolute())
    draft = cls({"overrides": {}, "modalities": cls.modalities, "weak": cls.weak, "dominant": cls.dominant})
    shipped = _parser(draft, {})
    for key, _ in sets:
        if key in given:
            raise UserError(f"--set {key}: give it as --{key}")
        if key not in shipped:
            raise UserError(f"--set {key}: the bundle {bundle} has no config id {key!r}")
    if "datalist" in given and "datalist" not in shipped:
        raise UserError(f"--datalist: the bundle {bundle} reads no datalist; its data is in --dataset_dir")
    overrides = {**given, **dict(sets)}
    parser = _parser(draft, overrides)
    modalities = list(parser.get_parsed_content("modalities"))
    setting = {
        "overrides": overrides,
        "modalities": modalities,
        "weak": _modality(weak, cls.weak, modalities, "--weak-modality"),
        "dominant": _modality(dominant, cls.dominant, modalities, "--dominant-modality"),
        "data_file": _data_file(draft, parser, "--datalist" if "datalist" in given else "--dataset_dir"),
        "cost_epochs": COST_EPOCHS,
    }
    if setting["weak"] == setting["dominant"]:
        raise UserError(
            f"--weak-modality: {setting['weak']} is also the dominant modality; give another "
            "--weak-modality or --dominant-modality"
        )
    task = cls(setting)
    reserved = sorted(_benchmark_ids(task, methods) & {key for key, _ in sets})
    if reserved:
        raise UserError(
            f"--set {reserved[0]}: every benchmark run sets it (its output folder, the held-out splits or "
            "a method's setting); leave it out"
        )
    return task
