"""PNG plots of a BraTS bundle training run and a slice montage (``cggm-seg report RUN_DIR``).

Curves come from the run's TensorBoard event files (written by the bundle's TensorBoardStatsHandler):
the training ``loss``, the validation Dice (``val_mean_dice``, ``val_dice_wt/tc/et``) and the
per-modality ``cggm/utilisation``, ``cggm/coeff``, ``cggm/cosine`` and ``cggm/grad_norm`` curves
(whatever balancing method wrote them). The montage shows one validation case — the axial slice
with the most whole tumour — with ground truth and prediction overlaid on every sequence; it
needs the run's ``model.pt`` and the data (``--dataset-dir``), and is skipped with a note if they
are not given.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cggm_seg.bundle import bundle_dir
from cggm_seg.errors import UserError
from cggm_seg.plots import line_panels, overlay_montage, robust_limits

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = bundle_dir("brats_cggm") / "configs" / "train.json"
VALIDATION_TAGS = ("val_mean_dice", "val_dice_wt", "val_dice_tc", "val_dice_et")
#: per-modality curve kind -> (file name, axis label)
MODALITY_CURVES = {
    "utilisation": ("utilisation.png", "head score (utilisation)"),
    "coeff": ("coefficients.png", "coefficient"),
    "cosine": ("cosines.png", "cosine with the fusion direction"),
    "grad_norm": ("grad_norms.png", "encoder gradient norm"),
}
PREFIX = "cggm/"

Curves = dict[str, tuple[list[int], list[float]]]


def read_scalars(run_dir: Path) -> Curves:
    """Every scalar tag of every event file under ``run_dir``: ``tag -> (steps, values)`` sorted by step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(run_dir.rglob("events.out.tfevents.*"))
    if not files:
        raise UserError(
            f"{run_dir}: no TensorBoard event files (events.out.tfevents.*); expected the "
            "output_dir of a bundle training run"
        )
    points: dict[str, dict[int, float]] = defaultdict(dict)
    for path in files:
        accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            points[tag].update((event.step, event.value) for event in accumulator.Scalars(tag))
    return {tag: (sorted(by_step), [by_step[s] for s in sorted(by_step)]) for tag, by_step in points.items()}


def modality_series(scalars: Curves, kind: str) -> Curves:
    """``cggm/<kind>/<modality>`` curves keyed by modality."""
    head = f"{PREFIX}{kind}/"
    return {tag[len(head) :]: curve for tag, curve in scalars.items() if tag.startswith(head)}


def plot_curves(scalars: Curves, out: Path, smooth: int) -> tuple[list[Path], list[str]]:
    """Loss, validation Dice and per-modality curves; returns the files written and what is missing."""
    written, notes = [], []
    if "loss" in scalars:
        panels = {"training loss": {"loss": scalars["loss"]}}
        if f"{PREFIX}l_gm" in scalars:
            panels["CGGM balancing term L_gm"] = {"L_gm": scalars[f"{PREFIX}l_gm"]}
        written.append(line_panels(panels, out / "loss.png", "iteration", "value", smooth=smooth, columns=2))
    else:
        notes.append("no 'loss' curve: loss.png not written")
    validation = {tag: scalars[tag] for tag in VALIDATION_TAGS if tag in scalars}
    if validation:
        written.append(line_panels({"validation Dice": validation}, out / "val_dice.png", "epoch", "Dice"))
    else:
        notes.append("no validation Dice (val_mean_dice, ...): val_dice.png not written")
    for kind, (name, label) in MODALITY_CURVES.items():
        series = modality_series(scalars, kind)
        if series:
            panels = {label: series}
            ylim = robust_limits(panels) if kind == "coeff" else None  # spikes where sum_k d_k ~ 0
            written.append(line_panels(panels, out / name, "iteration", label, smooth=smooth, ylim=ylim))
        else:
            notes.append(f"no {PREFIX}{kind}/<modality> curves: {name} not written")
    return written, notes


def montage(
    run_dir: Path,
    out: Path,
    dataset_dir: Path,
    datalist: Path | None,
    checkpoint: Path,
    config: Path,
    overrides: dict[str, Any],
    fold: int,
) -> Path:
    """Predict the first validation case of ``fold`` with ``checkpoint`` and draw the montage."""
    from ignite.handlers import Checkpoint
    from monai.bundle import ConfigParser

    if not checkpoint.is_file():
        raise UserError(
            f"--checkpoint: {checkpoint} does not exist (the bundle writes model.pt when it validates)"
        )
    parser = ConfigParser()
    parser.read_config(str(config))
    parser.update(
        {
            "dataset_dir": str(dataset_dir),
            "output_dir": str(run_dir),
            "fold": fold,
            **({"datalist": str(datalist)} if datalist else {}),
            **overrides,
        }
    )
    network = parser.get_parsed_content("network")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        Checkpoint.load_objects({"network": network}, state)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise UserError(
            f"--checkpoint: {checkpoint} does not fit the network of {config} ({first}); "
            "pass the settings the run was trained with, e.g. "
            "--override 'network_def#channels=[8,16,32,64]'"
        ) from None
    case = parser.get_parsed_content("split")[1][0]
    item = parser.get_parsed_content("validate#preprocessing")(case)
    network.eval()
    device = next(network.parameters()).device
    with torch.no_grad():
        logits = parser.get_parsed_content("inferer")(item["image"][None].to(device), network)
    pred = parser.get_parsed_content("validate#postprocessing")({"pred": logits[0]})["pred"]
    image, label, pred = (np.asarray(t.detach().cpu()) for t in (item["image"], item["label"], pred))
    whole = label[1].reshape(-1, label.shape[-1]).sum(0)  # (TC, WT, ET) channels; WT area per axial slice
    k = int(whole.argmax())
    names = parser.get_parsed_content("modalities")
    regions = ("TC", "WT", "ET")
    rows = {
        "ground truth": {r: label[i, :, :, k] > 0 for i, r in enumerate(regions)},
        "prediction": {r: pred[i, :, :, k] > 0 for i, r in enumerate(regions)},
    }
    case_id = case.get("case_id", Path(str(case["label"])).name)
    return overlay_montage(
        {n: image[i, :, :, k] for i, n in enumerate(names)},
        rows,
        out / "montage.png",
        title=f"{case_id}, axial slice {k} (fold {fold} validation case)",
    )
