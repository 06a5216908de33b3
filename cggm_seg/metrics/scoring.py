"""BraTS scores of a folder of predicted label maps against ground truth (``cggm-seg evaluate``).

Two schemes, named after the challenges whose rules they follow:

* ``brats2021`` (BraTS 2017-2021): Dice and HD95 of each region (WT/TC/ET) over the whole volume
  (:mod:`cggm_seg.metrics.brats`); a missing prediction is refused.
* ``brats2023`` (BraTS 2023 onwards): the lesion-wise Dice/HD95 the challenges rank by, lesion
  TP/FP/FN counts, surface Dice (NSD) and volume Dice/HD95 (:mod:`cggm_seg.metrics.lesionwise`); a
  missing prediction is scored as an empty one, as the challenges do, and listed.

Every case is scored in the ground truth's geometry and voxel spacing, in parallel over cases,
so the numbers compare with the leaderboards, and anything that would make them silently wrong is
refused with a one-line error naming the case: mismatched grids, label values outside the chosen
convention, non-integer labels, extra predictions.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import multiprocessing
import os
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from tqdm import tqdm

from cggm_seg.brats_labels import LabelConvention, case_id_from_filename, get_convention
from cggm_seg.errors import UserError
from cggm_seg.io import check_new_outputs, write_atomic, write_json
from cggm_seg.metrics.brats import DICE_KEYS, HD95_KEYS, case_scores
from cggm_seg.metrics.lesionwise import (
    CASE_REGIONS,
    CHALLENGE_SETTINGS,
    REGION_METRICS,
    LesionwiseSettings,
    box_plots,
    lesionwise_case_scores,
)

logger = logging.getLogger(__name__)

NIFTI = ".nii.gz"
# Prediction and ground truth count as one grid when their affines agree to this many mm
# (float32 headers written by different tools differ in the last digits, never by 1e-3 mm).
AFFINE_ATOL_MM = 1e-3
# One case's columns in the CSV and the summary: the three regions, then their per-case mean.
METRICS = (*DICE_KEYS, "dice_mean", *HD95_KEYS, "hd95_mean")
_MAX_LISTED_VALUES = 10
SCHEMES = ("brats2021", "brats2023")
CHALLENGES = tuple(name.removeprefix("BraTS-") for name in CHALLENGE_SETTINGS)  # GLI, SSA, MEN, PED, MET
# brats2023 columns: each metric per region (WT, TC, ET), the Dice-like ones and lesion HD95 also averaged.
_AVERAGED = ("lesion_dice", "lesion_hd95", "dice")
_SUFFIXES = tuple(r.lower() for r in CASE_REGIONS)
LESIONWISE_METRICS = tuple(f"{m}_{r}" for m in REGION_METRICS
                           for r in (*_SUFFIXES, *(("mean",) if m in _AVERAGED else ())))
_COUNTS = ("tp", "fp", "fn")
# brats2023 rows of cases without a prediction carry 1 here (0 otherwise); a flag, not a score.
MISSING_KEY = "pred_missing"


@dataclass(frozen=True)
class Scheme:
    """Which rules score a case: ``brats2021`` volume Dice/HD95 or ``brats2023`` lesion-wise scores.

    ``challenge`` (GLI, SSA, MEN, PED, MET) picks the BraTS 2023 dilation and lesion-size threshold,
    ``nsd_tolerance_mm`` the surface Dice tolerance; both only mean something for ``brats2023``.
    """

    name: str = "brats2021"
    challenge: str = "GLI"
    nsd_tolerance_mm: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in SCHEMES:
            raise UserError(f"unknown scoring scheme {self.name!r}; expected one of {list(SCHEMES)}")
        if self.challenge not in CHALLENGES:
            raise UserError(f"unknown challenge {self.challenge!r}; expected one of {list(CHALLENGES)}")
        if not self.nsd_tolerance_mm >= 0:  # also refuses NaN
            raise UserError(f"the NSD tolerance must be >= 0 mm, got {self.nsd_tolerance_mm}")

    @property
    def lesionwise(self) -> bool:
        return self.name == "brats2023"

    @property
    def settings(self) -> LesionwiseSettings:
        """The BraTS 2023 parameters of ``challenge`` with this scheme's NSD tolerance."""
        preset = CHALLENGE_SETTINGS[f"BraTS-{self.challenge}"]
        return replace(preset, nsd_tolerance_mm=float(self.nsd_tolerance_mm))

    @property
    def metrics(self) -> tuple[str, ...]:
        """The score columns of the CSV, in order; each gets its statistics in the summary."""
        return LESIONWISE_METRICS if self.lesionwise else METRICS

    @property
    def plot_metrics(self) -> tuple[str, ...]:
        """The metrics that get a box plot (one box per region)."""
        return REGION_METRICS if self.lesionwise else ("dice", "hd95")

    def info(self) -> dict:
        """What the brats2023 summary records about its rules, so a table can be reproduced; brats2021
        adds nothing (its summary keys stay those of earlier releases)."""
        if not self.lesionwise:
            return {}
        settings = self.settings
        return {"scheme": self.name, "challenge": self.challenge,
                "dilation_factor": settings.dilation_factor,
                "lesion_volume_thresh_mm3": settings.lesion_volume_thresh,
                "hd95_penalty_mm": settings.hd95_penalty_mm, "nsd_tolerance_mm": settings.nsd_tolerance_mm}


