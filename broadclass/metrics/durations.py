"""How long each decoded broad class lasts, per category: mean, median and quartiles.

Durations are whole numbers of encoder frames (a CTC segment, see ``broadclass.model.decoding.
greedy_segments``), so a histogram over frame counts holds them exactly and sums across processes; the
quartiles are those of ``numpy.quantile`` over the durations themselves. Segments longer than the last
bin are counted in it (their exact frames still enter the mean).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric

# 10 s at wav2vec2's 20 ms frames: longer than any broad-class segment of speech.
MAX_FRAMES = 500


def duration_summary(histogram: np.ndarray, frame_sum: int, frame_seconds: float) -> dict[str, float | int]:
    """count, mean, median, q1, q3 and IQR in seconds of durations given as a frame-count histogram."""
    histogram = np.asarray(histogram)
    count = int(histogram.sum())
    if count == 0:
        return {"count": 0, "mean": 0.0, "median": 0.0, "q1": 0.0, "q3": 0.0, "iqr": 0.0}
    frames = np.repeat(np.arange(len(histogram)), histogram)
    q1, median, q3 = np.quantile(frames, [0.25, 0.5, 0.75]) * frame_seconds
    return {
        "count": count,
        "mean": frame_sum / count * frame_seconds,
        "median": float(median),
        "q1": float(q1),
        "q3": float(q3),
        "iqr": float(q3 - q1),
    }


class ClassDurations(Metric):
    """Histograms of decoded-segment frame counts per class and per (reference) category."""

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    histogram: torch.Tensor
    frame_sum: torch.Tensor

    def __init__(
        self, class_names: Sequence[str], category_names: Sequence[str], frame_seconds: float, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.class_names = list(class_names)
        self.category_names = list(category_names)
        self.frame_seconds = frame_seconds
        shape = (len(class_names), len(category_names))
        self.add_state("histogram", default=torch.zeros(*shape, MAX_FRAMES + 1, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("frame_sum", default=torch.zeros(*shape, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, segments: Sequence[Sequence[tuple[int, int]]], categories: Sequence[int]) -> None:
        """Add a batch: per utterance, ``(class number, frames)`` of each decoded class token, and the
        utterance's category id."""
        if len(segments) != len(categories):
            raise ValueError(f"{len(segments)} utterances of segments but {len(categories)} categories")
        histogram = np.zeros(tuple(self.histogram.shape), dtype=np.int64)
        frame_sum = np.zeros(tuple(self.frame_sum.shape), dtype=np.int64)
        for utterance, category in zip(segments, categories, strict=True):
            for class_number, frames in utterance:
                histogram[class_number, int(category), min(frames, MAX_FRAMES)] += 1
                frame_sum[class_number, int(category)] += frames
        self.histogram += torch.from_numpy(histogram).to(self.histogram.device)
        self.frame_sum += torch.from_numpy(frame_sum).to(self.frame_sum.device)

    def compute(self) -> dict[str, Any]:
        """Per class: the summary over all categories (``all``) and per category name, in seconds."""
        histogram, frame_sum = self.histogram.cpu().numpy(), self.frame_sum.cpu().numpy()
        out: dict[str, Any] = {"frame_seconds": self.frame_seconds, "classes": {}}
        for c, name in enumerate(self.class_names):
            out["classes"][name] = {
                "all": duration_summary(histogram[c].sum(axis=0), int(frame_sum[c].sum()), self.frame_seconds),
                **{
                    category: duration_summary(histogram[c, k], int(frame_sum[c, k]), self.frame_seconds)
                    for k, category in enumerate(self.category_names)
                },
            }
        return out
