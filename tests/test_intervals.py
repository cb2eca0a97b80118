"""Bootstrap intervals and paired tests (broadclass.metrics.intervals): point values equal to sklearn and
jiwer, intervals that widen when speakers cluster, and McNemar's exact p-value worked by hand."""

from __future__ import annotations

import random

import jiwer
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from broadclass.metrics.intervals import (
    bootstrap_intervals,
    intervals_markdown,
    paired_comparison,
    paired_markdown,
    utterance_scores,
)

CLASSES, TAGS = ["vowel", "plosive", "fricative"], ["v", "p", "f"]


def records(n: int, seed: int, accuracy: float = 0.7, token_error: float = 0.2, speakers: int | None = None):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        category = rng.randrange(3)
        ref = [f"{rng.choice(TAGS)}_m" for _ in range(rng.randint(3, 9))]
        hyp = [t if rng.random() > token_error else f"{rng.choice(TAGS)}_m" for t in ref if rng.random() > 0.05]
        out.append(
            {
                "id": f"u{i}",
                "category": category,
                "predicted": {"vote": category if rng.random() < accuracy else (category + 1) % 3},
                "reference": " ".join(ref),
                "hypothesis": " ".join(hyp),
                "speaker": f"s{i % speakers}" if speakers else None,
            }
        )
    return out


def scores(predictions):
    return utterance_scores(predictions, "vote", CLASSES, TAGS, 3)


def test_values_are_sklearns_and_jiwers_and_inside_their_intervals():
    predictions = records(80, seed=0)
    result = bootstrap_intervals(scores(predictions), resamples=500)
    metrics = result["metrics"]
    truth, predicted = [p["category"] for p in predictions], [p["predicted"]["vote"] for p in predictions]
    assert metrics["accuracy"]["value"] == pytest.approx(accuracy_score(truth, predicted))
    assert metrics["macro_f1"]["value"] == pytest.approx(f1_score(truth, predicted, average="macro"))
    strip = lambda text: " ".join(t.split("_")[0] for t in text.split())  # noqa: E731
    ter = jiwer.wer([strip(p["reference"]) for p in predictions], [strip(p["hypothesis"]) for p in predictions])
    assert metrics["ter"]["value"] == pytest.approx(ter)
    assert result["clustered_by"] == "utterance" and result["clusters"] == 80
    for name, m in metrics.items():
        assert m["low"] <= m["value"] <= m["high"], name
    assert 0 < metrics["accuracy"]["high"] - metrics["accuracy"]["low"] < 0.4


def test_class_error_rates_add_up_to_the_edits():
    s = scores(records(30, seed=1))
    assert (s.class_errors.sum(axis=1) == s.token_errors).all()
    result = bootstrap_intervals(s, resamples=200)["metrics"]
    rate = s.class_errors[:, 1].sum() / s.class_support[:, 1].sum()
    assert result["class/plosive/err_rate"]["value"] == pytest.approx(rate)


def test_speaker_clusters_widen_the_interval_when_a_speakers_utterances_agree():
    # 10 speakers of 12 utterances; a speaker's category decisions are all right or all wrong.
    predictions = records(120, seed=2, speakers=10)
    for p in predictions:
        right = int(p["speaker"][1:]) < 6
        p["predicted"]["vote"] = p["category"] if right else (p["category"] + 1) % 3
    clustered = bootstrap_intervals(scores(predictions), resamples=1000)
    for p in predictions:
        p["speaker"] = None
    independent = bootstrap_intervals(scores(predictions), resamples=1000)
    width = lambda r: r["metrics"]["accuracy"]["high"] - r["metrics"]["accuracy"]["low"]  # noqa: E731
    assert clustered["clustered_by"] == "speaker" and clustered["clusters"] == 10
    assert independent["clustered_by"] == "utterance"
    assert width(clustered) > 2 * width(independent)


def test_mcnemar_exact_p_value_and_paired_ter():
    a = records(40, seed=3, accuracy=1.0)
    b = [dict(p, predicted=dict(p["predicted"])) for p in a]
    # B wrong on 10 utterances A gets right; A wrong on 2 that B gets right.
    for p in b[:10]:
        p["predicted"]["vote"] = (p["category"] + 1) % 3
    for p in a[10:12]:
        p["predicted"]["vote"] = (p["category"] + 1) % 3
    paired = paired_comparison(scores(a), scores(b), resamples=500)
    assert paired["mcnemar"]["only_a_right"] == 10 and paired["mcnemar"]["only_b_right"] == 2
    # Two-sided exact binomial: 2 · P(X ≤ 2), X ~ Bin(12, 1/2) = 2 · (1 + 12 + 66) / 4096.
    assert paired["mcnemar"]["p_value"] == pytest.approx(2 * 79 / 4096)
    # Same transcriptions: no TER difference, p = 1.
    assert paired["ter_difference"]["a_minus_b"] == 0 and paired["ter_difference"]["p_value"] == 1.0
    # B deletes every hypothesis token: A is better beyond doubt.
    for p in b:
        p["hypothesis"] = ""
    paired = paired_comparison(scores(a), scores(b), resamples=500)
    difference = paired["ter_difference"]
    assert difference["a_minus_b"] < 0 and difference["high"] < 0 and difference["p_value"] < 0.01


def test_runs_without_common_utterances_cannot_be_paired():
    a, b = records(5, seed=4), records(5, seed=5)
    for p in b:
        p["id"] = "other-" + p["id"]
    with pytest.raises(ValueError, match="no utterance id"):
        paired_comparison(scores(a), scores(b))
    assert np.array_equal(scores(a).true, [p["category"] for p in a])


def test_one_speaker_gives_values_without_intervals():
    predictions = records(6, seed=6, speakers=1)
    result = bootstrap_intervals(scores(predictions))
    assert result["clusters"] == 1
    assert all(m["low"] is None and m["high"] is None for m in result["metrics"].values())
    assert "none (fewer than 2 units)" in intervals_markdown(result)
    paired = paired_comparison(scores(predictions), scores(predictions))
    assert paired["ter_difference"]["p_value"] is None and paired["mcnemar"]["p_value"] == 1.0
    assert "p = none" in paired_markdown(paired)
