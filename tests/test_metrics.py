"""The metrics package against reference implementations: scikit-learn for the report, jiwer for WER/TER."""

from __future__ import annotations

import random
import re

import jiwer
import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from broadclass.metrics import (
    CategoryConfusion,
    RecognitionErrors,
    category_keys,
    classification_report,
    edit_distance,
    error_counts,
    flatten_report,
    format_report,
    report_from_confusion,
    report_markdown,
    split_words,
    strip_tags,
)

CLASS_TAGS = ["v", "p", "f", "n", "g"]
CATEGORY_TAGS = ["m", "f"]


def sklearn_report(preds, targets, num_classes: int) -> dict:
    return skm.classification_report(targets, preds, labels=list(range(num_classes)), output_dict=True, zero_division=0)


def assert_same_report(ours: dict, theirs: dict, num_classes: int) -> None:
    # sklearn names the micro average "accuracy" only when no label outside `labels` occurs; with
    # labels=range(K) that always holds, but fall back to micro-F1 (the same number) to say why.
    assert ours["accuracy"] == pytest.approx(theirs.get("accuracy", theirs.get("micro avg", {}).get("f1-score")))
    for key in [str(k) for k in range(num_classes)] + ["macro avg", "weighted avg"]:
        assert set(ours[key]) == set(theirs[key])
        for field in ("precision", "recall", "f1-score"):
            assert ours[key][field] == pytest.approx(theirs[key][field], abs=1e-12), (key, field)
        assert isinstance(ours[key]["support"], int)
        assert ours[key]["support"] == theirs[key]["support"]
    assert set(ours) == set(theirs) | {"accuracy"}


def random_utterance(rng: random.Random, max_words: int = 8) -> list[str]:
    """Tagged tokens with word boundaries; one category per utterance, as the data has."""
    category = rng.choice(CATEGORY_TAGS)
    tokens: list[str] = []
    for w in range(rng.randint(1, max_words)):
        if w:
            tokens.append("|")
        tokens += [f"{rng.choice(CLASS_TAGS)}_{category}" for _ in range(rng.randint(1, 4))]
    return tokens


def corrupt(rng: random.Random, tokens: list[str]) -> list[str]:
    """A plausible hypothesis: tokens substituted, dropped, inserted; sometimes stray boundaries."""
    out: list[str] = []
    for token in tokens:
        r = rng.random()
        if r < 0.1:
            continue
        if r < 0.2:
            out.append(f"{rng.choice(CLASS_TAGS)}_{rng.choice(CATEGORY_TAGS)}")
        else:
            out.append(token)
        if rng.random() < 0.05:
            out.append(rng.choice(["|", f"{rng.choice(CLASS_TAGS)}_{rng.choice(CATEGORY_TAGS)}"]))
    return out


def random_corpus(seed: int, size: int = 40) -> tuple[list[list[str]], list[list[str]]]:
    rng = random.Random(seed)
    refs = [random_utterance(rng) for _ in range(size)]
    hyps = [corrupt(rng, ref) for ref in refs]
    hyps[0] = []  # an utterance where nothing was decoded
    return refs, hyps


def corpus_counts(refs: list[list[str]], hyps: list[list[str]]) -> list[int]:
    return [sum(column) for column in zip(*(error_counts(r, h) for r, h in zip(refs, hyps, strict=True)), strict=True)]


# ---- classification report -------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(30))
def test_report_matches_sklearn_on_random_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    num_classes = int(rng.integers(2, 8))
    size = int(rng.integers(1, 300))
    targets = rng.integers(0, num_classes, size)
    # Mostly right, so precision and recall are not all near chance.
    preds = np.where(rng.random(size) < 0.6, targets, rng.integers(0, num_classes, size))
    assert_same_report(
        classification_report(preds, targets, num_classes), sklearn_report(preds, targets, num_classes), num_classes
    )


def test_report_matches_sklearn_when_a_class_is_never_predicted() -> None:
    targets = [0, 1, 2, 2, 1, 0, 2]
    preds = [0, 1, 1, 0, 1, 0, 1]
    assert_same_report(classification_report(preds, targets, 3), sklearn_report(preds, targets, 3), 3)


def test_report_matches_sklearn_when_a_class_is_absent_from_targets() -> None:
    targets = [0, 0, 1, 1, 0]
    preds = [0, 2, 1, 2, 0]
    report = classification_report(preds, targets, 3)
    assert report["2"]["support"] == 0
    assert_same_report(report, sklearn_report(preds, targets, 3), 3)


def test_report_matches_sklearn_when_all_predictions_are_one_class() -> None:
    targets = [0, 1, 2, 3, 1, 2]
    preds = [2] * len(targets)
    assert_same_report(classification_report(preds, targets, 4), sklearn_report(preds, targets, 4), 4)


