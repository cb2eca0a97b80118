"""Figures for MLflow: the confusion matrix with category names."""

from __future__ import annotations

from collections.abc import Sequence

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
