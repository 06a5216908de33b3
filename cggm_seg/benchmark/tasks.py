"""The benchmark's tasks and methods: what data each task trains on, how its bundle is configured,
how its validation and test scores are read, and which balancing methods are compared.

Every run trains and evaluates through the task's own MONAI bundle (``train.json`` and
``evaluate.json`` parsed by ``monai.bundle.ConfigParser``), changed only by config overrides: what
is benchmarked is what a user runs. The overrides shorten the schedule and point the bundle at the
synthetic data. Each seed draws its own data set (data seed = training seed), so a seed's runs
are paired: every method sees the same data and the same initial weights.

Both tasks are built so that joint training can leave accuracy on the table: one modality is a
fast but partial shortcut, another is needed for the rest and is slower to learn. Whether that
headroom is real is measured (:func:`headroom` in :mod:`cggm_seg.benchmark.aggregation`), not assumed.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from cggm_seg.benchmark.stats import classification_collapsed, regression_collapsed, segmentation_collapsed
from cggm_seg.bundle import bundle_dir, select_entries
from cggm_seg.errors import UserError
from cggm_seg.metrics.score_handler import BratsScoreHandler
from cggm_seg.metrics.summaries import summarise

#: the bundles' handlers that only print to the console (by config id); disabled in benchmark runs
CONSOLE_HANDLERS = ("train#stats", "train#progress_bar", "validate#stats")
#: the paper's estimators, pinned so the paper's rows stay the paper's whatever a bundle defaults to
PAPER_ESTIMATORS: Mapping[str, Any] = {
    "utilisation": "metric",
    "utilisation_momentum": 0.0,
    "improvement_window": 1,
    "coefficient_rule": "paper",
    "direction_scale": "absolute",
    "apply_to": "gradient",
}
#: what every task's robust rows share; each task adds its soft utilisation (``Task.robust``)
ROBUST_ESTIMATORS: Mapping[str, Any] = {
    "utilisation_momentum": 0.9,
    "improvement_window": 8,
    "coefficient_rule": "level",
    "direction_scale": "relative",
}
#: Adam divides a constant gradient scale away, so the sequence tasks scale the update instead
ROBUST_SEQUENCE_ESTIMATORS: Mapping[str, Any] = {**ROBUST_ESTIMATORS, "apply_to": "update"}
#: the strong direction rows' ``lambda``: with ``direction_scale: relative`` the term is ``L.detach() L_gm``
STRONG_LAMBDA = 1.0
#: the held-out splits every run is scored on: ``val`` picks the defaults, ``test`` reports them
SPLITS = ("val", "test")


@dataclass(frozen=True)
class Variant:
    """One balancing method with its settings, as a row of the benchmark tables; ``settings`` are entries
    of the method's block in the bundle (``{"lambda": 0.2}`` for ``cggm#lambda``), ``summary`` explains the
    row on the page. ``init_from`` names the variant whose final weak-modality encoder initialises this
    one (the pre-trained-encoder oracle)."""

    name: str
    method: str
    settings: Mapping[str, Any]
    summary: str
    init_from: str | None = None


def variant_overrides(variant: Variant, seed: int) -> dict[str, Any]:
    """The variant's method and its settings, as a user overrides them (``--cggm#lambda 0.2``)."""
    overrides: dict[str, Any] = {"modulation": variant.method, "seed": seed}
    overrides.update({f"{variant.method}#{key}": value for key, value in variant.settings.items()})
    return overrides


