"""Bootstrap confidence intervals over utterances, and paired tests between two runs.

The unit resampled is the speaker when every utterance has one (utterances of one speaker are not
independent: resampling them one by one would give intervals too narrow), else the utterance. Every
statistic is a ratio of sums over utterances (accuracy, macro-F1 from the category confusion, TER, each
class's error rate), so each resample only sums per-cluster counts. Intervals are scipy's percentile
bootstrap; McNemar's test is the exact binomial test on the discordant decisions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from broadclass.data.markdown import markdown_table
from broadclass.metrics.alignment import TokenIndex, align_tokens, alignment_counts

CONFIDENCE = 0.95
RESAMPLES = 2000
# A bootstrap needs at least two units (speakers or utterances) to resample; with fewer, no interval.
MIN_CLUSTERS = 2


@dataclass
class UtteranceScores:
    """Per-utterance counts of one run's evaluation, from its ``predictions.jsonl`` records."""

    ids: list[str]
    clusters: list[str]  # the speaker of each utterance, or its id when speakers are not all known
    clustered_by: str  # "speaker" or "utterance"
    true: np.ndarray  # reference category ids
    predicted: np.ndarray  # the decision rule's category ids
    token_errors: np.ndarray  # edits over class tags (the TER's numerator)
    tokens: np.ndarray  # reference class tokens
    class_errors: np.ndarray  # n × C: substitutions + deletions of the class's tokens, insertions of it
    class_support: np.ndarray  # n × C: reference tokens of the class
    class_names: list[str]
    num_categories: int


def utterance_scores(
    predictions: Sequence[Mapping[str, Any]],
    rule: str,
    class_names: Sequence[str],
    class_tags: Sequence[str],
    num_categories: int,
) -> UtteranceScores:
    """Counts per utterance of records with ``id``, ``category``, ``predicted[rule]``, ``reference`` and
    ``hypothesis`` (space-separated tokens) and, optionally, ``speaker``."""
    if not predictions:
        raise ValueError("no utterances to score")
    index = TokenIndex(class_tags, [])
    gap = len(class_tags)
    errors, support = [], []
    for p in predictions:
        matrix, _ = alignment_counts(align_tokens(p["reference"].split(), p["hypothesis"].split()), index)
        classes = matrix[:gap]
        support.append(classes.sum(axis=1))
        errors.append(classes.sum(axis=1) - np.diag(classes[:, :gap]) + matrix[gap, :gap])
    speakers = [p.get("speaker") for p in predictions]
    by_speaker = all(s is not None for s in speakers)
    class_errors, class_support = np.array(errors, dtype=np.int64), np.array(support, dtype=np.int64)
    # A deleted or substituted token is one error of its class; an inserted one is one error of the
    # class inserted: the per-class errors add up to the utterance's edit count.
    token_errors = class_errors.sum(axis=1)
    return UtteranceScores(
        ids=[str(p["id"]) for p in predictions],
        clusters=[str(s) for s in speakers] if by_speaker else [str(p["id"]) for p in predictions],
        clustered_by="speaker" if by_speaker else "utterance",
        true=np.array([int(p["category"]) for p in predictions]),
        predicted=np.array([int(p["predicted"][rule]) for p in predictions]),
        token_errors=token_errors,
        tokens=class_support.sum(axis=1),
        class_errors=class_errors,
        class_support=class_support,
        class_names=list(class_names),
        num_categories=num_categories,
    )


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


class _Statistics:
    """Accuracy, macro-F1, TER and each class's error rate from summed per-cluster counts."""

    def __init__(self, scores: UtteranceScores):
        k, c = scores.num_categories, len(scores.class_names)
        pairs = np.zeros((len(scores.ids), k * k))
        pairs[np.arange(len(scores.ids)), scores.true * k + scores.predicted] = 1
        per_utterance = np.column_stack(
            [pairs, scores.token_errors, scores.tokens, scores.class_errors, scores.class_support]
        )
        names = sorted(set(scores.clusters))
        number = {name: i for i, name in enumerate(names)}
        self.counts = np.zeros((len(names), per_utterance.shape[1]))
        np.add.at(self.counts, [number[name] for name in scores.clusters], per_utterance)
        self.k, self.c = k, c
        self.names = ["accuracy", "macro_f1", "ter", *(f"class/{name}/err_rate" for name in scores.class_names)]

    def __call__(self, clusters: np.ndarray, axis: int = -1) -> np.ndarray:
        """The statistics (first axis) of resampled cluster numbers (last axis)."""
        total = self.counts[clusters.astype(np.int64)].sum(axis=-2)
        k, c = self.k, self.c
        confusion = total[..., : k * k].reshape(*total.shape[:-1], k, k)
        hits = np.diagonal(confusion, axis1=-2, axis2=-1)
        accuracy = _safe_ratio(hits.sum(-1), confusion.sum((-2, -1)))
        f1 = _safe_ratio(2 * hits, confusion.sum(-1) + confusion.sum(-2)).mean(-1)
        errors, tokens = total[..., k * k], total[..., k * k + 1]
        class_errors = total[..., k * k + 2 : k * k + 2 + c]
        class_support = total[..., k * k + 2 + c :]
        rows = [
            accuracy,
            f1,
            _safe_ratio(errors, tokens),
            *np.moveaxis(_safe_ratio(class_errors, class_support), -1, 0),
        ]
        return np.stack(rows)


