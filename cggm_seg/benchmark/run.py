"""One benchmark run: train a bundle with one balancing method and seed, then measure it.

It runs in a fresh child process (forked from a server that has already imported torch and MONAI),
so every run starts from the same allocator state and its peak memory is its own. Measured:

* step time — wall time of each ``SupervisedTrainer`` iteration (forward, loss, backward, the
  method's handlers, optimizer step), warm-up iterations dropped;
* peak memory above the level before training (CUDA allocator peak, or the peak resident set on a
  CPU; :class:`cggm_seg.benchmark.timing.PeakMemory`);
* utilisation/coefficient curves per iteration. Methods without heads of their own get a
  :class:`~cggm_seg.modulation.HeadMonitor`, which runs after the step timer has stopped and after the
  graph is freed, so it changes neither their step time nor their peak memory;
* held-out scores of the final weights with the bundle's ``evaluate.json``, modality reliance
  (:mod:`cggm_seg.metrics.reliance`) and the heads' held-out scores.

Runs that shared the machine with other runs (``--jobs`` > 1) mark themselves ``alone: False``; the
benchmark then takes step time and memory from short cost-only runs (:func:`measure_cost`) made alone.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser

from cggm_seg.benchmark.own_data import TASK_TYPES
from cggm_seg.benchmark.tasks import CONSOLE_HANDLERS, SPLITS, Task, Variant, variant_overrides
from cggm_seg.benchmark.timing import PeakMemory, StepTimer
from cggm_seg.io import write_atomic
from cggm_seg.metrics.reliance import head_scores, modality_reliance
from cggm_seg.modulation import HeadMonitor, ModalityHeadsHandler, keep_only_modality

#: per-iteration quantities kept as curves
CURVE_KINDS = ("utilisation", "coeff")


class CurveRecorder:
    """Copies the heads handler's per-modality utilisation and coefficients after every iteration."""

    def __init__(self, handler: ModalityHeadsHandler) -> None:
        self.handler = handler
        self.curves: dict[str, list[float]] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        for key, value in self.handler.latest.items():
            if key.split("/")[0] in CURVE_KINDS:
                self.curves.setdefault(key, []).append(value)


def bundle_parser(configs: Sequence[Path], overrides: dict[str, Any]) -> ConfigParser:
    """The bundle's config with ``overrides`` and its handlers that only print to the console disabled."""
    parser = ConfigParser()
    parser.read_config([str(c) for c in configs])
    parser.update(overrides)
    for handler in CONSOLE_HANDLERS:
        if handler in parser:
            parser[f"{handler}#_disabled_"] = True
    return parser


def _monitor(parser: ConfigParser) -> HeadMonitor:
    """A head monitor built from the bundle's own heads, head optimizer and utilisation metric."""
    content = parser.get_parsed_content
    return HeadMonitor(
        content("modulation_handler#encoders"),
        content("heads"),
        content("head_optimizer"),
        content("modulation_handler#metric"),
        modality_names=content("modalities"),
    )


def _batches(parser: ConfigParser, evaluator: Any) -> Iterator[tuple[Any, torch.Tensor]]:
    for batch in parser.get_parsed_content("validate#dataloader"):
        yield evaluator.prepare_batch(batch, evaluator.state.device, False)


class ValidationCurve:
    """The bundle's validation key metric after every validation run: the training curve of the report."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.epochs: list[int] = []
        self.values: list[float] = []
        self._trainer: Engine | None = None

    def attach(self, trainer: Engine, evaluator: Engine) -> None:
        self._trainer = trainer
        evaluator.add_event_handler(Events.COMPLETED, self)

    def __call__(self, evaluator: Engine) -> None:
        self.epochs.append(self._trainer.state.epoch)
        self.values.append(float(evaluator.state.metrics[self.metric]))


def load_encoder(network: torch.nn.Module, checkpoint: Path, encoder: str) -> int:
    """Copy encoder ``encoder``'s weights from ``checkpoint``'s network into ``network``; tensors copied."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["network"]
    prefix = encoder + "."
    subset = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    if not subset:
        raise RuntimeError(f"{checkpoint} has no weights of encoder {encoder!r}")
    network.get_submodule(encoder).load_state_dict(subset)
    return len(subset)


def evaluate_split(
    task: Task,
    variant: Variant,
    overrides: dict[str, Any],
    data_dir: Path | None,
    run_dir: Path,
    split: str,
    heads_handler: ModalityHeadsHandler,
    with_reliance: bool,
) -> dict[str, Any]:
    """Scores of the final weights and of the heads on ``split``; on request also the reliance."""
    parser = bundle_parser(
        [task.train_config, task.eval_config], {**task.eval_overrides(data_dir, run_dir, split), **overrides}
    )
    evaluator = parser.get_parsed_content("validate#evaluator")
    network = parser.get_parsed_content("network")
    encoders, names = heads_handler.encoder_names, heads_handler.modality_names
    if variant.method == "unimodal":  # the same blanking as in training, as a user's evaluation must do
        keep_only_modality(network, encoders, variant.settings["modality"], names)
    evaluator.run()
    result: dict[str, Any] = {"scores": task.scores(parser, evaluator)}
    result["head_scores"] = head_scores(
        network, heads_handler.heads, encoders, names, _batches(parser, evaluator), heads_handler.metric
    )
    if with_reliance:

        def evaluate() -> float:
            evaluator.run()
            return task.scores(parser, evaluator)[task.score_key]

        result["reliance"] = modality_reliance(network, encoders, names, evaluate).as_dict()
    return result