def as_scheme(scheme: Scheme | str) -> Scheme:
    """``scheme`` itself, or the default ``Scheme`` of that name."""
    return scheme if isinstance(scheme, Scheme) else Scheme(scheme)


def default_scheme(convention: str) -> str:
    """``brats2023`` for data labelled the BraTS 2023 way (the challenges that rank lesion-wise), else
    ``brats2021``."""
    return "brats2023" if convention == "brats2023" else "brats2021"


def default_workers() -> int:
    """CPUs this process may run on (the affinity mask, which containers and ``taskset`` narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def _listed(values: np.ndarray) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:_MAX_LISTED_VALUES])
    more = f" and {values.size - _MAX_LISTED_VALUES} more" if values.size > _MAX_LISTED_VALUES else ""
    return f"[{shown}{more}]"


def check_label_values(labels: np.ndarray, convention: LabelConvention, where: str) -> None:
    """Raise a ``UserError`` naming ``where`` if ``labels`` holds values outside ``convention``.

    Non-integer values (probabilities, resampling with linear interpolation) get their own message:
    the fix is a different one from choosing another convention. Integer values stored as floats
    (common in NIfTI label maps) are fine.
    """
    values = np.unique(labels)
    if values.dtype.kind == "f":
        fractional = values[~(np.isfinite(values) & (np.round(values) == values))]
        if fractional.size:
            raise UserError(f"{where} has non-integer label values {_listed(fractional)}; expected a label "
                            f"map of {convention.name} labels {list(convention.labels)} (threshold or argmax "
                            "probabilities, resample with nearest neighbour)")
    bad = values[~np.isin(values, convention.labels)]
    if bad.size:
        raise UserError(f"{where} has label values {_listed(bad)} outside the {convention.name} set "
                        f"{list(convention.labels)}; is --convention right?")


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.name.endswith(NIFTI) and not p.name.startswith("."))


def _require_dir(folder: Path, option: str) -> None:
    if not folder.is_dir():
        raise UserError(f"{option} {folder} is not a folder")


def find_ground_truth(gt_dir: Path) -> dict[str, Path]:
    """Case id -> label file in a BraTS 2021/2023 root, an MSD root (``labelsTr``) or a flat folder."""
    _require_dir(gt_dir, "--gt")
    if (gt_dir / "labelsTr").is_dir():
        candidates = [(case_id_from_filename(p), p) for p in _nifti_files(gt_dir / "labelsTr")]
    else:
        candidates = [(case_id_from_filename(p), p) for p in _nifti_files(gt_dir)]
        for folder in sorted(p for p in gt_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            segs = [folder / f"{folder.name}{sep}seg{NIFTI}" for sep in "_-"]
            seg = next((p for p in segs if p.is_file()), None)
            if seg is not None:
                candidates.append((folder.name, seg))
            elif _nifti_files(folder):
                raise UserError(f"case folder {folder} has no {segs[0].name} or {segs[1].name}")
    found: dict[str, Path] = {}
    for case_id, path in candidates:
        if case_id in found:
            raise UserError(f"case {case_id} has two ground-truth files: {found[case_id]} and {path}")
        found[case_id] = path
    if not found:
        raise UserError(f"no ground-truth label files in {gt_dir}: expected <case>/<case>_seg{NIFTI} "
                        f"(BraTS 2021), <case>/<case>-seg{NIFTI} (BraTS 2023), labelsTr/<case>{NIFTI} (MSD) "
                        f"or <case>{NIFTI} / <case>_seg{NIFTI} files")
    return found


def find_predictions(pred_dir: Path) -> dict[str, Path]:
    """Case id -> predicted label map ``<case_id>.nii.gz`` directly inside ``pred_dir``."""
    _require_dir(pred_dir, "--pred")
    found = {p.name[: -len(NIFTI)]: p for p in _nifti_files(pred_dir)}
    if not found:
        raise UserError(f"no predictions in {pred_dir}: expected <case_id>{NIFTI} label maps")
    return found


def _load_label_map(path: Path, case_id: str, what: str) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """(3D labels, affine, voxel spacing in mm) of a NIfTI file; every failure names the case and file."""
    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
    except Exception as err:  # nibabel raises many types (ImageFileError, OSError, EOFError, zlib.error)
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"case {case_id}: cannot read {what} {path}: {reason}") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise UserError(f"case {case_id}: {what} {path} has shape {data.shape}; expected a 3D label map")
    return data, image.affine, [float(z) for z in image.header.get_zooms()[:3]]


def layout_convention(gt_dir: Path) -> str:
    """The label convention a ground-truth root's layout implies: ``msd`` for ``labelsTr``,
    ``brats2023`` when every case folder holds ``<case>-seg.nii.gz`` (the 2023 names), else ``brats2021``.

    A flat folder of label maps says nothing about its labels, so it gets the historical default.
    """
    if (Path(gt_dir) / "labelsTr").is_dir():
        return "msd"
    labels = find_ground_truth(Path(gt_dir)).values()
    in_folders = [p for p in labels if p.parent != Path(gt_dir)]
    if in_folders and len(in_folders) == len(labels) and all(p.name.endswith(f"-seg{NIFTI}") for p in labels):
        return "brats2023"
    return "brats2021"


def _score_case(case_id: str, pred_path: Path | None, gt_path: Path, gt_convention: LabelConvention,
                pred_convention: LabelConvention, scheme: Scheme = Scheme()) -> dict[str, float]:
    """One case's row: checked, then scored by ``scheme``; ``pred_path`` None scores an empty prediction."""
    gt, gt_affine, spacing = _load_label_map(gt_path, case_id, "ground truth")
    if pred_path is None:
        check_label_values(gt, gt_convention, f"case {case_id}: ground truth {gt_path.name}")
        pred, pred_convention = np.zeros(gt.shape, np.uint8), gt_convention
    else:
        pred = _checked_pair(case_id, pred_path, gt_path, gt, gt_affine, gt_convention, pred_convention)
    pred, gt = crop_to_labels(pred, gt, crop_margin(scheme))
    if not scheme.lesionwise:
        scores = case_scores(pred, gt, gt_convention.name, spacing, pred_convention.name)
        return {"case_id": case_id, **scores}
    scores = lesionwise_case_scores(pred, gt, gt_convention.name, spacing, scheme.settings,
                                    pred_convention.name)
    return {"case_id": case_id, **lesionwise_columns(scores, missing=pred_path is None)}


