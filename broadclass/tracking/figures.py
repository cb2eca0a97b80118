"""Figures for MLflow: the category confusion matrix and the class confusion of the error analysis."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402  (after choosing the headless backend)


def confusion_figure(matrix: Sequence[Sequence[int]], names: Sequence[str], title: str = "") -> Figure:
    """Counts with row-normalised colour (recall per true category), true categories as rows."""
    import numpy as np

    counts = np.asarray(matrix, dtype=float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = 1.2 + 0.9 * len(names)
    figure = Figure(figsize=(size + 1.5, size))
    ax = figure.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=ax, label="share of true category")
    ax.set_xticks(range(len(names)), labels=names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), labels=names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(
                j, i, f"{int(counts[i, j])}", ha="center", va="center", color="white" if shares[i, j] > 0.5 else "black"
            )
    ax.set_title(title)
    figure.tight_layout()
    return figure


def figure_image(figure: Figure):
    """The figure rendered as an RGB ``PIL.Image`` (what ``MlflowClient.log_image`` takes)."""
    import numpy as np
    from PIL import Image

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")


def class_confusion_figure(analysis: dict[str, Any], title: str = "") -> Figure:
    """The class confusion (``broadclass.metrics.alignment``) in total and per reference category: counts,
    colour by share of the reference class's row (the last row, insertions, by share of all insertions)."""
    import numpy as np

    panels = [("all categories", analysis["total"]["matrix"])]
    panels += [(name, part["matrix"]) for name, part in analysis["by_category"].items()]
    rows, columns = analysis["rows"], analysis["columns"]
    size = 1.0 + 0.55 * len(rows)
    figure = Figure(figsize=(size * len(panels) + 1.0, size + 0.6))
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, matrix) in zip(axes, panels, strict=True):
        counts = np.asarray(matrix, dtype=float)
        shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(columns)), labels=columns, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(rows)), labels=rows, fontsize=7)
        ax.set_xlabel("hypothesis")
        ax.set_title(name, fontsize=9)
        for i in range(len(rows)):
            for j in range(len(columns)):
                if counts[i, j]:
                    colour = "white" if shares[i, j] > 0.5 else "black"
                    ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=6, color=colour)
    axes[0].set_ylabel("reference")
    figure.suptitle(title)
    figure.tight_layout()
    return figure