def bootstrap_intervals(
    scores: UtteranceScores, resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0
) -> dict[str, Any]:
    """Each statistic's value and percentile-bootstrap interval (``low``, ``high``) over clusters."""
    statistics = _Statistics(scores)
    clusters = np.arange(len(statistics.counts))
    values = statistics(clusters)
    if len(clusters) < MIN_CLUSTERS:  # nothing to resample: no interval (None)
        low = high = [None] * len(values)
    else:
        result = _percentile_bootstrap(statistics, len(clusters), resamples, confidence, seed)
        low, high = (bound.tolist() for bound in result.confidence_interval)
    return {
        "confidence": confidence,
        "resamples": resamples,
        "clustered_by": scores.clustered_by,
        "clusters": len(clusters),
        "utterances": len(scores.ids),
        "metrics": {
            name: {"value": float(values[i]), "low": low[i], "high": high[i]} for i, name in enumerate(statistics.names)
        },
    }


def paired_comparison(
    a: UtteranceScores, b: UtteranceScores, resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0
) -> dict[str, Any]:
    """Two runs on the same utterances (matched by id): McNemar's exact test on the category decisions,
    and a paired bootstrap of TER(A) − TER(B) with its interval and two-sided p-value."""
    position_b = {utt: i for i, utt in enumerate(b.ids)}
    common = [(i, position_b[utt]) for i, utt in enumerate(a.ids) if utt in position_b]
    if not common:
        raise ValueError("the two runs share no utterance id: a paired test needs the same utterances")
    ia, ib = np.array(common).T
    if not np.array_equal(a.true[ia], b.true[ib]):
        raise ValueError("the two runs give some utterances different reference categories")
    right_a, right_b = a.predicted[ia] == a.true[ia], b.predicted[ib] == b.true[ib]
    only_a, only_b = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    mcnemar = stats.binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    clusters = [a.clusters[i] for i in ia]
    names = sorted(set(clusters))
    number = {name: i for i, name in enumerate(names)}
    counts = np.zeros((len(names), 3))
    np.add.at(
        counts, [number[c] for c in clusters], np.column_stack([a.token_errors[ia], b.token_errors[ib], a.tokens[ia]])
    )

    def ter_difference(resampled: np.ndarray, axis: int = -1) -> np.ndarray:
        total = counts[resampled.astype(np.int64)].sum(axis=-2)
        return _safe_ratio(total[..., 0] - total[..., 1], total[..., 2])

    low = high = p_ter = None
    if len(names) >= MIN_CLUSTERS:
        result = _percentile_bootstrap(ter_difference, len(names), resamples, confidence, seed)
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
        differences = result.bootstrap_distribution
        # Two-sided: twice the share of resampled differences on the far side of zero (at most 1).
        p_ter = min(1.0, 2 * min(float((differences <= 0).mean()), float((differences >= 0).mean())))
    return {
        "utterances": len(common),
        "clustered_by": a.clustered_by if a.clustered_by == b.clustered_by else "utterance",
        "clusters": len(names),
        "accuracy": {"a": float(right_a.mean()), "b": float(right_b.mean())},
        "mcnemar": {"only_a_right": only_a, "only_b_right": only_b, "p_value": float(mcnemar)},
        "ter_difference": {
            "a_minus_b": float(ter_difference(np.arange(len(names)))),
            "low": low,
            "high": high,
            "p_value": p_ter,
            "confidence": confidence,
            "resamples": resamples,
        },
    }


def intervals_markdown(intervals: Mapping[str, Any]) -> str:
    """A Markdown table of :func:`bootstrap_intervals`."""
    lines = [
        f"{intervals['confidence']:.0%} bootstrap intervals over {intervals['clusters']} "
        f"{intervals['clustered_by']}s ({intervals['utterances']} utterances, {intervals['resamples']} resamples)",
        "",
        markdown_table(
            ["metric", "value", "interval"],
            [[name, f"{m['value']:.4f}", interval_text(m)] for name, m in intervals["metrics"].items()],
            align=[":--", "--:", ":--:"],
        ).rstrip("\n"),
    ]
    return "\n".join(lines)


def interval_text(bounds: Mapping[str, Any], sign: str = "") -> str:
    """``[low, high]``, or why there is none (fewer than two units to resample)."""
    if bounds["low"] is None:
        return f"none (fewer than {MIN_CLUSTERS} units)"
    return f"[{bounds['low']:{sign}.4f}, {bounds['high']:{sign}.4f}]"


def paired_markdown(paired: Mapping[str, Any], name_a: str = "A", name_b: str = "B") -> str:
    """The paired tests of :func:`paired_comparison` in a few Markdown lines."""
    m, t = paired["mcnemar"], paired["ter_difference"]
    return "\n".join(
        [
            f"Paired on {paired['utterances']} utterances ({paired['clusters']} {paired['clustered_by']}s resampled):",
            "",
            f"- category decisions, McNemar exact test: {name_a} alone right {m['only_a_right']}, "
            f"{name_b} alone right {m['only_b_right']}, p = {m['p_value']:.4g} "
            f"(accuracy {paired['accuracy']['a']:.4f} vs {paired['accuracy']['b']:.4f})",
            f"- TER({name_a}) − TER({name_b}) = {t['a_minus_b']:+.4f}, {t['confidence']:.0%} paired bootstrap "
            f"interval {interval_text(t, '+')}, p = "
            + (f"{t['p_value']:.4g}" if t["p_value"] is not None else "none")
            + f" ({t['resamples']} resamples)",
        ]
    )


def _percentile_bootstrap(statistic, clusters: int, resamples: int, confidence: float, seed: int):
    """scipy's percentile bootstrap over ``clusters`` resampled units (``statistic`` takes their indices)."""
    return stats.bootstrap(
        (np.arange(clusters),),
        statistic,
        vectorized=True,
        n_resamples=resamples,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
