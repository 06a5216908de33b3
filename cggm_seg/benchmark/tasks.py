"""The benchmark's tasks and methods: what data each task trains on, how its bundle is configured,
how its held-out score is read, and which balancing methods are compared.

Every run trains and evaluates through the task's own MONAI bundle (``train.json`` and
``evaluate.json`` parsed by ``monai.bundle.ConfigParser``), changed only by config overrides:
what is benchmarked is what a user runs. The overrides shorten the schedule, point the bundle at
the synthetic data, turn off console output and validation during training (no model is picked on
validation data: the final weights are evaluated on a held-out split).
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from cggm_seg.bundle import bundle_dir
from cggm_seg.metrics.score_handler import BratsScoreHandler
from cggm_seg.metrics.scoring import summarise

#: train handlers that only print to the console; dropped in benchmark runs
CONSOLE_HANDLERS = ("StatsHandler", "ignite.handlers.ProgressBar")


@dataclass(frozen=True)
class Variant:
    """One balancing method with its settings, as a row of the benchmark tables."""

    name: str
    method: str
    settings: Mapping[str, Any]
    summary: str


class Task:
    """A benchmark task: synthetic data with one easy modality, a bundle, a held-out score."""

    name: ClassVar[str]
    bundle: ClassVar[str]
    modalities: ClassVar[tuple[str, ...]]
    dominant: ClassVar[str]  # the modality made easy to learn from
    paper_lambda: ClassVar[float]  # the paper's lambda for this dataset, whatever the bundle's default
    score_key: ClassVar[str]
    score_label: ClassVar[str]
    score_keys: ClassVar[tuple[str, ...]]  # the scores the tables show, score_key first

    def __init__(self, setting: Mapping[str, Any]) -> None:
        self.setting = dict(setting)

    @property
    def train_config(self) -> Path:
        return bundle_dir(self.bundle) / "configs" / "train.json"

    @property
    def eval_config(self) -> Path:
        return bundle_dir(self.bundle) / "configs" / "evaluate.json"

    @classmethod
    def variants(cls) -> dict[str, Variant]:
        """Every method the benchmark knows, with the settings it uses on this task.

        CGGM variants keep the bundle's ``rho`` and the paper's ``lambda`` and change one thing
        each. The OGM-GE ``alpha`` and the MSLR factor are set once here, not tuned: the dominant
        modality's encoder learns at half the rate under MSLR.
        """
        d, lam = cls.dominant, cls.paper_lambda
        variants = (
            Variant("joint", "none", {}, "joint training: no balancing"),
            Variant("cggm", "cggm", {"direction": "gradient", "lam": lam},
                    "CGGM as in the paper: gradient direction, the paper's lambda"),
            Variant("cggm_weights", "cggm", {"direction": "weights", "lam": lam},
                    "CGGM with the authors' code's weight-cosine direction"),
            Variant("cggm_magnitude", "cggm", {"lam": 0.0}, "CGGM magnitude modulation only (lambda = 0)"),
            Variant("cggm_ema", "cggm", {"direction": "gradient", "lam": lam, "utilisation_momentum": 0.9},
                    "CGGM (gradient) on an EMA of the utilisation (momentum 0.9)"),
            Variant("ogm_ge", "ogm_ge", {"alpha": 0.5}, "OGM-GE, M-modality form, alpha 0.5, with noise"),
            Variant("mslr", "mslr", {"lr_scales": {d: 0.5}}, f"modality-specific learning rates: {d} x 0.5"),
            Variant("unimodal", "unimodal", {"modality": d}, f"trained on {d} alone"),
        )
        return {v.name: v for v in variants}

    def prepare(self, data_dir: Path) -> None:
        """Write the synthetic data set under ``data_dir``."""
        raise NotImplementedError

    def train_overrides(self, data_dir: Path, run_dir: Path) -> dict[str, Any]:
        raise NotImplementedError

    def eval_overrides(self, data_dir: Path, run_dir: Path) -> dict[str, Any]:
        """Evaluate the final weights of ``run_dir`` on the held-out split."""
        raise NotImplementedError

    def scores(self, parser: Any, evaluator: Any) -> dict[str, float]:
        """The held-out scores after ``evaluator.run()``."""
        raise NotImplementedError

    def describe(self) -> str:
        """One paragraph for the docs: data, imbalance, model, schedule."""
        raise NotImplementedError


@dataclass(frozen=True)
class BratsData:
    """Phantom settings: the imbalance knob is per-sequence noise and contrast."""

    noise: Mapping[str, float] = field(
        default_factory=lambda: {"flair": 0.35, "t1": 0.35, "t2": 0.35, "t1ce": 0.02}
    )
    contrast: Mapping[str, float] = field(default_factory=lambda: {"t1ce": 1.5})
    data_seed: int = 0


class BratsTask(Task):
    """Synthetic BraTS phantoms where T1ce is clean and high-contrast and the others noisy."""

    name = "brats"
    bundle = "brats_cggm"
    modalities = ("flair", "t1", "t1ce", "t2")
    dominant = "t1ce"
    paper_lambda = 0.1
    score_key = "dice_mean"
    score_label = "mean Dice (WT, TC, ET)"
    score_keys = ("dice_mean", "dice_wt", "dice_tc", "dice_et", "hd95_mean")
    data = BratsData()

    def prepare(self, data_dir: Path) -> None:
        from data_prep.brats_datalist import write_datalist
        from data_prep.synth_brats import write_brats_dataset

        s = self.setting
        write_brats_dataset(
            data_dir,
            s["cases"],
            s["size"],
            self.data.data_seed,
            noise=dict(self.data.noise),
            contrast=dict(self.data.contrast),
        )
        write_datalist(data_dir, data_dir / "datalist.json", s["folds"], self.data.data_seed)

    def train_overrides(self, data_dir: Path, run_dir: Path) -> dict[str, Any]:
        s = self.setting
        return {
            "dataset_dir": str(data_dir),
            "output_dir": str(run_dir),
            "fold": 0,
            "resume": False,
            "epochs": s["epochs"],
            "val_interval": s["epochs"] + 1,
            "warmup_epochs": s["warmup_epochs"],
            "batch_size": s["batch_size"],
            "roi_size": [s["size"]] * 3,
            "num_workers": 0,
            "cache_rate": 1.0,
            "learning_rate": s["learning_rate"],
            "head_learning_rate": s["head_learning_rate"],
            "network_def#channels": list(s["channels"]),
        }

    def eval_overrides(self, data_dir: Path, run_dir: Path) -> dict[str, Any]:
        return {
            **self.train_overrides(data_dir, run_dir),
            "checkpoint": str(run_dir / "checkpoint_final.pt"),
            "eval_dir": str(run_dir / "eval"),
            "overwrite": True,
        }

    def scores(self, parser: Any, evaluator: Any) -> dict[str, float]:
        handlers = parser.get_parsed_content("eval_handlers")
        handler = next(h for h in handlers if isinstance(h, BratsScoreHandler))
        summary = summarise(handler.rows)
        return {key: summary[key] for key in self.score_keys}

    def describe(self) -> str:
        s = self.setting
        noise = ", ".join(f"{k} {v}" for k, v in self.data.noise.items())
        contrast = ", ".join(f"{k} x{v}" for k, v in self.data.contrast.items())
        return (
            f"{s['cases']} synthetic BraTS-2021-format phantoms of {s['size']}^3 voxels "
            f"(`cggm-seg synth brats`, data seed {self.data.data_seed}), noise {noise}, lesion contrast "
            f"{contrast}: T1ce is the easy sequence, but it does not show the oedema, so the whole "
            f"tumour needs FLAIR/T2. Datalist with {s['folds']} folds: fold 0 "
            f"({s['cases'] // s['folds']} cases) is held out and scored with the bundle's "
            f"`evaluate.json` (per-case BraTS Dice), the rest train. Bundle `brats_cggm` as shipped "
            f"(SGD with momentum, DiceFocal loss, MultiModalUNet3D, light heads) with channels "
            f"{tuple(s['channels'])}, batch {s['batch_size']}, {s['epochs']} epochs "
            f"({s['warmup_epochs']} of lr warm-up), whole-volume crops, and for this short schedule "
            f"learning rate {s['learning_rate']} / head learning rate {s['head_learning_rate']} "
            f"(the bundle's 0.01 / 0.006 times 5) for every method."
        )


class MosiTask(Task):
    """Synthetic CMU-MOSI (MulT layout) where text carries the sentiment strongly, audio and vision weakly."""

    name = "mosi"
    bundle = "mosi_cggm"
    modalities = ("text", "audio", "vision")
    dominant = "text"
    paper_lambda = 0.2
    score_key = "acc2"
    score_label = "Acc-2"
    score_keys = ("acc2", "f1_weighted", "mae", "corr")
    data_seed = 0

    def _data_path(self, data_dir: Path) -> Path:
        return data_dir / "mosi_data_noalign.pkl"

    def prepare(self, data_dir: Path) -> None:
        from data_prep.synth_mosi import make_mosi

        data_dir.mkdir(parents=True, exist_ok=True)
        data = make_mosi("mult", self.setting["n"], self.data_seed)
        self._data_path(data_dir).write_bytes(pickle.dumps(data, protocol=4))

    def train_overrides(self, data_dir: Path, run_dir: Path) -> dict[str, Any]:
        s = self.setting
        return {
            "data_path": str(self._data_path(data_dir)),
            "output_dir": str(run_dir),
            "overwrite": True,
            "epochs": s["epochs"],
            "val_interval": s["epochs"] + 1,
            "batch_size": s["batch_size"],
            "d_model": s["d_model"],
            "num_heads": s["num_heads"],
            "encoder_layers": s["encoder_layers"],
            "fusion_layers": s["fusion_layers"],
            "num_workers": 0,
        }

    def eval_overrides(self, data_dir: Path, run_dir: Path) -> dict[str, Any]:
        return {
            **self.train_overrides(data_dir, run_dir),
            "checkpoint": str(run_dir / "checkpoint_final.pt"),
            "split": "test",
        }

    def scores(self, parser: Any, evaluator: Any) -> dict[str, float]:
        metrics = evaluator.state.metrics["scores"]
        return {key: float(metrics[key]) for key in self.score_keys}

    def describe(self) -> str:
        s = self.setting
        return (
            f"Synthetic CMU-MOSI pickle in the MulT layout (`cggm-seg synth mosi`, {s['n']} training "
            f"samples, a third as many each for valid and test, data seed {self.data_seed}): the "
            f"sentiment is written into text strongly, audio at half and vision at a quarter of that "
            f"strength. Bundle `mosi_cggm` as shipped (Adam, L1 loss, gradient clipping) with "
            f"d_model {s['d_model']}, {s['encoder_layers']} encoder / {s['fusion_layers']} fusion "
            f"layers, "
            f"batch {s['batch_size']}, {s['epochs']} epochs; the final weights are scored on the test "
            f"split with the bundle's `evaluate.json` (Acc-2 over non-zero labels)."
        )


TASKS: dict[str, type[Task]] = {"brats": BratsTask, "mosi": MosiTask}

#: per task, the ``--quick`` (CI smoke test) and the full (documented) settings; the full BraTS one is
#: sized to finish with every method and 3 seeds in about 35 minutes on a shared 2-core CPU machine
SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "brats": {
        "quick": {"size": 16, "cases": 6, "folds": 3, "channels": (4, 8, 16, 32), "epochs": 2,
                  "warmup_epochs": 1, "batch_size": 2, "learning_rate": 0.05, "head_learning_rate": 0.03},
        "full": {"size": 32, "cases": 32, "folds": 4, "channels": (8, 16, 32, 64), "epochs": 12,
                 "warmup_epochs": 1, "batch_size": 2, "learning_rate": 0.05, "head_learning_rate": 0.03},
    },
    "mosi": {
        "quick": {"n": 48, "epochs": 2, "batch_size": 16, "d_model": 8, "num_heads": 2, "encoder_layers": 1,
                  "fusion_layers": 1},
        "full": {"n": 600, "epochs": 10, "batch_size": 32, "d_model": 16, "num_heads": 2, "encoder_layers": 2,
                 "fusion_layers": 1},
    },
}
