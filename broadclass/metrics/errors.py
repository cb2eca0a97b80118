"""Word and token error counts over broad-class token sequences.

A *word* is the run of tokens between word boundaries, compared as a whole (``v_m+p_m``), so one wrong
class or category tag makes the whole word wrong. The token error rate compares class tags only
(``v_m`` → ``v``): how well the broad classes are recognised regardless of the category decision.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from rapidfuzz.distance import Levenshtein

from broadclass.data.labels import WORD_BOUNDARY, split_token

# Joins a word's tokens into one comparable string; not a character any class or category tag uses.
WORD_JOINER = "+"


def edit_distance(ref: Sequence[Hashable], hyp: Sequence[Hashable]) -> int:
    """Levenshtein distance (unit-cost substitutions, insertions and deletions) between two sequences.

    RapidFuzz's, whose edit script :func:`broadclass.metrics.alignment.aligned_positions` reads (and jiwer
    reports): every count of edits in the package comes from the one implementation.
    """
    return Levenshtein.distance(ref, hyp)


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