class Task:
    """A benchmark task: data with a shortcut modality and a weak one (synthetic here, a user's in
    :mod:`cggm_seg.benchmark.own_data`), a bundle and the overrides it runs with, held-out scores."""

    name: ClassVar[str]
    bundle: ClassVar[str]
    modalities: ClassVar[tuple[str, ...]]
    dominant: ClassVar[str]  # the shortcut: fast to learn, right only on part of the task
    weak: ClassVar[str]  # needed for the rest of the task, slower to learn
    paper_lambda: ClassVar[float]  # the paper's lambda for this kind of data set
    robust: ClassVar[Mapping[str, Any]]  # the estimator settings of the "robust" CGGM rows
    score_key: ClassVar[str]
    score_label: ClassVar[str]
    score_keys: ClassVar[tuple[str, ...]]  # the scores the tables show, score_key first
    val_metric: ClassVar[str]  # the bundle's validation key metric, recorded as the training curve
    train_data_id: ClassVar[str]  # the bundle's config id of the training cases, counted by the plan
    data_id: ClassVar[str]  # the bundle's config id of the file that says which data a run reads

    def __init__(self, setting: Mapping[str, Any], bundles_root: Path | None = None) -> None:
        self.setting = dict(setting)
        self.configs = (bundles_root / self.bundle if bundles_root else bundle_dir(self.bundle)) / "configs"

    @property
    def train_config(self) -> Path:
        return self.configs / "train.json"

    @property
    def eval_config(self) -> Path:
        return self.configs / "evaluate.json"

    def variants(self) -> dict[str, Variant]:
        """Every method the benchmark knows, with the settings it uses on this task.

        The CGGM rows are the paper's ablation (magnitude only, direction only, both) with the paper's
        estimators and with the robust ones (:attr:`robust`), all with the bundle's ``rho`` and the
        paper's ``lambda``; two more rows give the direction term ``lambda`` :data:`STRONG_LAMBDA`
        (robust estimators, whose relative scale makes the term ``lambda L.detach() L_gm``), the
        remedy closest to pre-training the weak encoder on its own head. OGM-GE's ``alpha`` and the
        MSLR factor are set once here, not tuned.
        """
        d, w, lam, robust = self.dominant, self.weak, self.paper_lambda, dict(self.robust)
        ablation = {
            "magnitude": {"lambda": 0.0},
            "direction": {"magnitude": False, "lambda": lam},
            "both": {"lambda": lam},
        }
        variants = [
            Variant("joint", "none", {}, "joint training: no balancing"),
            Variant(
                "unimodal_weak", "unimodal", {"modality": w}, f"trained on the weak modality ({w}) alone"
            ),
            Variant(
                "oracle",
                "none",
                {},
                f"joint training from the {w} encoder of unimodal_weak",
                init_from="unimodal_weak",
            ),
        ]
        for part, settings in ablation.items():
            variants.append(
                Variant(
                    f"cggm_{part}",
                    "cggm",
                    {**settings, **PAPER_ESTIMATORS},
                    f"CGGM {part}, the paper's estimators (metric, step-to-step, (S-d)/S)",
                )
            )
            variants.append(
                Variant(
                    f"cggm_{part}_robust", "cggm", {**settings, **robust}, f"CGGM {part}, robust estimators"
                )
            )
        for part in ("direction", "both"):
            variants.append(
                Variant(
                    f"cggm_{part}_robust_strong",
                    "cggm",
                    {**ablation[part], **robust, "lambda": STRONG_LAMBDA},
                    f"CGGM {part}, robust estimators, lambda {STRONG_LAMBDA}",
                )
            )
        variants += [
            Variant("ogm_ge", "ogm_ge", {"alpha": 0.5}, "OGM-GE, M-modality form, alpha 0.5, with noise"),
            Variant("mslr", "mslr", {"lr_scales": {d: 0.5}}, f"modality-specific learning rates: {d} x 0.5"),
        ]
        return {v.name: v for v in variants}

    def collapsed(self, scores: Mapping[str, float]) -> bool:
        """Whether a run's test scores show a collapse (a region at Dice 0, accuracy at chance)."""
        raise NotImplementedError

    def data_dir(self, work: Path, data_seed: int) -> Path | None:
        """Where :meth:`prepare` writes the data set of one seed; None where the data is the user's."""
        return work / self.name / "data" / f"seed{data_seed}"

    def prepare(self, data_dir: Path, data_seed: int) -> None:
        """Write the synthetic data set of one seed under ``data_dir``."""
        raise NotImplementedError

    def task_overrides(self, data_dir: Path | None) -> dict[str, Any]:
        """What the task changes in its bundle, as a user's ``--ID VALUE`` would: where the data is, the
        schedule, the sizes (a user's data set: the user's own, :mod:`cggm_seg.benchmark.own_data`)."""
        raise NotImplementedError

    def run_overrides(self, run_dir: Path) -> dict[str, Any]:
        """What every benchmark run sets: its own output folder, a fresh start, the held-out splits."""
        raise NotImplementedError

    def train_overrides(self, data_dir: Path | None, run_dir: Path) -> dict[str, Any]:
        """The bundle overrides of a run: the task's, then the run's."""
        return {**self.task_overrides(data_dir), **self.run_overrides(run_dir)}

    def eval_overrides(self, data_dir: Path | None, run_dir: Path, split: str) -> dict[str, Any]:
        """Evaluate the final weights of ``run_dir`` on ``split`` (one of :data:`SPLITS`)."""
        raise NotImplementedError

    def scores(self, parser: Any, evaluator: Any) -> dict[str, float]:
        """The held-out scores after ``evaluator.run()``."""
        raise NotImplementedError

    def describe(self) -> str:
        """One paragraph for the docs: data, imbalance, model, schedule."""
        raise NotImplementedError