def lesionwise_columns(scores: dict[str, float], missing: bool = False) -> dict[str, float]:
    """A brats2023 row from ``lesionwise`` scores: ``LESIONWISE_METRICS`` (``dice_mean`` added) and the
    missing-prediction flag, so the command and the bundle handler write the same columns."""
    scores = {**scores, "dice_mean": float(np.mean([scores[f"dice_{r}"] for r in _SUFFIXES]))}
    return {**{m: scores[m] for m in LESIONWISE_METRICS}, MISSING_KEY: int(missing)}


def crop_to_labels(pred: np.ndarray, gt: np.ndarray, margin: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Both maps cut to the box around every nonzero voxel of either, grown by ``margin`` voxels.

    The box is over the last three (spatial) axes; leading axes (the region channels of [3, *spatial]
    masks) are kept whole. A BraTS tumour fills about 1 % of the 240x240x155 volume, so scoring the
    box is several times faster, and it gives the same numbers: Dice counts voxels that all lie in
    the box; MONAI's HD95 crops to the same masks' box itself (padding with zeros where the box meets
    the volume's edge, as the margin does here); the lesion-wise scores crop likewise, and a dilation
    of the truth by ``margin - 1`` voxels stays inside. Maps without any label are returned whole.
    """
    foreground = (pred != 0) | (gt != 0)
    foreground = foreground.reshape(-1, *foreground.shape[-3:]).any(0)
    box = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(foreground.any(axis=others))
        if hits.size == 0:
            return pred, gt
        box.append(slice(max(hits[0] - margin, 0), min(hits[-1] + 1 + margin, foreground.shape[axis])))
    return pred[(..., *box)], gt[(..., *box)]


def crop_margin(scheme: Scheme) -> int:
    """The ``crop_to_labels`` margin that leaves ``scheme``'s scores unchanged."""
    return 1 + (scheme.settings.dilation_factor if scheme.lesionwise else 0)


def _checked_pair(case_id: str, pred_path: Path, gt_path: Path, gt: np.ndarray, gt_affine: np.ndarray,
                  gt_convention: LabelConvention, pred_convention: LabelConvention) -> np.ndarray:
    """The prediction's labels once both maps are known to share a grid and hold their conventions' labels.

    The checks run in the order of earlier releases, so a case with several problems reports the same one.
    """
    pred, pred_affine, _ = _load_label_map(pred_path, case_id, "prediction")
    if pred.shape != gt.shape:
        raise UserError(f"case {case_id}: prediction {pred_path.name} has shape {pred.shape} but the ground "
                        f"truth {gt_path.name} has {gt.shape}")
    affine_gap = float(np.abs(pred_affine - gt_affine).max())
    if affine_gap > AFFINE_ATOL_MM:
        raise UserError(f"case {case_id}: prediction {pred_path.name} has an affine that differs from the "
                        f"ground truth's by {affine_gap:.4g} (tolerance {AFFINE_ATOL_MM}); write it in the "
                        "ground truth's geometry")
    check_label_values(gt, gt_convention, f"case {case_id}: ground truth {gt_path.name}")
    check_label_values(pred, pred_convention, f"case {case_id}: prediction {pred_path.name}")
    return pred


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run the block on one torch thread, then restore the count.

    Scoring runs only small torch ops (MONAI's Dice and HD95 on cropped boxes), where intra-op
    threads cost more than they give, most of all when several workers share the cores.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _limit_threads() -> None:
    """Worker initializer: one torch thread per process, so N workers do not fight over N x N threads."""
    torch.set_num_threads(1)


def _pool_context() -> multiprocessing.context.BaseContext | None:
    """``fork`` where the platform has it: workers start at once with the parent's imports, where
    ``spawn`` would re-import torch and MONAI in each (about 6 s). The parent has run no torch work
    when the CLI forks; the workers use one thread each (``_limit_threads``)."""
    return multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None


def map_cases(function: Callable[..., dict], jobs: Sequence[tuple], workers: int = 1) -> list[dict]:
    """``function(*job)`` for every job, in job order, on ``workers`` processes.

    Each job's first item is its case id. The first failing job in case order raises its own error
    (a ``UserError`` naming the case), as a serial run would; pending jobs are cancelled.
    """
    workers = max(1, min(int(workers), len(jobs)))
    progress = {"desc": "scoring", "unit": "case", "disable": None, "total": len(jobs)}
    if workers == 1:
        with _one_torch_thread():
            return [function(*job) for job in tqdm(jobs, **progress)]
    executor = ProcessPoolExecutor(workers, mp_context=_pool_context(), initializer=_limit_threads)
    try:
        futures = [executor.submit(function, *job) for job in jobs]
        rows = []
        for job, future in tqdm(zip(jobs, futures, strict=True), **progress):
            try:
                rows.append(future.result())
            except BrokenProcessPool:
                raise UserError(f"case {job[0]}: a scoring process died (out of memory?); try fewer "
                                "--workers") from None
        return rows
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def score_folders(pred_dir: Path, gt_dir: Path, convention: str = "brats2021",
                  pred_convention: str | None = None, scheme: Scheme | str = "brats2021",
                  workers: int = 1, cases: Collection[str] | None = None) -> list[dict]:
    """Per-case rows ``{"case_id", <scheme.metrics>...}`` for every ground-truth case (or only
    ``cases``, e.g. one fold's), sorted by id.

    Every prediction needs a ground truth. A ground-truth case without a prediction is refused by
    ``brats2021`` (a partial inference run cannot pass for a full one); ``brats2023`` scores it as an
    empty prediction, as the challenges do (every lesion a false negative), flags it in its row
    (``pred_missing``) and logs one warning line listing such cases. ``workers`` processes score the
    cases; the rows are the same for any number.
    """
    scheme = as_scheme(scheme)
    gt_conv = get_convention(convention)
    pred_conv = get_convention(pred_convention or convention)
    gt_files, pred_files = find_ground_truth(Path(gt_dir)), find_predictions(Path(pred_dir))
    if cases is not None:
        unknown = sorted(set(cases) - gt_files.keys())
        if unknown:
            raise UserError(f"case(s) without ground truth in {gt_dir}: {', '.join(unknown)}")
        gt_files = {case_id: gt_files[case_id] for case_id in cases}
    extra = sorted(pred_files.keys() - gt_files.keys())
    missing = sorted(gt_files.keys() - pred_files.keys())
    if missing and not scheme.lesionwise:
        raise UserError(f"no prediction in {pred_dir} for {len(missing)} ground-truth case(s): "
                        f"{', '.join(missing)}")
    if extra:
        raise UserError(f"prediction(s) without ground truth in {gt_dir}: {', '.join(extra)}")
    if missing:
        logger.warning("no prediction in %s for %d ground-truth case(s), scored as empty predictions "
                       "(every lesion a false negative): %s", pred_dir, len(missing), ", ".join(missing))
    jobs = [(case_id, pred_files.get(case_id), gt_files[case_id], gt_conv, pred_conv, scheme)
            for case_id in sorted(gt_files)]
    rows = map_cases(_score_case, jobs, workers)
    for row in rows:
        logger.debug("%s", row)
    return rows


def _with_means(row: dict) -> dict:
    """The row plus the per-case means over the three regions (what the paper reports as mean Dice)."""
    return {**row, "dice_mean": float(np.mean([row[k] for k in DICE_KEYS])),
            "hd95_mean": float(np.mean([row[k] for k in HD95_KEYS]))}


def _table_rows(rows: Sequence[dict], scheme: Scheme) -> list[dict]:
    """The rows with every column of ``scheme.metrics`` (brats2021 adds the per-case means)."""
    return [dict(row) for row in rows] if scheme.lesionwise else [_with_means(row) for row in rows]


def summarise(rows: list[dict], scheme: Scheme | str = "brats2021") -> dict:
    """Per metric over the cases: mean (``<metric>``), population std, median, 25th and 75th percentile
    (``_std``, ``_median``, ``_p25``, ``_p75``), and ``n_cases``; brats2023 also records its rules
    (``Scheme.info``) and the cases that had no prediction (``missing_cases``).

    The population std (ddof=0) is kept from earlier releases for both schemes, so their summaries
    compare; the percentiles interpolate linearly (numpy's default).
    """
    if not rows:
        raise ValueError("no cases to summarise")
    scheme = as_scheme(scheme)
    metrics = scheme.metrics
    table = np.array([[r[m] for m in metrics] for r in _table_rows(rows, scheme)], dtype=np.float64)
    summary: dict = {**scheme.info()}
    summary.update({m: float(v) for m, v in zip(metrics, table.mean(0), strict=True)})
    summary["n_cases"] = len(rows)
    if scheme.lesionwise:
        summary["missing_cases"] = [r["case_id"] for r in rows if r.get(MISSING_KEY)]
    summary.update({f"{m}_std": float(v) for m, v in zip(metrics, table.std(0), strict=True)})
    summary.update({f"{m}_median": float(v) for m, v in zip(metrics, np.median(table, 0), strict=True)})
    for q in (25, 75):
        percentile = np.percentile(table, q, axis=0)
        summary.update({f"{m}_p{q}": float(v) for m, v in zip(metrics, percentile, strict=True)})
    return summary


def _digits(metric: str) -> int:
    """Dice-like scores (fractions) to 4 decimals; distances (mm) and lesion counts to 2."""
    return 4 if metric.startswith(("dice", "lesion_dice", "nsd")) else 2


def format_summary(summary: dict) -> str:
    """The summary as a small text table: one metric a line; mean, std, median, 25th/75th percentile."""
    scheme = Scheme(summary.get("scheme", "brats2021"))
    columns = ("", "_std", "_median", "_p25", "_p75")
    width = max(10, *(len(m) + 1 for m in scheme.metrics))
    lines = [f"{'metric':<{width}}" + "".join(f"{c.strip('_') or 'mean':>10}" for c in columns)]
    for m in scheme.metrics:
        lines.append(f"{m:<{width}}" + "".join(f"{summary[m + c]:>10.{_digits(m)}f}" for c in columns
                                               if m + c in summary))
    if summary.get("missing_cases"):
        lines.append(f"no prediction (scored empty): {', '.join(summary['missing_cases'])}")
    lines.append(f"n cases: {summary['n_cases']}")
    return "\n".join(lines)


def output_paths(csv_path: Path, scheme: Scheme | str = "brats2021") -> tuple[Path, list[Path]]:
    """The summary JSON and the box-plot PNGs that go next to ``csv_path`` (``<stem>_summary.json``,
    ``<stem>_<metric>.png``), so a second table in the same folder does not overwrite the first's."""
    csv_path = Path(csv_path)
    stem = csv_path.name.removesuffix(".csv")
    plots = [csv_path.with_name(f"{stem}_{m}.png") for m in as_scheme(scheme).plot_metrics]
    return csv_path.with_name(f"{stem}_summary.json"), plots


def _csv_text(rows: Sequence[dict], scheme: Scheme) -> str:
    """The per-case table: scores to 6 decimals, lesion counts and the missing flag as integers."""
    columns = [*scheme.metrics, *((MISSING_KEY,) if scheme.lesionwise else ())]
    integers = {f"{c}_{r.lower()}" for c in _COUNTS for r in CASE_REGIONS} | {MISSING_KEY}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case_id", *columns])
    for row in _table_rows(rows, scheme):
        writer.writerow([row["case_id"], *(f"{int(row[c])}" if c in integers else f"{row[c]:.6f}"
                                           for c in columns)])
    return buffer.getvalue()


def write_scores(rows: Sequence[dict], csv_path: Path, summary_path: Path, force: bool = False,
                 scheme: Scheme | str = "brats2021", plots: bool = True) -> dict:
    """Write the per-case CSV, the summary JSON and (``plots``) one box plot per metric next to the
    CSV (``output_paths``); returns the summary. Nothing is written if any output exists already,
    unless ``force``."""
    scheme = as_scheme(scheme)
    plot_paths = output_paths(csv_path, scheme)[1] if plots else []
    check_new_outputs((csv_path, summary_path, *plot_paths), force)  # all, before writing any
    summary = summarise(list(rows), scheme)
    text = _csv_text(rows, scheme)
    write_atomic(csv_path, lambda tmp: tmp.write_text(text), overwrite=force)
    write_json(summary_path, summary, overwrite=force)
    if plots:
        stem = Path(csv_path).name.removesuffix(".csv")
        box_plots(_table_rows(rows, scheme), scheme.plot_metrics, Path(csv_path).parent, prefix=f"{stem}_")
    return summary
