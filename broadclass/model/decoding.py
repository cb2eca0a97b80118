"""Greedy CTC decoding and the utterance-category decision rules.

Everything that scales with frames runs on the model's device; only the collapsed token ids (a few
dozen per utterance) cross to the host, once per batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

RULES = ("vote", "posterior", "head")
# A decoded token and the encoder frames it spans: (token id, first frame, frame after its end).
Segment = tuple[int, int, int]


def frame_mask(output_lengths: torch.Tensor, num_frames: int) -> torch.Tensor:
    return torch.arange(num_frames, device=output_lengths.device)[None, :] < output_lengths[:, None]


def greedy_decode(logits: torch.Tensor, output_lengths: torch.Tensor, blank_id: int = 0) -> list[list[int]]:
    """Best path per utterance: argmax per frame, repeats collapsed, blanks dropped."""
    best = logits.argmax(dim=-1)
    previous = torch.nn.functional.pad(best[:, :-1], (1, 0), value=-1)
    keep = (best != blank_id) & (best != previous) & frame_mask(output_lengths, best.shape[1])
    counts = keep.sum(dim=1).tolist()
    flat = best[keep].tolist()
    out, start = [], 0
    for n in counts:
        out.append(flat[start : start + n])
        start += n
    return out


def category_posteriors(
    logits: torch.Tensor, output_lengths: torch.Tensor, token_category: torch.Tensor, num_categories: int
) -> torch.Tensor:
    """Per utterance, each category's probability mass summed over real frames, normalised to sum 1.

    Blank and word-boundary tokens (category -1) carry no category evidence and are left out.
    """
    probs = logits.float().softmax(dim=-1)
    probs = probs * frame_mask(output_lengths, logits.shape[1]).unsqueeze(-1)
    assignment = torch.zeros(token_category.numel(), num_categories, device=logits.device)
    tagged = token_category >= 0
    assignment[tagged.nonzero().squeeze(1), token_category[tagged]] = 1.0
    mass = probs.sum(dim=1) @ assignment
    return mass / mass.sum(dim=1, keepdim=True).clamp_min(1e-12)


def vote_share(decoded: Sequence[Sequence[int]], token_category: Sequence[int], num_categories: int) -> torch.Tensor:
    """Share of decoded category-tagged tokens per category (all zeros when nothing was decoded)."""
    shares = torch.zeros(len(decoded), num_categories)
    for row, ids in enumerate(decoded):
        for i in ids:
            if token_category[i] >= 0:
                shares[row, token_category[i]] += 1
    return shares / shares.sum(dim=1, keepdim=True).clamp_min(1)


def vote(decoded: Sequence[Sequence[int]], token_category: Sequence[int], num_categories: int) -> torch.Tensor:
    """Majority of the decoded tokens' category tags: the category of the largest :func:`vote_share`; ties go
    to the lowest id (``argmax`` takes the first maximum); nothing decoded → 0."""
    return vote_share(decoded, token_category, num_categories).argmax(dim=1)


def frame_seconds(config: Any, sample_rate: int) -> float:
    """Seconds between encoder frames: the product of the feature encoder's conv strides over the sample
    rate (320 / 16 000 = 20 ms for wav2vec2)."""
    return math.prod(config.conv_stride) / sample_rate


def greedy_segments(logits: torch.Tensor, output_lengths: torch.Tensor, blank_id: int = 0) -> list[list[Segment]]:
    """The best path's tokens with the frames they span: ``(token id, start frame, end frame)``.

    A token starts at the first frame of its run of argmax frames and ends where the next decoded token
    starts (word boundaries included), so blank frames after a token (CTC's peaky output) count towards
    it; the last token ends with its own run. The ids are those of :func:`greedy_decode`.
    """
    best = logits.argmax(dim=-1)
    valid = frame_mask(output_lengths, best.shape[1])
    token = (best != blank_id) & valid
    starts = token & (best != torch.nn.functional.pad(best[:, :-1], (1, 0), value=-1))
    # A run ends before a different frame, or at the utterance's last frame.
    following = torch.nn.functional.pad(best[:, 1:], (0, 1), value=-1)
    following_valid = torch.nn.functional.pad(valid[:, 1:], (0, 1), value=False)
    ends = token & ((best != following) | ~following_valid)
    counts = starts.sum(dim=1).tolist()
    ids = best[starts].tolist()
    start_frames = starts.nonzero()[:, 1].tolist()
    end_frames = (ends.nonzero()[:, 1] + 1).tolist()
    segments, first = [], 0
    for n in counts:
        row = range(first, first + n)
        segments.append(
            [(ids[i], start_frames[i], start_frames[i + 1] if i + 1 < first + n else end_frames[i]) for i in row]
        )
        first += n
    return segments