@dataclass(frozen=True)
class BratsData:
    """Phantom settings: the imbalance knobs are per-sequence noise and lesion contrast.

    T1ce is clean and its lesion contrast raised: it shows the enhancing rim and the necrosis, i.e.
    the tumour core (TC, ET), at once, but hardly the oedema (`data_prep.synth_brats` intensities).
    FLAIR and T2 show the whole tumour (WT) under heavy noise, T1 barely. So T1ce is a fast shortcut
    for two regions, and the noisy sequences, slower to learn, are needed for the third.
    """

    noise: Mapping[str, float] = field(
        default_factory=lambda: {"flair": 0.35, "t1": 0.35, "t2": 0.35, "t1ce": 0.02}
    )
    contrast: Mapping[str, float] = field(default_factory=lambda: {"t1ce": 1.5})
    texture: tuple[str, ...] = ()
    misplaced: Mapping[str, float] = field(default_factory=dict)


class BratsTask(Task):
    """Synthetic BraTS phantoms: T1ce a clean shortcut for the tumour core, FLAIR needed for the oedema."""

    name = "brats"
    bundle = "brats_cggm"
    modalities = ("flair", "t1", "t1ce", "t2")
    dominant = "t1ce"
    weak = "flair"
    paper_lambda = 0.1
    robust: ClassVar[Mapping[str, Any]] = {"utilisation": "soft", **ROBUST_ESTIMATORS}
    score_key = "dice_mean"
    score_label = "mean Dice (WT, TC, ET)"
    score_keys = ("dice_mean", "dice_wt", "dice_tc", "dice_et", "hd95_mean")
    val_metric = "val_mean_dice"
    train_data_id = "train#dataset#data"
    data_id = "datalist"

    @property
    def data(self) -> BratsData:
        """The phantoms' :class:`BratsData`: its defaults, changed by the setting's ``data`` entries."""
        return BratsData(**self.setting.get("data", {}))

    #: datalist folds: fold 0 is the test split, fold 1 the validation split, the others train
    FOLDS = {"test": 0, "val": 1}

    def collapsed(self, scores: Mapping[str, float]) -> bool:
        return segmentation_collapsed({k: scores[k] for k in ("dice_wt", "dice_tc", "dice_et")})

    def prepare(self, data_dir: Path, data_seed: int) -> None:
        from data_prep.brats_datalist import write_datalist
        from data_prep.synth_brats import write_brats_dataset

        s, data = self.setting, self.data
        write_brats_dataset(
            data_dir,
            s["cases"],
            s["size"],
            data_seed,
            noise=dict(data.noise),
            contrast=dict(data.contrast),
            texture=data.texture,
            misplaced=dict(data.misplaced),
        )
        write_datalist(data_dir, data_dir / "datalist.json", s["folds"], data_seed)

    def task_overrides(self, data_dir: Path | None) -> dict[str, Any]:
        s = self.setting
        return {
            "dataset_dir": str(data_dir),
            "epochs": s["epochs"],
            "val_interval": s["val_interval"],
            "warmup_epochs": s["warmup_epochs"],
            "batch_size": s["batch_size"],
            "roi_size": [s["size"]] * 3,
            "num_workers": 0,
            "data_cache": "memory",
            "learning_rate": s["learning_rate"],
            "head_learning_rate": s["head_learning_rate"],
            "network_def#channels": list(s["channels"]),
        }

    def run_overrides(self, run_dir: Path) -> dict[str, Any]:
        """The split is resolved by the bundle from its own ``datalist``, the task's or the user's."""
        split = {
            "_target_": f"{__name__}.held_out_split",
            "datalist": "@datalist",
            "dataset_dir": "@dataset_dir",
        }
        return {"output_dir": str(run_dir), "split": split, "resume": False}

    def eval_overrides(self, data_dir: Path | None, run_dir: Path, split: str) -> dict[str, Any]:
        return {
            **self.train_overrides(data_dir, run_dir),
            "eval_fold": self.FOLDS[split],
            "checkpoint": str(run_dir / "checkpoint_final.pt"),
            "eval_dir": str(run_dir / f"eval_{split}"),
            "overwrite": True,
        }

    def scores(self, parser: Any, evaluator: Any) -> dict[str, float]:
        handlers = parser.get_parsed_content("validate#handlers")
        handler = next(h for h in handlers if isinstance(h, BratsScoreHandler))
        summary = summarise(handler.rows)
        return {key: summary[key] for key in self.score_keys}

    def describe(self) -> str:
        s, folds = self.setting, self.setting["folds"]
        noise = ", ".join(f"{k} {v}" for k, v in self.data.noise.items())
        contrast = ", ".join(f"{k} x{v}" for k, v in self.data.contrast.items())
        return (
            f"{s['cases']} synthetic BraTS-2021-format phantoms of {s['size']}^3 voxels per seed "
            f"(`cggm-seg synth brats`, data seed = seed), noise {noise}, lesion contrast {contrast}: "
            f"T1ce shows the tumour core (TC, ET) cleanly but hardly the oedema; FLAIR and T2 show the whole "
            f"tumour (WT) under heavy noise, T1 barely. {folds} folds "
            f"of {s['cases'] // folds} cases: fold 0 is the test split, fold 1 the validation split, "
            f"the rest train. Bundle `brats_cggm` as shipped (SGD with momentum, DiceFocal loss, "
            f"MultiModalUNet3D, light heads) with channels {tuple(s['channels'])}, batch "
            f"{s['batch_size']}, {s['epochs']} epochs ({s['warmup_epochs']} of lr warm-up), whole-volume "
            f"crops, learning rate {s['learning_rate']} / head learning rate {s['head_learning_rate']} "
            f"for every method, validation every {s['val_interval']} epochs."
        )


