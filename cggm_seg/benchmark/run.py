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

from cggm_seg.benchmark.tasks import CONSOLE_HANDLERS, SETTINGS, TASKS, Task, Variant
from cggm_seg.benchmark.timing import PeakMemory, StepTimer
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
    """The bundle's config with ``overrides`` and without the handlers that only print to the console."""
    parser = ConfigParser()
    parser.read_config([str(c) for c in configs])
    parser.update(overrides)
    for key in ("train_handlers", "eval_handlers"):
        if key in parser.config:
            parser[key] = [h for h in parser[key] if h.get("_target_") not in CONSOLE_HANDLERS]
    return parser


def variant_overrides(variant: Variant, seed: int) -> dict[str, Any]:
    overrides: dict[str, Any] = {"modulation": variant.method, "seed": seed}
    overrides.update({f"modulation_handler#{key}": value for key, value in variant.settings.items()})
    return overrides


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
    for batch in parser.get_parsed_content("eval_loader"):
        yield evaluator.prepare_batch(batch, evaluator.state.device, False)


def train_and_measure(
    task: Task, variant: Variant, seed: int, data_dir: Path, run_dir: Path
) -> dict[str, Any]:
    """Train ``variant`` on ``task`` with ``seed`` in ``run_dir``; everything the benchmark reports."""
    started = time.perf_counter()
    overrides = variant_overrides(variant, seed)
    parser = bundle_parser([task.train_config], {**task.train_overrides(data_dir, run_dir), **overrides})
    parser.get_parsed_content("initialize")
    trainer = parser.get_parsed_content("trainer")
    handler = parser.get_parsed_content("modulation_handler")
    device = torch.device(parser.get_parsed_content("device"))
    timer = StepTimer(device)
    timer.attach(trainer)
    heads_handler = handler if isinstance(handler, ModalityHeadsHandler) else _monitor(parser)
    if heads_handler is not handler:
        heads_handler.attach(trainer)
    recorder = CurveRecorder(heads_handler)
    recorder.attach(trainer)
    with PeakMemory(device) as memory:
        trainer.run()
    train_s = time.perf_counter() - started

    evaluation = bundle_parser(
        [task.train_config, task.eval_config], {**task.eval_overrides(data_dir, run_dir), **overrides}
    )
    evaluator = evaluation.get_parsed_content("evaluator")
    network = evaluation.get_parsed_content("network")
    encoders = heads_handler.encoder_names
    names = heads_handler.modality_names
    if variant.method == "unimodal":  # the same blanking as in training, as a user's evaluation must do
        keep_only_modality(network, encoders, variant.settings["modality"], names)
    full_scores: list[dict[str, float]] = []

    def evaluate() -> float:
        evaluator.run()
        scores = task.scores(evaluation, evaluator)
        full_scores.append(scores)
        return scores[task.score_key]

    reliance = modality_reliance(network, encoders, names, evaluate)
    heads = head_scores(
        parser.get_parsed_content("network"),
        heads_handler.heads,
        encoders,
        names,
        _batches(evaluation, evaluator),
        heads_handler.metric,
    )
    return {
        "task": task.name,
        "variant": variant.name,
        "seed": seed,
        "scores": full_scores[0],
        "reliance": reliance.as_dict(),
        "head_scores": heads,
        "step_times": timer.times,
        "peak_mib": memory.mib,
        "curves": recorder.curves,
        "iterations": trainer.state.iteration,
        "train_s": train_s,
        "total_s": time.perf_counter() - started,
        "device": str(device),
    }


def child_main(spec: dict[str, Any], result_path: str, log_path: str) -> None:
    """Entry point of the child process: run ``spec``, write the result JSON, log to ``log_path``."""
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
        task = TASKS[spec["task"]](SETTINGS[spec["task"]][spec["setting"]])
        variant = task.variants()[spec["variant"]]
        result = train_and_measure(task, variant, spec["seed"], Path(spec["data_dir"]), Path(spec["run_dir"]))
        Path(result_path).write_text(json.dumps(result))
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