def test_report_matches_sklearn_on_a_single_sample() -> None:
    assert_same_report(classification_report([1], [0], 3), sklearn_report([1], [0], 3), 3)
    assert_same_report(classification_report([2], [2], 3), sklearn_report([2], [2], 3), 3)


def test_report_accepts_tensors_and_arrays_alike() -> None:
    targets, preds = [0, 1, 1, 2], [0, 1, 2, 2]
    from_lists = classification_report(preds, targets, 3)
    assert classification_report(torch.tensor(preds), torch.tensor(targets), 3) == from_lists
    assert report_from_confusion(skm.confusion_matrix(targets, preds, labels=range(3))) == from_lists


def test_report_rejects_ids_outside_the_classes() -> None:
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        classification_report([0, 3], [0, 1], 3)


def test_flatten_report_names_the_categories_and_is_complete() -> None:
    flat = flatten_report(classification_report([0, 1, 1], [0, 1, 0], 2), ["male", "female"], prefix="val")
    fields = ("precision", "recall", "f1", "support")
    expected = {"val/accuracy"} | {
        f"val/{group}/{field}" for group in ("male", "female", "macro_avg", "weighted_avg") for field in fields
    }
    assert set(flat) == expected
    assert all(isinstance(value, float) for value in flat.values())
    assert flat["val/male/recall"] == 0.5


def test_flatten_report_needs_a_name_per_category() -> None:
    with pytest.raises(ValueError, match="3 category names"):
        flatten_report(classification_report([0, 1], [0, 1], 2), ["a", "b", "c"])


def test_category_keys_follow_the_documented_rule() -> None:
    names = ["male", "Männer", "old man", "a/b", "日本語", "", "macro avg", "male", "-x-", "é.", "..", "accuracy"]
    assert category_keys(names) == [
        "male",
        "Manner",  # accents dropped by Unicode decomposition
        "old_man",  # spaces and "/" become "_"
        "a_b",
        "category_4",  # nothing left: named by its id
        "category_5",
        "macro_avg_6",  # would be the macro average's key
        "male_7",  # a second "male"
        "-x-",
        "e",  # "." trimmed from the ends
        "category_10",
        "accuracy_11",
    ]


def test_category_keys_pass_lightning_and_mlflow_unchanged() -> None:
    """What Lightning's MLflow logger strips, and what MLflow accepts as metric names and image keys."""
    from mlflow.utils.validation import _validate_metric_name

    names = ["Männer", "Frauen (alt)", "whisper/creaky", "日本語", "x:y", "tab\there"]
    for key in category_keys(names):
        name = f"val/{key}/f1"
        assert re.sub("[^a-zA-Z0-9_/. -]+", "", name) == name  # pytorch_lightning/loggers/mlflow.py
        assert re.fullmatch(r"[a-zA-Z0-9_\-./ ]+", name)  # MlflowClient.log_image's key check
        _validate_metric_name(name)  # raises when MLflow refuses it


def test_format_report_is_sklearns_table_with_category_names() -> None:
    names = ["male", "female", "a rather long category name"]
    targets, preds = [0, 1, 2, 2, 1, 0, 2], [0, 1, 1, 0, 1, 0, 2]
    expected = skm.classification_report(targets, preds, labels=range(3), target_names=names, zero_division=0)
    assert format_report(classification_report(preds, targets, 3), names) == expected


def test_report_markdown_has_a_row_per_category_and_summary() -> None:
    text = report_markdown(classification_report([0, 1, 1], [0, 1, 0], 2), ["male", "a|b"])
    lines = text.splitlines()
    assert lines[0] == "| category | precision | recall | f1-score | support |"
    assert lines[2] == "| male | 1.00 | 0.50 | 0.67 | 2 |"
    assert lines[3].startswith("| a\\|b | 0.50 |")  # the "|" in a name is escaped, not a new cell
    assert lines[4] == "| **accuracy** |  |  | 0.67 | 3 |"
    assert [line.split(" | ")[0] for line in lines[5:]] == ["| macro avg", "| weighted avg"]


def test_report_names_must_match_the_classes() -> None:
    with pytest.raises(ValueError, match="2 names"):
        format_report(classification_report([0, 1, 2], [0, 1, 2], 3), ["a", "b"])


# ---- word and token errors -------------------------------------------------------------------------
def reference_edit_distance(a: list, b: list) -> int:
    """The textbook full-table dynamic programme."""
    table = [[i + j if i == 0 or j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            table[i][j] = min(table[i - 1][j] + 1, table[i][j - 1] + 1, table[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    return table[-1][-1]


def test_edit_distance_matches_the_textbook_dynamic_programme() -> None:
    rng = random.Random(0)
    for _ in range(300):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 15))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 15))]
        assert edit_distance(a, b) == reference_edit_distance(a, b), (a, b)