def held_out_split(datalist: str, dataset_dir: str) -> list[list[dict]]:
    """The BraTS tasks' ``split``: (training, validation) entries, fold 1 validating, neither it nor the
    test fold 0 training; a datalist without both and a third fold is one line naming it."""
    entries = select_entries(datalist, dataset_dir)
    folds = {int(e.get("fold", -1)) for e in entries}
    held_out = set(BratsTask.FOLDS.values())
    if not held_out < folds:
        raise UserError(
            f"datalist: the benchmark tests on fold 0, validates on fold 1 and trains on the others; "
            f"{datalist} has folds {sorted(folds)}: write it with `cggm-seg prepare brats --folds 5`"
        )
    train = [e for e in entries if int(e.get("fold", -1)) not in held_out]
    return [train, [e for e in entries if int(e.get("fold", -1)) == BratsTask.FOLDS["val"]]]


class SequenceTask(Task):
    """A task on one of the sequence bundles: a pickle in the MulT layout, scored by ``evaluate.json``.

    Text is the easy modality and audio the weak one on both; ``lambda`` 0.2 is the paper's for MOSI.
    """

    modalities = ("text", "audio", "vision")
    dominant = "text"
    weak = "audio"
    paper_lambda = 0.2
    train_data_id = "train#dataset"
    data_id = "data_path"
    file_name: ClassVar[str]

    def _data_path(self, data_dir: Path) -> Path:
        return data_dir / self.file_name

    def _write(self, path: Path, data_seed: int) -> None:
        raise NotImplementedError

    def prepare(self, data_dir: Path, data_seed: int) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self._write(self._data_path(data_dir), data_seed)

    def task_overrides(self, data_dir: Path | None) -> dict[str, Any]:
        s = self.setting
        return {
            "data_path": str(self._data_path(data_dir)),
            "epochs": s["epochs"],
            "val_interval": s["val_interval"],
            "batch_size": s["batch_size"],
            "d_model": s["d_model"],
            "num_heads": s["num_heads"],
            "encoder_layers": s["encoder_layers"],
            "fusion_layers": s["fusion_layers"],
            "num_workers": 0,
        }

    def run_overrides(self, run_dir: Path) -> dict[str, Any]:
        return {"output_dir": str(run_dir), "overwrite": True}

    def eval_overrides(self, data_dir: Path | None, run_dir: Path, split: str) -> dict[str, Any]:
        return {
            **self.train_overrides(data_dir, run_dir),
            "checkpoint": str(run_dir / "checkpoint_final.pt"),
            "split": {"val": "valid", "test": "test"}[split],
        }

    def scores(self, parser: Any, evaluator: Any) -> dict[str, float]:
        metrics = evaluator.state.metrics["val"]
        return {key: float(metrics[key]) for key in self.score_keys}