class _Training:
    """A run's trainer, built from the bundle with the variant's overrides and every probe attached."""

    def __init__(
        self,
        task: Task,
        variant: Variant,
        seed: int,
        data_dir: Path | None,
        run_dir: Path,
        schedule: dict[str, Any] | None = None,
        init_checkpoint: Path | None = None,
    ) -> None:
        self.overrides = variant_overrides(variant, seed)
        self.parser = bundle_parser(
            [task.train_config],
            {**task.train_overrides(data_dir, run_dir), **(schedule or {}), **self.overrides},
        )
        self.parser.get_parsed_content("initialize")
        self.trainer = self.parser.get_parsed_content("trainer")
        handler = self.parser.get_parsed_content("modulation_handler")
        self.device = torch.device(self.parser.get_parsed_content("device"))
        self.heads_handler = handler if isinstance(handler, ModalityHeadsHandler) else _monitor(self.parser)
        if init_checkpoint is not None:
            names = self.heads_handler.modality_names
            weak = self.heads_handler.encoder_names[names.index(task.weak)]
            load_encoder(self.trainer.network, init_checkpoint, weak)
        self.timer = StepTimer(self.device)
        self.timer.attach(self.trainer)
        if self.heads_handler is not handler:
            self.heads_handler.attach(self.trainer)
        self.recorder = CurveRecorder(self.heads_handler)
        self.recorder.attach(self.trainer)
        self.validation = ValidationCurve(task.val_metric)
        self.validation.attach(self.trainer, self.parser.get_parsed_content("validate#evaluator"))

    def run(self) -> float:
        """Train; the peak memory above the level before training, MiB."""
        with PeakMemory(self.device) as memory:
            self.trainer.run()
        return memory.mib


def train_and_measure(
    task: Task,
    variant: Variant,
    seed: int,
    data_dir: Path | None,
    run_dir: Path,
    init_checkpoint: Path | None = None,
    alone: bool = True,
) -> dict[str, Any]:
    """Train ``variant`` on ``task`` with ``seed`` in ``run_dir``; everything the benchmark reports.

    ``init_checkpoint``: a finished run whose weak-modality encoder initialises this one (the oracle).
    ``alone``: whether the run had the machine to itself, so that its step time and memory may be quoted.
    """
    started = time.perf_counter()
    training = _Training(task, variant, seed, data_dir, run_dir, init_checkpoint=init_checkpoint)
    peak_mib = training.run()
    train_s = time.perf_counter() - started
    splits = {
        split: evaluate_split(
            task,
            variant,
            training.overrides,
            data_dir,
            run_dir,
            split,
            training.heads_handler,
            with_reliance=split == "test",
        )
        for split in SPLITS
    }
    return {
        "task": task.name,
        "variant": variant.name,
        "seed": seed,
        "alone": alone,
        "scores": {split: result["scores"] for split, result in splits.items()},
        "reliance": splits["test"]["reliance"],
        "head_scores": {split: result["head_scores"] for split, result in splits.items()},
        "validation_curve": {"epochs": training.validation.epochs, "values": training.validation.values},
        "step_times": training.timer.times,
        "peak_mib": peak_mib,
        "curves": training.recorder.curves,
        "iterations": training.trainer.state.iteration,
        "train_s": train_s,
        "total_s": time.perf_counter() - started,
        "device": str(training.device),
    }


def measure_cost(
    task: Task, variant: Variant, seed: int, data_dir: Path | None, run_dir: Path, epochs: int
) -> dict[str, Any]:
    """Step times and peak memory of ``epochs`` epochs of ``variant``, without validation or scoring.

    For benchmarks whose runs share the machine (``--jobs`` > 1): their own timings are not quoted,
    these are, taken while nothing else trains. The oracle's initial weights do not change its cost,
    so they are not loaded.
    """
    started = time.perf_counter()
    schedule = {"epochs": epochs, "val_interval": epochs + 1}
    training = _Training(task, variant, seed, data_dir, run_dir, schedule=schedule)
    peak_mib = training.run()
    return {
        "task": task.name,
        "variant": variant.name,
        "seed": seed,
        "alone": True,
        "cost_only": True,
        "step_times": training.timer.times,
        "peak_mib": peak_mib,
        "iterations": training.trainer.state.iteration,
        "total_s": time.perf_counter() - started,
        "device": str(training.device),
    }


def child_main(spec: dict[str, Any], result_path: str, log_path: str) -> None:
    """Entry point of the child process: run ``spec``, log to ``log_path``, and last write the result JSON,
    atomically: a run is finished when its result exists, and a benchmark run again skips it.

    ``spec["gpu"]`` (the benchmark's ``--jobs`` on a GPU machine) is the one GPU the run sees, set before
    anything in this process has touched CUDA.
    """
    if spec.get("gpu") is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = spec["gpu"]
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        force=True,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        torch.set_num_threads(spec["threads"])
        task = TASK_TYPES[spec["task"]](spec["setting"], Path(spec["bundles"]))
        variant = task.variants()[spec["variant"]]
        data_dir = Path(spec["data_dir"]) if spec["data_dir"] else None
        run_dir = Path(spec["run_dir"])
        if spec.get("cost_epochs"):
            result = measure_cost(task, variant, spec["seed"], data_dir, run_dir, spec["cost_epochs"])
        else:
            init = Path(spec["init_checkpoint"]) if spec.get("init_checkpoint") else None
            result = train_and_measure(task, variant, spec["seed"], data_dir, run_dir, init, spec["alone"])
        write_atomic(result_path, lambda path: path.write_text(json.dumps(result)))
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
