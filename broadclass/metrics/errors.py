"""Word and token error counts over broad-class token sequences.

A *word* is the run of tokens between word boundaries, compared as a whole (``v_m+p_m``), so one wrong
class or category tag makes the whole word wrong. The token error rate compares class tags only
(``v_m`` → ``v``): how well the broad classes are recognised regardless of the category decision.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from broadclass.data.labels import WORD_BOUNDARY, split_token

# Joins a word's tokens into one comparable string; not a character any class or category tag uses.
WORD_JOINER = "+"


def edit_distance(ref: Sequence[Hashable], hyp: Sequence[Hashable]) -> int:
    """Levenshtein distance (unit-cost substitutions, insertions and deletions) between two sequences.

    Row-by-row dynamic programme with each row computed by numpy: the cost is one vectorised step per
    element of the shorter sequence, not one Python step per cell.
    """
    # Unit costs make the distance symmetric, so the loop can run over the shorter sequence.
    outer, inner = (ref, hyp) if len(ref) <= len(hyp) else (hyp, ref)
    if not outer:
        return len(inner)
    ids: dict[Hashable, int] = {}
    inner_ids = np.fromiter((ids.setdefault(t, len(ids)) for t in inner), dtype=np.int64, count=len(inner))
    # Elements of `outer` never seen in `inner` get an id of their own, so they match nothing.
    outer_ids = [ids.setdefault(t, len(ids)) for t in outer]
    offsets = np.arange(len(inner) + 1)
    row = offsets.copy()
    candidates = np.empty_like(row)
    for i, token in enumerate(outer_ids, start=1):
        # Substitution (or match) and deletion depend only on the previous row.
        candidates[0] = i
        np.minimum(row[1:] + 1, row[:-1] + (inner_ids != token), out=candidates[1:])
        # Insertions chain along the row: d[j] = min over k <= j of candidates[k] + (j - k),
        # i.e. a running minimum of candidates - offsets, shifted back.
        row = np.minimum.accumulate(candidates - offsets) + offsets
    return int(row[-1])


def split_words(tokens: Sequence[str], boundary: str = WORD_BOUNDARY) -> list[str]:
    """Words as strings of their tokens (``["v_m+p_m", "n_m"]``); empty words (repeated, leading or
    trailing boundaries in a decoded hypothesis) are dropped."""
    words: list[str] = []
    current: list[str] = []
    for token in tokens:
        if token == boundary:
            if current:
                words.append(WORD_JOINER.join(current))
            current = []
        else:
            current.append(token)
    if current:
        words.append(WORD_JOINER.join(current))
    return words


def strip_tags(tokens: Sequence[str], boundary: str = WORD_BOUNDARY) -> list[str]:
    """Class tags without their category tag (``v_m`` → ``v``, as :func:`~broadclass.data.labels.split_token`
    reads them), word boundaries removed."""
    return [split_token(token)[0] for token in tokens if token != boundary]


def error_counts(ref_tokens: Sequence[str], hyp_tokens: Sequence[str]) -> tuple[int, int, int, int]:
    """(word errors, reference words, token errors, reference tokens) for one utterance.

    Counts rather than rates, so a corpus rate is the sum of errors over the sum of references (as jiwer
    computes it over a list of sentences), not a mean of per-utterance rates.
    """
    ref_words, hyp_words = split_words(ref_tokens), split_words(hyp_tokens)
    ref_classes, hyp_classes = strip_tags(ref_tokens), strip_tags(hyp_tokens)
    return (
        edit_distance(ref_words, hyp_words),
        len(ref_words),
        edit_distance(ref_classes, hyp_classes),
        len(ref_classes),
    )