class ShortcutTask(SequenceTask):
    """Synthetic 4-class IEMOCAP-layout data: text a partial shortcut, audio always right but weak."""

    name = "shortcut"
    bundle = "iemocap_cggm"
    robust: ClassVar[Mapping[str, Any]] = {"utilisation": "soft", **ROBUST_SEQUENCE_ESTIMATORS}
    score_key = "accuracy"
    score_label = "accuracy"
    score_keys = ("accuracy", "f1_weighted")
    val_metric = "val_accuracy"
    file_name = "iemocap_shortcut.pkl"
    num_classes = 4

    def collapsed(self, scores: Mapping[str, float]) -> bool:
        return classification_collapsed(scores["accuracy"], self.num_classes)

    @property
    def spec(self) -> Any:
        """The data set's :class:`data_prep.synth_shortcut.ShortcutSpec`: its defaults, changed by the
        setting's ``data`` entries."""
        from data_prep.synth_shortcut import ShortcutSpec

        return ShortcutSpec(**self.setting.get("data", {}))

    def _write(self, path: Path, data_seed: int) -> None:
        from data_prep.synth_shortcut import write_shortcut_iemocap

        write_shortcut_iemocap(
            path, self.setting["n"], data_seed, self.spec, force=True, held_out=self.setting.get("held_out")
        )

    def describe(self) -> str:
        s, spec = self.setting, self.spec
        held_out = s.get("held_out") or "a third as many"
        signs = (
            " with a random sign at every step, so only its energy shows the class"
            if spec.audio_random_sign
            else ""
        )
        return (
            f"Synthetic 4-class data in the IEMOCAP MulT layout (`data_prep.synth_shortcut`, {s['n']} "
            f"training samples and {held_out} each for validation and test per seed, data seed = "
            f"seed): text shows the true class in {spec.shortcut_rate:.0%} of the samples at strength "
            f"{spec.text_strength} and a wrong class otherwise (a fast, partial shortcut); audio always "
            f"shows the true class at strength {spec.audio_strength} over {spec.audio_length} steps"
            f"{signs} (complete, slow to learn); vision at {spec.vision_strength}. Bundle `iemocap_cggm` as "
            f"shipped (Adam, cross-entropy, gradient clipping 0.8, rho 1.3) with d_model {s['d_model']}, "
            f"{s['encoder_layers']} encoder / {s['fusion_layers']} fusion layers, batch {s['batch_size']}, "
            f"{s['epochs']} epochs, validation every {s['val_interval']} epochs; the final weights are "
            f"scored with the bundle's `evaluate.json`."
        )


