"""The error analysis: class alignment and confusion (against jiwer and a hand-worked example), token
segments and their durations (against constructed CTC output and numpy), and what validation logs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import jiwer
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from transformers import Wav2Vec2Config

from broadclass.metrics.alignment import ClassConfusion, align_tokens, edit_counts
from broadclass.metrics.durations import ClassDurations, duration_summary
from broadclass.metrics.errors import edit_distance, strip_tags
from broadclass.model.decoding import frame_seconds, greedy_decode, greedy_segments
from tests.helpers.runs import TrainedRun

CLASSES = ["vowel", "plosive", "fricative"]
CLASS_TAGS = ["v", "p", "f"]
CATEGORIES = ["male", "whisper"]
CATEGORY_TAGS = ["m", "w"]


def random_tokens(rng: random.Random, length: int) -> list[str]:
    tokens = [f"{rng.choice(CLASS_TAGS)}_{rng.choice(CATEGORY_TAGS)}" for _ in range(length)]
    for _ in range(rng.randint(0, 2)):  # word boundaries are not aligned
        tokens.insert(rng.randint(0, len(tokens)), "|")
    return tokens


def jiwer_chunks(ref: list[str], hyp: list[str]) -> jiwer.WordOutput:
    """jiwer over the class tags as words."""
    return jiwer.process_words(" ".join(strip_tags(ref)) or "", " ".join(strip_tags(hyp)) or "")


def test_alignment_has_jiwers_substitutions_deletions_and_insertions():
    rng = random.Random(0)
    for _ in range(500):
        ref, hyp = random_tokens(rng, rng.randint(1, 12)), random_tokens(rng, rng.randint(1, 12))
        pairs = align_tokens(ref, hyp)
        counts = edit_counts(pairs)
        out = jiwer_chunks(ref, hyp)
        assert (counts["substitutions"], counts["deletions"], counts["insertions"]) == (
            out.substitutions,
            out.deletions,
            out.insertions,
        ), (ref, hyp)
        # The alignment TER counts (our own dynamic programme) has the same length.
        assert sum(counts.values()) == edit_distance(strip_tags(ref), strip_tags(hyp))
        # Every reference and hypothesis token appears once, in order.
        assert [r for r, _ in pairs if r is not None] == [t for t in ref if t != "|"]
        assert [h for _, h in pairs if h is not None] == [t for t in hyp if t != "|"]
        # Pairs line up with jiwer's chunks: an "equal" chunk pairs equal classes, "substitute" different ones.
        chunk_types = []
        for chunk in out.alignments[0]:
            length = max(chunk.ref_end_idx - chunk.ref_start_idx, chunk.hyp_end_idx - chunk.hyp_start_idx)
            chunk_types += [chunk.type] * length
        ours = [
            "delete"
            if h is None
            else "insert"
            if r is None
            else "equal"
            if r.rpartition("_")[0] == h.rpartition("_")[0]
            else "substitute"
            for r, h in pairs
        ]
        assert ours == chunk_types, (ref, hyp)


def confusion(refs, hyps, categories) -> ClassConfusion:
    metric = ClassConfusion(CLASSES, CLASS_TAGS, CATEGORIES, CATEGORY_TAGS)
    metric.update(refs, hyps, categories)
    return metric


def test_hand_worked_class_matrix_rates_and_tag_confusion():
    # Each alignment is the only minimal one:
    # male     v p | f v  vs  v f f v    v=v, p→f, f=f (tag m→w), v=v
    # whisper  p f        vs  p | f f    p=p (tag w→m), f=f, one f inserted
    refs = [["v_m", "p_m", "|", "f_m", "v_m"], ["p_w", "f_w"]]
    hyps = [["v_m", "f_m", "f_w", "v_m"], ["p_m", "|", "f_w", "f_w"]]
    analysis = confusion(refs, hyps, [0, 1]).compute()
    assert analysis["rows"] == ["vowel", "plosive", "fricative", "<ins>"]
    assert analysis["columns"] == ["vowel", "plosive", "fricative", "<del>"]
    male = [[2, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    whisper = [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0]]
    assert analysis["by_category"]["male"]["matrix"] == male
    assert analysis["by_category"]["whisper"]["matrix"] == whisper
    assert analysis["total"]["matrix"] == [[2, 0, 0, 0], [0, 1, 1, 0], [0, 0, 2, 0], [0, 0, 1, 0]]
    rates = analysis["total"]["rates"]
    assert rates["fricative"] == {"sub_rate": 0.0, "del_rate": 0.0, "ins_rate": 0.5, "err_rate": 0.5, "support": 2}
    assert rates["plosive"] == {"sub_rate": 0.5, "del_rate": 0.0, "ins_rate": 0.0, "err_rate": 0.5, "support": 2}
    assert rates["vowel"]["err_rate"] == 0.0
    assert analysis["by_category"]["whisper"]["rates"]["fricative"]["ins_rate"] == 1.0
    # Tag confusion over class-matched pairs, rows the reference tag (m, w), columns the hypothesis tag.
    tags = analysis["tag_confusion"]
    assert tags["by_class"]["vowel"] == [[2, 0], [0, 0]]
    assert tags["by_class"]["plosive"] == [[0, 0], [1, 0]]
    assert tags["by_class"]["fricative"] == [[0, 1], [0, 1]]
    assert tags["total"] == [[2, 1], [1, 1]]
    # A deletion: the reference token's class row, the last column.
    assert confusion([["p_m"]], [[]], [0]).compute()["total"]["matrix"][1] == [0, 0, 0, 1]


def test_class_confusion_merged_across_processes_equals_one_pass():
    rng = random.Random(1)
    refs = [random_tokens(rng, rng.randint(0, 8)) for _ in range(20)]
    hyps = [random_tokens(rng, rng.randint(0, 8)) for _ in range(20)]
    categories = [rng.randrange(2) for _ in range(20)]
    whole = confusion(refs, hyps, categories)
    first, second = confusion(refs[:7], hyps[:7], categories[:7]), confusion(refs[7:], hyps[7:], categories[7:])
    first.merge_state(second)  # what the DDP "sum" reduction does with the states
    assert first.compute() == whole.compute()
    total = np.array(whole.compute()["total"]["matrix"])
    errors = sum(edit_distance(strip_tags(r), strip_tags(h)) for r, h in zip(refs, hyps, strict=True))
    assert total.sum() - np.trace(total) == errors


def test_unknown_class_tag_is_named():
    with pytest.raises(ValueError, match="'x_m'.*'x'"):
        confusion([["x_m"]], [["v_m"]], [0])


def logits_for(frames: list[int], vocabulary: int = 5) -> torch.Tensor:
    logits = torch.zeros(1, len(frames), vocabulary)
    logits[0, torch.arange(len(frames)), torch.tensor(frames)] = 5.0
    return logits


def test_segments_start_at_their_first_frame_and_end_where_the_next_token_starts():
    # blank=0. Frames: 0 0 3 3 0 4 0 0 3 0 1 2 2 0 0 (padding beyond length 13 ignored)
    frames = [0, 0, 3, 3, 0, 4, 0, 0, 3, 0, 1, 2, 2, 0, 0]
    logits = logits_for(frames)
    lengths = torch.tensor([13])
    segments = greedy_segments(logits, lengths)
    assert segments == [[(3, 2, 5), (4, 5, 8), (3, 8, 10), (1, 10, 11), (2, 11, 13)]]
    assert [[t for t, _, _ in s] for s in segments] == greedy_decode(logits, lengths)
    # The last token's run is cut at the utterance's length.
    assert greedy_segments(logits, torch.tensor([12]))[0][-1] == (2, 11, 12)
    assert greedy_segments(logits_for([0, 0, 0]), torch.tensor([3])) == [[]]


def test_frame_seconds_from_the_conv_strides():
    assert frame_seconds(Wav2Vec2Config(), 16_000) == pytest.approx(0.02)  # 5·2·2·2·2·2·2 = 320 samples
    assert frame_seconds(
        Wav2Vec2Config(conv_dim=(8, 8), conv_stride=(4, 2), conv_kernel=(4, 2)), 8_000
    ) == pytest.approx(0.001)


def test_duration_summary_is_numpys_on_the_raw_durations():
    rng = np.random.default_rng(0)
    frames = rng.integers(1, 30, size=101)
    histogram = np.bincount(frames, minlength=40)
    summary = duration_summary(histogram, int(frames.sum()), 0.02)
    q1, median, q3 = np.quantile(frames * 0.02, [0.25, 0.5, 0.75])
    assert summary["count"] == 101
    assert summary["mean"] == pytest.approx(frames.mean() * 0.02)
    assert (summary["q1"], summary["median"], summary["q3"]) == pytest.approx((q1, median, q3))
    assert summary["iqr"] == pytest.approx(q3 - q1)
    metric = ClassDurations(CLASSES, CATEGORIES, 0.02)
    metric.update([[(0, 3), (2, 5)], [(0, 7)]], [0, 1])
    out = metric.compute()["classes"]
    assert out["vowel"]["all"]["count"] == 2 and out["vowel"]["all"]["mean"] == pytest.approx(0.1)
    assert out["vowel"]["male"]["median"] == pytest.approx(0.06)
    assert out["plosive"]["whisper"]["count"] == 0


def test_validation_logs_the_class_confusion_equal_to_jiwer(trained_run: TrainedRun, tmp_path: Path):
    client = MlflowClient(trained_run.tracking_uri)
    run_id = trained_run.run_id
    steps = sorted({m.step for m in client.get_metric_history(run_id, "val/accuracy")})
    assert steps
    for step in steps:
        folder = f"val/step_{step:06d}"
        path = client.download_artifacts(run_id, f"{folder}/predictions.jsonl", str(tmp_path))
        predictions = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]
        analysis = json.loads(
            Path(client.download_artifacts(run_id, f"{folder}/class_confusion.json", str(tmp_path))).read_text()
        )
        classes = analysis["classes"]
        matrix = np.array(analysis["total"]["matrix"])
        gap = len(classes)
        sentences = [(p["reference"].split(), p["hypothesis"].split()) for p in predictions]
        out = jiwer.process_words(
            [" ".join(strip_tags(r)) for r, _ in sentences], [" ".join(strip_tags(h)) or "" for _, h in sentences]
        )
        assert matrix[:gap, gap].sum() == out.deletions
        assert matrix[gap, :gap].sum() == out.insertions
        assert matrix[:gap, :gap].sum() - np.trace(matrix[:gap, :gap]) == out.substitutions
        for c, name in enumerate(classes):
            support = matrix[c].sum()
            errors = matrix[c].sum() - matrix[c, c] + matrix[gap, c]
            logged = [
                m.value for m in client.get_metric_history(run_id, f"val/class/{name}/err_rate") if m.step == step
            ]
            assert logged and logged[-1] == pytest.approx(errors / support if support else 0.0, rel=1e-6)
        durations = json.loads(
            Path(client.download_artifacts(run_id, f"{folder}/durations.json", str(tmp_path))).read_text()
        )
        decoded = sum(1 for _, h in sentences for t in h if t != "|")
        # The session's model decodes tokens, so the matrix has more than deletions to check.
        assert decoded > 0 and out.hits + out.substitutions > 0
        assert sum(d["all"]["count"] for d in durations["classes"].values()) == decoded
        assert durations["frame_seconds"] == pytest.approx(0.02)


def test_segments_of_random_logits_are_the_greedy_runs():
    torch.manual_seed(0)
    for _ in range(100):
        logits = torch.randn(3, 40, 5)
        logits[..., 0] += 1.0  # more blanks, as in CTC output
        lengths = torch.randint(0, 41, (3,))
        segments = greedy_segments(logits, lengths)
        assert [[t for t, _, _ in s] for s in segments] == greedy_decode(logits, lengths)
        best = logits.argmax(-1)
        for b, utterance in enumerate(segments):
            for i, (token, start, end) in enumerate(utterance):
                assert best[b, start] == token and (start == 0 or best[b, start - 1] != token)
                assert start < end <= lengths[b]
                if i + 1 < len(utterance):
                    assert end == utterance[i + 1][1]
                else:  # the last token's own run
                    assert best[b, end - 1] == token and (end == lengths[b] or best[b, end] != token)