def test_split_words_joins_tokens_and_drops_empty_words() -> None:
    assert split_words(["|", "v_m", "p_m", "|", "|", "n_m", "|"]) == ["v_m+p_m", "n_m"]
    assert split_words([]) == []


def test_strip_tags_removes_categories_and_boundaries() -> None:
    assert strip_tags(["v_m", "p_f", "|", "long_v_m", "<pad>"]) == ["v", "p", "long_v", "<pad>"]


@pytest.mark.parametrize("seed", range(5))
def test_wer_matches_jiwer_on_tagged_words(seed: int) -> None:
    refs, hyps = random_corpus(seed)
    errors, words, _, _ = corpus_counts(refs, hyps)
    expected = jiwer.wer([" ".join(split_words(r)) for r in refs], [" ".join(split_words(h)) for h in hyps])
    assert errors / words == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_ter_matches_jiwer_on_tag_stripped_tokens(seed: int) -> None:
    refs, hyps = random_corpus(seed)
    _, _, errors, tokens = corpus_counts(refs, hyps)
    expected = jiwer.wer([" ".join(strip_tags(r)) for r in refs], [" ".join(strip_tags(h)) for h in hyps])
    assert errors / tokens == pytest.approx(expected, abs=1e-12)


def test_one_wrong_category_tag_makes_the_word_wrong_but_not_the_token() -> None:
    assert error_counts(["v_m", "p_m", "|", "n_m"], ["v_m", "p_f", "|", "n_m"]) == (1, 2, 0, 3)


# ---- torchmetrics metrics ----------------------------------------------------------------------------
def test_category_confusion_accumulated_equals_one_shot() -> None:
    gen = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 4, (103,), generator=gen)
    preds = torch.randint(0, 4, (103,), generator=gen)
    metric = CategoryConfusion(4)
    for p, t in zip(preds.split(10), targets.split(10), strict=True):
        metric.update(p, t)
    expected = skm.confusion_matrix(targets.numpy(), preds.numpy(), labels=range(4))
    assert metric.compute().tolist() == expected.tolist()
    assert metric.report() == classification_report(preds, targets, 4)


def test_category_confusion_merged_across_processes_equals_one_process() -> None:
    # merge_state applies each state's dist_reduce_fx, as the DDP all-gather does.
    targets = torch.tensor([0, 1, 2, 2, 1, 0, 2, 1])
    preds = torch.tensor([0, 2, 2, 1, 1, 0, 2, 0])
    single, ranks = CategoryConfusion(3), [CategoryConfusion(3), CategoryConfusion(3)]
    single.update(preds, targets)
    ranks[0].update(preds[:5], targets[:5])
    ranks[1].update(preds[5:], targets[5:])
    ranks[0].merge_state(ranks[1])
    assert torch.equal(ranks[0].compute(), single.compute())


def test_category_confusion_rejects_ids_outside_the_classes() -> None:
    metric = CategoryConfusion(2)
    metric.update(torch.tensor([0, 2]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"1 of 2 .*\[0, 2\)"):
        metric.compute()


def test_recognition_errors_accumulated_equals_one_shot() -> None:
    refs, hyps = random_corpus(7, size=30)
    batched, one_shot = RecognitionErrors(), RecognitionErrors()
    for start in range(0, len(refs), 8):
        batched.update(refs[start : start + 8], hyps[start : start + 8])
    one_shot.update(refs, hyps)
    result = {k: float(v) for k, v in batched.compute().items()}
    assert result == {k: float(v) for k, v in one_shot.compute().items()}
    expected_wer = jiwer.wer([" ".join(split_words(r)) for r in refs], [" ".join(split_words(h)) for h in hyps])
    assert result["wer"] == pytest.approx(expected_wer, rel=1e-6)


def test_recognition_errors_merged_across_processes_equals_one_process() -> None:
    refs, hyps = random_corpus(3, size=12)
    single, ranks = RecognitionErrors(), [RecognitionErrors(), RecognitionErrors()]
    single.update(refs, hyps)
    ranks[0].update(refs[:5], hyps[:5])
    ranks[1].update(refs[5:], hyps[5:])
    ranks[0].merge_state(ranks[1])
    assert {k: float(v) for k, v in ranks[0].compute().items()} == {k: float(v) for k, v in single.compute().items()}


def test_recognition_errors_are_zero_without_reference_tokens() -> None:
    metric = RecognitionErrors()
    metric.update([[]], [["v_m"]])
    assert {k: float(v) for k, v in metric.compute().items()} == {"wer": 0.0, "ter": 0.0}
