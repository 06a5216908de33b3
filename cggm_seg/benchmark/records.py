"""One benchmark run as a typed record, read from the JSON a run writes (:mod:`cggm_seg.benchmark.run`)
or from the ``runs`` of ``docs/benchmark/results.json``, so that the report names fields, not strings.

Scored runs carry scores, reliance, head scores and a validation curve; cost-only runs
(``cost_only``, :func:`~cggm_seg.benchmark.run.measure_cost`) carry only their cost. ``results.json``
keeps every run without its per-iteration series (:data:`PER_ITERATION`), so a run read back from it
has neither step times nor curves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

#: the per-iteration series behind the plots and step times: left out of ``results.json``
PER_ITERATION = ("step_times", "curves")


@dataclass(frozen=True)
class Curve:
    """A validation score by epoch (one run's, or the mean over seeds)."""

    epochs: list[int]
    values: list[float]


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """What one run reports; the fields are in the order the run's JSON and ``results.json`` write them."""

    task: str
    variant: str
    seed: int
    alone: bool = True  # had the machine to itself, so its cost may be quoted
    cost_only: bool = False
    scores: Mapping[str, Mapping[str, float]] | None = None  # split -> score key -> value
    reliance: Mapping[str, Any] | None = None  # modality_reliance(...).as_dict() on the test split
    head_scores: Mapping[str, Mapping[str, float]] | None = None  # split -> modality -> head score
    validation_curve: Curve | None = None
    step_times: list[float] = field(default_factory=list)
    peak_mib: float
    curves: Mapping[str, list[float]] = field(default_factory=dict)  # "utilisation/flair" -> per iteration
    iterations: int
    train_s: float | None = None
    total_s: float
    device: str

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecord:
        """A record from a run's JSON (``result.json``, or one of ``results.json``'s ``runs``)."""
        curve = data.get("validation_curve")
        return cls(**{**data, "validation_curve": Curve(**curve) if curve else None})

    def saved(self) -> dict[str, Any]:
        """The run as ``results.json`` keeps it: the keys the run wrote, without :data:`PER_ITERATION`
        (a scored run writes no ``cost_only``, a cost-only run no scores)."""
        return {
            key: value
            for key, value in asdict(self).items()
            if key not in PER_ITERATION and value is not None and (key != "cost_only" or value)
        }
