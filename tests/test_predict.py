"""Prediction with a trained model: any audio, a scored manifest, a model from MLflow, safe loading."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import jiwer
import numpy as np
import pytest
import pytorch_lightning as pl
import soundfile as sf
import soxr
import torch
from hydra.utils import instantiate
from sklearn.metrics import classification_report

from broadclass import predict
from broadclass.data.labels import LabelMap
from broadclass.data.manifest import read_manifest
from broadclass.model.evaluation import EvaluationResult
from broadclass.model.format import ModelLoadError, VocabularyMismatchError, label_config
from broadclass.tracking.run_model import load_model

RULES = {"vote", "posterior"}
CATEGORIES = ["male", "female", "whisper", "creaky"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def first_utterance(demo_corpus) -> tuple[np.ndarray, int]:
    row = read_manifest(demo_corpus["validation"])[0]
    return sf.read(row["audio_filepath"], dtype="float32")


def test_a_folder_is_predicted_at_any_rate_and_channel_count_and_a_corrupt_file_is_listed(
    trained_run, demo_corpus, tmp_path, capsys
):
    wave, rate = first_utterance(demo_corpus)
    folder = tmp_path / "audio"
    folder.mkdir()
    at_44k = soxr.resample(wave, rate, 44_100)
    sf.write(folder / "stereo44k.wav", np.stack([at_44k, 0.5 * at_44k], axis=1), 44_100, subtype="PCM_16")
    sf.write(folder / "narrow8k.flac", soxr.resample(wave, rate, 8_000), 8_000)
    (folder / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(40)))
    out = tmp_path / "out" / "folder.jsonl"

    assert predict.main([f"model={trained_run.checkpoint}", f"input={folder}", f"output={out}", "csv=true"]) == 0

    records = read_jsonl(out)
    assert [r["id"] for r in records] == ["narrow8k", "stereo44k"]
    vocab = set(load_model(trained_run.checkpoint).labels.tokens)
    # The session's model decodes tokens from this utterance (the checks below would hold for empty output too).
    assert all(r["tokens"] for r in records), [r["text"] for r in records]
    for r in records:
        # Resampled to 16 kHz, not played at the wrong speed: the duration is the original's.
        assert r["duration"] == pytest.approx(len(wave) / rate, abs=0.01)
        assert set(r["tokens"]) <= vocab
        assert r["text"] == " ".join(r["tokens"])
        assert r["classes"] == [token.rpartition("_")[0] or token for token in r["tokens"]]
        assert [segment["token"] for segment in r["segments"]] == r["tokens"]
        assert set(r["category"]) == RULES
        for decision in r["category"].values():
            assert decision["name"] in CATEGORIES and 0.0 <= decision["confidence"] <= 1.0
        assert r["category"]["posterior"]["confidence"] == max(r["posteriors"].values())
    (error,) = read_jsonl(out.with_suffix(".errors.jsonl"))
    assert error["audio_filepath"] == str(folder / "corrupt.wav") and "cannot decode" in error["error"]
    assert "corrupt.wav" in capsys.readouterr().err
    rows = out.with_suffix(".csv").read_text(encoding="utf-8").splitlines()
    assert rows[0].startswith("id,audio_filepath,duration,text,classes,vote_category") and len(rows) == 3


def test_a_manifest_with_references_is_scored_and_the_report_written(trained_run, demo_corpus, tmp_path, capsys):
    out = tmp_path / "scored.jsonl"

    assert predict.main([f"model={trained_run.checkpoint}", f"input={demo_corpus['validation']}", f"output={out}"]) == 0

    records = read_jsonl(out)
    report = json.loads(out.with_suffix(".report.json").read_text(encoding="utf-8"))
    # The validation's report (scored by the same code), with the model and the number of utterances.
    assert set(report) == {field.name for field in fields(EvaluationResult)} - {"predictions"} | {
        "source",
        "utterances",
    }
    assert report["stage"] == "test" and report["rule"] == "posterior" and "test/loss" in report["metrics"]
    assert report["utterances"] == len(records) == len(read_manifest(demo_corpus["validation"]))
    truth = [CATEGORIES.index(r["reference"]["category"]) for r in records]
    # Scored on decoded tokens: with nothing decoded the TER, alignment and duration checks below would be trivial.
    assert sum(bool(r["tokens"]) for r in records) >= len(records) // 2, "the model decodes too little to score"
    for rule in RULES:
        # The report equals sklearn's on the categories written per utterance.
        predicted = [CATEGORIES.index(r["category"][rule]["name"]) for r in records]
        expected = classification_report(truth, predicted, labels=range(4), output_dict=True, zero_division=0)
        scores = report["rule_reports"][rule]
        assert scores["accuracy"] == pytest.approx(expected["accuracy"])
        assert scores["macro avg"]["f1-score"] == pytest.approx(expected["macro avg"]["f1-score"])
        assert report["metrics"][f"test/rule/{rule}/accuracy"] == pytest.approx(expected["accuracy"])
    # TER: jiwer's word error rate over class tags (category tags and word boundaries left out).
    strip = lambda tokens: " ".join(t.rpartition("_")[0] for t in tokens if t != "|")  # noqa: E731
    ter = jiwer.wer([strip(r["reference"]["tokens"]) for r in records], [strip(r["tokens"]) for r in records])
    assert report["errors"]["ter"] == pytest.approx(ter)
    # The class confusion's edits are jiwer's over the same class sequences.
    words = jiwer.process_words(
        [strip(r["reference"]["tokens"]) for r in records], [strip(r["tokens"]) for r in records]
    )
    matrix = report["class_confusion"]["total"]["matrix"]
    gap = len(matrix) - 1
    assert sum(row[gap] for row in matrix[:gap]) == words.deletions
    assert sum(matrix[gap][:gap]) == words.insertions
    for r in records:
        # One segment per decoded token, in order, within the audio, on the 20 ms frame grid.
        assert [seg["token"] for seg in r["segments"]] == r["tokens"]
        times = [t for seg in r["segments"] for t in (seg["start"], seg["end"])]
        assert times == sorted(times) and all(0 <= t <= r["duration"] + 0.02 for t in times)
        assert all(round(t / 0.02, 6).is_integer() for t in times)
    durations = report["durations"]["classes"]
    decoded_classes = sum(len(strip(r["tokens"]).split()) for r in records)
    assert decoded_classes > 0 and sum(d["all"]["count"] for d in durations.values()) == decoded_classes
    printed = capsys.readouterr().out
    assert "category (rule: posterior)" in printed and "macro avg" in printed and "broad classes" in printed
    assert out.with_suffix(".report.txt").read_text(encoding="utf-8").strip() == printed.strip()


def test_predict_from_a_run_id_uses_the_model_logged_at_the_end_of_training(trained_run, demo_corpus, tmp_path):
    audio = read_manifest(demo_corpus["validation"])[0]["audio_filepath"]
    from_run, from_checkpoint = tmp_path / "run.jsonl", tmp_path / "checkpoint.jsonl"

    predict.main(
        [
            f"model={trained_run.run_id}",
            f"input={audio}",
            f"output={from_run}",
            f"tracking_uri={trained_run.tracking_uri}",
        ]
    )
    predict.main([f"model={trained_run.checkpoint}", f"input={audio}", f"output={from_checkpoint}"])

    # The run's model is the best checkpoint, exported: the same weights give the same output, tokens and all.
    assert read_jsonl(from_run) == read_jsonl(from_checkpoint)
    (record,) = read_jsonl(from_run)
    assert record["tokens"] and len(record["segments"]) == len(record["tokens"])


def test_a_checkpoint_is_refused_by_a_config_with_another_vocabulary(trained_run, train_config):
    # The same categories in another order: the vocabulary has the same size, so the weights would load
    # without an error and every category tag would be wrong.
    reordered = "data.categories=[{name:female,tag:f},{name:male,tag:m},{name:whisper,tag:w},{name:creaky,tag:c}]"
    cfg = train_config(reordered)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, _partial_=True)(labels=datamodule.label_map)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(VocabularyMismatchError, match=r"id 2: 'v_m' there, 'v_f' here"):
        trainer.validate(model, datamodule=datamodule, ckpt_path=trained_run.checkpoint)


class NotATensor:
    pass


def test_a_checkpoint_holding_arbitrary_objects_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "handed-over.ckpt"
    torch.save({"state_dict": {}, "payload": NotATensor()}, path)
    with pytest.raises(ModelLoadError, match=r"weights_only=True"):
        load_model(path)


def test_an_unknown_model_names_what_was_tried(tmp_path):
    store = tmp_path / "mlflow.db"
    with pytest.raises(ModelLoadError, match=r"not a checkpoint file or exported folder"):
        load_model(tmp_path / "missing.ckpt", tracking_uri=f"sqlite:///{store}")
    assert not store.exists()  # looking a run up does not leave an empty store behind


def test_the_saved_label_config_rebuilds_the_label_map_with_its_dropped_classes(tmp_path):
    # A checkpoint stores a label config rebuilt from the LabelMap, which takes dropped classes out of
    # its classes: their phones must still be known when a reference is encoded for the report.
    classes = {"vowel": {"tag": "v", "phones": ["a", "i"]}, "silence": {"tag": "s", "phones": ["pau", "h#"]}}
    categories = [{"name": "male", "tag": "m"}]
    labels = LabelMap.from_config({"classes": classes, "drop": ["silence"]}, categories)
    saved = tmp_path / "labels.pt"
    torch.save(label_config(labels), saved)
    rebuilt = LabelMap.from_config(torch.load(saved, weights_only=True), categories)
    assert rebuilt.tokens == labels.tokens == ["<pad>", "|", "v_m"]
    assert rebuilt.encode("h# a | pau i h#", "male") == labels.encode("h# a | pau i h#", "male") == [2, 1, 2]
