"""The few matplotlib figures the benchmark and ``cggm-seg report`` draw, written as PNG files.

Curves of per-iteration quantities (utilisation, coefficients) are noisy on small batches, so
line panels can draw a centred moving average over the raw values, which stay visible faintly.
Matplotlib runs on the Agg backend: no display is needed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

#: one colour per modality, the same in every figure
PALETTE = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")

Series = Mapping[str, tuple[Sequence[float], Sequence[float]]]


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Centred moving average; the window shrinks at the ends, so the length is unchanged."""
    values = np.asarray(values, dtype=float)
    if window <= 1 or values.size == 0:
        return values
    kernel = np.ones(window)
    sums = np.convolve(values, kernel, mode="same")
    counts = np.convolve(np.ones_like(values), kernel, mode="same")
    return sums / counts


def robust_limits(panels: Mapping[str, Series], low: float = 2.0, high: float = 98.0) -> tuple[float, float]:
    """y limits holding the ``low``..``high`` percentiles of every value, with a margin: a few spikes
    (CGGM's coefficients are huge when the summed improvement is near 0) do not flatten the rest."""
    values = np.concatenate(
        [np.asarray(y, dtype=float) for series in panels.values() for _, y in series.values()]
    )
    lo, hi = np.percentile(values, [low, high])
    margin = 0.05 * (hi - lo) or 0.5
    return float(lo - margin), float(hi + margin)


def line_panels(
    panels: Mapping[str, Series],
    path: Path,
    xlabel: str,
    ylabel: str,
    smooth: int = 1,
    columns: int = 3,
    suptitle: str | None = None,
    ylim: tuple[float, float] | None = None,
) -> Path:
    """One subplot per panel, one line per series (``label -> (x, y)``), shared y axis; saves ``path``."""
    if not panels:
        raise ValueError("line_panels: nothing to plot")
    cols = min(columns, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), sharey=True, squeeze=False)
    for ax, (title, series) in zip(axes.flat, panels.items()):
        for colour, (label, (x, y)) in zip(PALETTE * 4, series.items()):
            if smooth > 1:
                ax.plot(x, y, color=colour, alpha=0.2, linewidth=0.8)
            ax.plot(x, moving_average(y, smooth), color=colour, label=label, linewidth=1.5)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    if ylim is not None:
        axes.flat[0].set_ylim(*ylim)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    return _save(fig, path)


def grouped_bars(
    groups: Sequence[str],
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: Path,
    ylabel: str,
    title: str | None = None,
) -> Path:
    """Bars of ``series`` (``label -> (means, stds)``, one value per group) side by side per group."""
    if not groups or not series:
        raise ValueError("grouped_bars: nothing to plot")
    width = 0.8 / len(series)
    x = np.arange(len(groups))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * len(groups) * len(series) + 2.0), 3.8))
    for k, (colour, (label, (means, stds))) in enumerate(zip(PALETTE * 4, series.items())):
        errors = stds if any(stds) else None
        ax.bar(
            x + (k - (len(series) - 1) / 2) * width,
            means,
            width,
            yerr=errors,
            label=label,
            color=colour,
            capsize=2,
        )
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(x, groups, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def paired_scatter(
    panels: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: Path, xlabel: str, ylabel: str
) -> Path:
    """One subplot per panel (``title -> (x, y)``, one point per case) with the line ``y = x``: points
    above it are cases where the y run scored higher."""
    if not panels:
        raise ValueError("paired_scatter: nothing to plot")
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False)
    for ax, (title, (x, y)) in zip(axes.flat, panels.items()):
        lo, hi = float(min(min(x), min(y))), float(max(max(x), max(y)))
        ax.plot([lo, hi], [lo, hi], color="grey", linewidth=0.8)
        ax.scatter(x, y, s=12, color=PALETTE[0])
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path, tight: bool = True) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


#: region -> overlay colour, drawn in this order (the nested regions last, on top)
REGION_COLOURS = {"WT": (0.1, 0.8, 0.2), "TC": (1.0, 0.85, 0.0), "ET": (0.9, 0.1, 0.1)}


def _region_layer(masks: Mapping[str, np.ndarray]) -> np.ndarray:
    """RGBA image [y, x, 4] of the innermost region at each pixel, translucent; empty where none."""
    layer = None
    for region, colour in REGION_COLOURS.items():
        if region in masks:
            mask = np.asarray(masks[region], dtype=bool).T
            if layer is None:
                layer = np.zeros((*mask.shape, 4))
            layer[mask, :3] = colour
            layer[mask, 3] = 0.5
    return layer if layer is not None else np.zeros((1, 1, 4))


def overlay_montage(
    images: Mapping[str, np.ndarray],
    rows: Mapping[str, Mapping[str, np.ndarray]],
    path: Path,
    title: str | None = None,
) -> Path:
    """A grid of 2-D ``images`` (columns) with each row's region masks overlaid in :data:`REGION_COLOURS`
    (each pixel coloured by the innermost region that holds it: ET over TC over WT).

    Arrays are indexed ``[x, y]`` and drawn with x to the right and y upwards (radiological axial view
    of an RAS volume is left-right mirrored; this shows it as stored).
    """
    size = (2.6 * len(images), 2.7 * len(rows))
    fig, axes = plt.subplots(len(rows), len(images), figsize=size, squeeze=False)
    for r, (row_name, masks) in enumerate(rows.items()):
        for c, (name, image) in enumerate(images.items()):
            ax = axes[r, c]
            ax.imshow(np.asarray(image, dtype=float).T, cmap="gray", origin="lower")
            ax.imshow(_region_layer(masks), origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name)
            if c == 0:
                ax.set_ylabel(row_name)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour, alpha=0.6) for colour in REGION_COLOURS.values()]
    fig.legend(handles, list(REGION_COLOURS), loc="lower center", ncol=len(REGION_COLOURS), fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(fig, path, tight=False)


def box_plots(
    rows: Sequence[Mapping[str, float]],
    keys: Sequence[str],
    out_dir: str | Path,
    prefix: str = "",
    regions: Sequence[str] = tuple(REGION_COLOURS),
) -> list[Path]:
    """One PNG ``{prefix}{metric}.png`` per metric in ``keys`` (e.g. ``lesion_dice``), one box per region.

    Each box holds the cases' ``{metric}_{region}`` values (``region`` lower-cased, one box per entry of
    ``regions``, in that order), so per-case spread is visible and not just the mean. ``prefix`` ties
    the plots to the table they come from (``brats_scores_``). Drawn on a ``Figure`` with its own Agg
    canvas, outside pyplot's list of open figures.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for metric in keys:
        columns = [f"{metric}_{region.lower()}" for region in regions]
        data = [[float(row[c]) for row in rows if c in row] for c in columns]
        data = [[v for v in values if not math.isnan(v)] for values in data]
        if not any(data):
            raise ValueError(f"box_plots: no values for {metric!r} (looked for {columns})")
        figure = Figure(figsize=(4.0, 3.5))
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        axes.boxplot(data, showmeans=True)
        axes.set_xticks(range(1, len(regions) + 1), list(regions))
        axes.set_ylabel(metric)
        axes.set_title(f"{metric} ({len(rows)} cases)")
        axes.grid(axis="y", alpha=0.3)
        figure.tight_layout()
        path = out / f"{prefix}{metric}.png"
        figure.savefig(path, dpi=100)
        paths.append(path)
    return paths
