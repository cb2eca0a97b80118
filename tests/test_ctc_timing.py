"""eSpeak's phoneme events and the timing check's arithmetic (benchmarks/ctc_timing.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from benchmarks.ctc_timing import boundary_errors, measure, reference_onsets
from broadclass.data.espeak import ESpeak
from broadclass.data.labels import LabelMap
from tests.helpers.runs import TrainedRun


def test_phoneme_events_are_the_phonemes_in_order_within_the_audio():
    espeak = ESpeak()
    text = "hello world, this is a test"
    samples, phones = espeak.synthesize_timed(text, "en-us", 175, 50)
    named = [name for name, _ in phones if name]
    assert named == [unit for word in espeak.phonemes(text, "en-us") for unit in word]
    starts = [start for _, start in phones]
    assert starts == sorted(starts) and 0 <= starts[0] < starts[-1] <= samples.size / espeak.sample_rate


def test_reference_onsets_split_two_class_units_and_skip_pauses():
    ipa = OmegaConf.load(Path(__file__).resolve().parents[1] / "broadclass" / "conf" / "labels" / "ipa.yaml")
    labels = LabelMap.from_config(ipa, [{"name": "male", "tag": "m"}])
    phones = [("h", 0.0), ("əl", 0.1), ("", 0.3), ("t", 0.5)]
    assert reference_onsets(phones, 0.6, labels) == [("f", 0.0), ("v", 0.1), ("l", pytest.approx(0.2)), ("p", 0.5)]


def test_boundary_errors_pair_only_class_matched_tokens():
    reference = [("f", 0.0), ("v", 0.1), ("l", 0.2), ("p", 0.5)]
    segments = [
        {"token": "f_m", "start": 0.02, "end": 0.1},
        {"token": "v_m", "start": 0.14, "end": 0.3},
        {"token": "|", "start": 0.3, "end": 0.32},
        {"token": "n_m", "start": 0.32, "end": 0.5},  # a substitution for l: no boundary compared
        {"token": "p_m", "start": 0.48, "end": 0.52},
    ]
    assert boundary_errors(reference, segments) == pytest.approx([0.02, 0.04, -0.02])


def test_measure_synthesises_predicts_and_pairs_the_tokens(trained_run: TrainedRun):
    # The 10-step model decodes tokens (mostly vowels), not good timings: this checks the plumbing and the
    # arithmetic, not the timing (see benchmarks/README.md for the check on a trained model).
    result = measure(str(trained_run.checkpoint), utterances=4, seed=0, tolerance=0.040)
    assert result["utterances"] == 4 and result["reference_classes"] > 4 * 4
    assert 0 < result["matched"] <= result["reference_classes"]
    assert 0 <= result["median_abs_error_s"] <= result["p90_abs_error_s"]
    assert result["passed"] == (result["median_abs_error_s"] <= 0.040)
    assert 0 <= result["within_tolerance_share"] <= 1
    # The median is within the tolerance exactly when at least half the pairs are.
    assert result["within_tolerance_share"] >= 0.5 if result["passed"] else result["within_tolerance_share"] <= 0.5
