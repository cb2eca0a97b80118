"""Figures: count matrices (the category confusion, the class confusion of the error analysis) as images.

Drawn on ``matplotlib.figure.Figure`` objects, never through pyplot: no backend is chosen, so a notebook's
inline plots and a headless run both work, and ``draw_counts`` also fills an axis of a pyplot figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import AxesImage


def draw_counts(
    ax: Axes,
    matrix: Sequence[Sequence[float]],
    rows: Sequence[str],
    columns: Sequence[str],
    fontsize: float | None = None,
) -> AxesImage:
    """A count matrix on ``ax``: each cell's count written in it (empty for 0), its colour the count's share of
    its row (recall per true row), rows and columns labelled."""
    counts = np.asarray(matrix, dtype=float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(columns)), labels=columns, rotation=45, ha="right", fontsize=fontsize)
    ax.set_yticks(range(len(rows)), labels=rows, fontsize=fontsize)
    for i, j in zip(*np.nonzero(counts), strict=True):
        colour = "white" if shares[i, j] > 0.5 else "black"
        ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=fontsize, color=colour)
    return image


def confusion_figure(matrix: Sequence[Sequence[int]], names: Sequence[str], title: str = "") -> Figure:
    """The category confusion: true categories as rows, colour by share of the true category."""
    size = 1.2 + 0.9 * len(names)
    figure = Figure(figsize=(size + 1.5, size))
    ax = figure.subplots()
    image = draw_counts(ax, matrix, names, names)
    figure.colorbar(image, ax=ax, label="share of true category")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    figure.tight_layout()
    return figure


def class_confusion_figure(analysis: dict[str, Any], title: str = "") -> Figure:
    """The class confusion (``broadclass.metrics.alignment``) in total and per reference category: colour by
    share of the reference class's row (the last row, insertions, by share of all insertions)."""
    panels = [("all categories", analysis["total"]["matrix"])]
    panels += [(name, part["matrix"]) for name, part in analysis["by_category"].items()]
    rows, columns = analysis["rows"], analysis["columns"]
    size = 1.0 + 0.55 * len(rows)
    figure = Figure(figsize=(size * len(panels) + 1.0, size + 0.6))
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, matrix) in zip(axes, panels, strict=True):
        draw_counts(ax, matrix, rows, columns, fontsize=7)
        ax.set_xlabel("hypothesis")
        ax.set_title(name, fontsize=9)
    axes[0].set_ylabel("reference")
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def figure_image(figure: Figure):
    """The figure rendered as an RGB ``PIL.Image`` (what ``MlflowClient.log_image`` takes)."""
    from PIL import Image

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")
