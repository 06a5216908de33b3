"""`PredictionWriter`: one CSV row per sample of a MONAI evaluator run, for the sequence bundles' inference.

MONAI's ``ClassificationSaver`` names its rows by image file name, writes no header and no label, and
replaces its file in place. Sequence samples have no file name, so this table names them by their
position in the split, has a header and the label, and is written beside its final name and renamed
into place (:func:`cggm_seg.io.write_atomic`): an interrupted run leaves no half table, and an existing
table is never replaced unless asked.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.handlers import from_engine

from cggm_seg.io import check_new_outputs, write_atomic


def _batch(value: Any) -> torch.Tensor | None:
    """A batch tensor from an evaluator's output: as is (``decollate=False``) or stacked from its items."""
    if value is None or isinstance(value, torch.Tensor):
        return value
    items = list(value)
    return None if not items or items[0] is None else torch.stack(items)


def _number(value: float) -> str:
    return f"{value:.6g}"


class PredictionWriter:
    """Writes ``filename`` when the engine completes: ``index``, the prediction, and ``label`` when known.

    ``output_transform(engine.state.output)`` gives ``(pred, label)``, ``pred`` ``[B, C]``. With one
    output (a regression) ``prediction`` is its value; with ``C`` logits ``prediction`` is the argmax
    class and ``probability_<class>`` the softmax, classes named by ``class_names`` or numbered from 0.
    ``index`` counts samples in the order the loader gives them: the split's order when it does not
    shuffle. One process: under torch.distributed each rank would see only its own share.

    Args:
        filename: the CSV to write; an existing one is refused at the start of a run unless ``overwrite``.
        class_names: the classes' names, in class order, for the probability columns.
        overwrite: replace an existing ``filename``.
        output_transform: the engine's output -> ``(pred, label)``, ``label`` None when unknown; by default
            the ``pred`` and ``label`` of a MONAI evaluator's output.
    """

    def __init__(
        self,
        filename: str | Path,
        class_names: Sequence[str] | None = None,
        overwrite: bool = False,
        output_transform: Callable[[Any], tuple[Any, Any]] | None = None,
    ) -> None:
        self.filename = Path(filename)
        self.class_names = None if class_names is None else [str(name) for name in class_names]
        self.overwrite = overwrite
        self.output_transform = output_transform or from_engine(["pred", "label"])
        self._preds: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _start(self, engine: Engine) -> None:
        check_new_outputs([self.filename], self.overwrite)
        self._preds, self._labels = [], []

    def _collect(self, engine: Engine) -> None:
        pred, label = (_batch(value) for value in self.output_transform(engine.state.output))
        pred = pred.detach().float().cpu().reshape(pred.shape[0], -1)
        if self.class_names is not None and len(self.class_names) != pred.shape[1]:
            raise ValueError(f"{len(self.class_names)} class_names for {pred.shape[1]} network outputs")
        self._preds.append(pred)
        if label is not None:
            self._labels.append(label.detach().cpu().reshape(pred.shape[0]))

    def _table(self) -> list[list[str]]:
        preds = torch.cat(self._preds) if self._preds else torch.zeros(0, 1)
        labels = torch.cat(self._labels) if self._labels else None
        if preds.shape[1] == 1:
            header = ["index", "prediction"]
            values = [[_number(row[0])] for row in preds.tolist()]
        else:
            names = self.class_names or [str(k) for k in range(preds.shape[1])]
            header = ["index", "prediction", *(f"probability_{name}" for name in names)]
            probabilities = torch.softmax(preds, dim=1)
            values = [[str(int(row.argmax())), *map(_number, row.tolist())] for row in probabilities]
        if labels is not None:
            header.append("label")
            text = _number if labels.is_floating_point() else str
            values = [[*row, text(label)] for row, label in zip(values, labels.tolist())]
        return [header, *([str(index), *row] for index, row in enumerate(values))]

    def _write(self, engine: Engine) -> None:
        table = self._table()

        def write(path: Path) -> None:
            with path.open("w", newline="") as handle:
                csv.writer(handle).writerows(table)

        write_atomic(self.filename, write, self.overwrite)
