"""Recordings of any length in overlapping windows, stitched on the recording's own timeline.

The scheme is the transformers ``pipeline``'s chunk-and-stride (``chunk_length_s``, ``stride_length_s``): each
window of ``window`` samples is run through the network alone (normalised alone, as the pipeline's feature
extractor normalises each chunk), the first and last ``context`` samples' frames are dropped (except at the
recording's own start and end), and what is left of each window joins the next exactly, frame for frame. The
frames are then decoded once, as one utterance's, so a token that spans two windows is one token. Memory holds
one batch of windows and the kept logits (a few bytes per frame per token), whatever the recording's length.

Windows start on a frame boundary (a multiple of the feature encoder's total stride), so a window's frame
``f`` is the recording's frame ``start / stride + f``: the same samples an unchunked forward would read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from broadclass.data.audio import normalize
from broadclass.data.datamodule import pad_waves


@dataclass(frozen=True)
class Window:
    start: int  # first sample
    stop: int  # sample after the last
    first_frame: int  # the recording's frame of the window's first
    keep_start: int  # first frame of the recording that this window's output gives
    keep_stop: int  # frame after the last it gives


def plan_windows(total: int, window: int, context: int, stride: int, frames: Callable[[int], int]) -> list[Window]:
    """The windows of a recording of ``total`` samples: ``window`` samples each (the last may be shorter), the
    next starting ``window - 2 * context`` later; ``window`` and ``context`` are multiples of the encoder's
    ``stride`` (samples per frame), ``frames(n)`` the frames it gives for ``n`` samples."""
    if window % stride or context % stride:
        raise ValueError(f"window ({window}) and context ({context}) samples must be multiples of {stride}")
    if not stride <= context < window / 2 or window // stride - frames(window) > context // stride:
        raise ValueError(
            f"a window's context ({context} samples) must cover the frames a window lacks at its end and leave "
            f"part of the window ({window} samples) to keep: context >= {stride}, window > 2 x context"
        )
    planned = []
    start = 0
    while True:
        stop = min(start + window, total)
        first = start // stride
        last = stop >= total
        keep_start = first + (context // stride if start else 0)
        keep_stop = first + (frames(stop - start) if last else (window - context) // stride)
        planned.append(Window(start, stop, first, keep_start, keep_stop))
        if last:
            return planned
        start += window - 2 * context


@dataclass
class StitchedOutput:
    """A recording's network output, its windows' kept frames joined: ``logits`` (1, frames, tokens) and
    ``output_lengths`` as the module's forward gives them; per window, its category head's probabilities
    (None without a head)."""

    logits: torch.Tensor
    output_lengths: torch.Tensor
    head_probabilities: list[torch.Tensor] | None
    windows: Sequence[Window]

    def as_forward_output(self) -> dict[str, torch.Tensor]:
        """The module's forward output for the whole recording. The head's answer for the whole is its windows'
        probabilities averaged, weighted by the frames each gives, as logits (their log: softmax gives them back)."""
        out = {"logits": self.logits, "output_lengths": self.output_lengths}
        if self.head_probabilities is not None:
            weights = torch.tensor([float(w.keep_stop - w.keep_start) for w in self.windows])
            mean = (torch.stack(self.head_probabilities) * weights[:, None]).sum(0) / weights.sum()
            out["category_logits"] = mean.log()[None]
        return out


def infer_windows(
    module: torch.nn.Module,
    read: Callable[[int, int], np.ndarray],
    windows: Sequence[Window],
    batches: Sequence[Sequence[int]],
) -> StitchedOutput:
    """Run ``module.infer`` on ``windows`` of a recording (``read(start, stop)`` gives their samples), in
    ``batches`` of window indices, and join their kept frames."""
    kept: dict[int, torch.Tensor] = {}
    heads: dict[int, torch.Tensor] = {}
    for batch in batches:
        audio, mask = pad_waves([normalize(read(windows[i].start, windows[i].stop)) for i in batch])
        out = module.infer(audio.to(module.device), mask.to(module.device))
        for row, i in enumerate(batch):
            offset = windows[i].keep_start - windows[i].first_frame
            kept[i] = out["logits"][row, offset : offset + windows[i].keep_stop - windows[i].keep_start].float().cpu()
            if "category_logits" in out:
                heads[i] = out["category_logits"][row].float().softmax(-1).cpu()
    logits = torch.cat([kept[i] for i in range(len(windows))])[None]
    return StitchedOutput(
        logits, torch.tensor([logits.shape[1]]), [heads[i] for i in range(len(windows))] if heads else None, windows
    )