class MosiTask(SequenceTask):
    """Synthetic CMU-MOSI (MulT layout) where text carries the sentiment strongly, audio and vision weakly."""

    name = "mosi"
    bundle = "mosi_cggm"
    robust: ClassVar[Mapping[str, Any]] = {"utilisation": "loss", **ROBUST_SEQUENCE_ESTIMATORS}
    score_key = "acc2"
    score_label = "Acc-2"
    score_keys = ("acc2", "f1_weighted", "mae", "corr")
    val_metric = "val_acc2"
    file_name = "mosi_data_noalign.pkl"

    def collapsed(self, scores: Mapping[str, float]) -> bool:
        return regression_collapsed(scores["acc2"])

    def _write(self, path: Path, data_seed: int) -> None:
        from data_prep.synth_mosi import make_mosi

        path.write_bytes(pickle.dumps(make_mosi("mult", self.setting["n"], data_seed), protocol=4))

    def describe(self) -> str:
        s = self.setting
        return (
            f"Synthetic CMU-MOSI pickle in the MulT layout (`cggm-seg synth mosi`, {s['n']} training "
            f"samples, a third as many each for valid and test, data seed = seed): the sentiment is "
            f"written into text strongly, audio at half and vision at a quarter of that strength. Bundle "
            f"`mosi_cggm` as shipped (Adam, L1 loss, gradient clipping) with d_model {s['d_model']}, "
            f"{s['encoder_layers']} encoder / {s['fusion_layers']} fusion layers, batch {s['batch_size']}, "
            f"{s['epochs']} epochs (Acc-2 over non-zero labels)."
        )


TASKS: dict[str, type[Task]] = {"brats": BratsTask, "shortcut": ShortcutTask, "mosi": MosiTask}
#: the tasks `cggm-seg benchmark balance` runs by default: the two built to have headroom
DEFAULT_TASKS = ("brats", "shortcut")

#: the shortcut task's audio: complete but slow to learn (the class is in each step's energy, not its mean)
SHORTCUT_DATA = {"audio_random_sign": True, "audio_strength": 0.4}

#: per task, the ``--quick`` (CI smoke test) and the full (documented) settings
SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "brats": {
        "quick": {
            "size": 16,
            "cases": 8,
            "folds": 4,
            "channels": (4, 8, 16, 32),
            "epochs": 2,
            "val_interval": 1,
            "warmup_epochs": 1,
            "batch_size": 2,
            "learning_rate": 0.05,
            "head_learning_rate": 0.03,
            "cost_epochs": 2,
        },
        "full": {
            "size": 16,
            "cases": 30,
            "folds": 5,
            "channels": (8, 16, 32, 64),
            "epochs": 90,
            "val_interval": 9,
            "warmup_epochs": 1,
            "batch_size": 2,
            "learning_rate": 0.05,
            "head_learning_rate": 0.03,
            "cost_epochs": 6,
        },
    },
    "shortcut": {
        "quick": {
            "n": 48,
            "epochs": 2,
            "val_interval": 1,
            "batch_size": 16,
            "d_model": 8,
            "num_heads": 2,
            "encoder_layers": 1,
            "fusion_layers": 1,
            "data": SHORTCUT_DATA,
            "cost_epochs": 2,
        },
        "full": {
            "n": 400,
            "held_out": 800,
            "epochs": 160,
            "val_interval": 16,
            "batch_size": 64,
            "d_model": 16,
            "num_heads": 2,
            "encoder_layers": 1,
            "fusion_layers": 1,
            "data": SHORTCUT_DATA,
            "cost_epochs": 8,
        },
    },
    "mosi": {
        "quick": {
            "n": 48,
            "epochs": 2,
            "val_interval": 1,
            "batch_size": 16,
            "d_model": 8,
            "num_heads": 2,
            "encoder_layers": 1,
            "fusion_layers": 1,
            "cost_epochs": 2,
        },
        "full": {
            "n": 600,
            "epochs": 10,
            "val_interval": 2,
            "batch_size": 32,
            "d_model": 16,
            "num_heads": 2,
            "encoder_layers": 2,
            "fusion_layers": 1,
            "cost_epochs": 2,
        },
    },
}
