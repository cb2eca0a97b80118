"""The data check: every kind of bad manifest row is reported with its file:line, and no good row is lost."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from hydra.utils import instantiate
from transformers import Wav2Vec2Config, Wav2Vec2Model

from broadclass.check import main
from broadclass.data.audio import AudioCache
from broadclass.data.check import (
    DataCheckError,
    EncoderGeometry,
    apply_report,
    check_splits,
    ctc_frames_needed,
)
from broadclass.data.labels import LabelMap
from broadclass.data.manifest import read_manifest, write_manifest
from broadclass.prepare import main as prepare_main
from broadclass.train import train
from tests.helpers.config import CONF_DIR

RATE = 16_000
CATEGORIES = [{"name": "male", "tag": "m"}, {"name": "female", "tag": "f"}]
# The bad corpus's categories; its speaker overlap is an error (the demo config allows it).
BAD_CORPUS = ["data.categories=[{name:male,tag:m},{name:female,tag:f}]", "data.allow_speaker_overlap=false"]


def labels() -> LabelMap:
    return LabelMap.from_config(yaml.safe_load((CONF_DIR / "labels" / "ipa.yaml").read_text()), CATEGORIES)


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(RATE * seconds))).astype(np.float32)


def row(audio: Path | str, phones: str = "k æ t | d ɔ ɡ", category: str = "male", **extra) -> dict:
    return {"audio_filepath": str(audio), "duration": 1.0, "phones": phones, "category": category, **extra}


def bad_corpus(tmp_path: Path) -> tuple[dict[str, Path], dict[str, str], set[str]]:
    """Manifests with good rows and one row per problem kind; returns (manifests, id → kind, good ids)."""
    audio = tmp_path / "audio"
    audio.mkdir()
    good_wav = []
    for i in range(4):
        good_wav.append(audio / f"good{i}.wav")
        sf.write(good_wav[-1], noise(1.0, seed=i), RATE)
    sf.write(audio / "silent.wav", np.zeros(RATE, np.float32), RATE)
    sf.write(audio / "empty.wav", np.zeros(0, np.float32), RATE)
    sf.write(audio / "nan.wav", np.full(RATE, np.nan, np.float32), RATE, subtype="FLOAT")
    sf.write(audio / "short.wav", noise(300 / RATE), RATE)  # < 400 samples: no encoder frame
    sf.write(audio / "tight.wav", noise(0.1), RATE)  # 4 frames: too few for 6 tokens
    (audio / "garbage.wav").write_bytes(np.random.default_rng(1).bytes(5000))
    (audio / "truncated.wav").write_bytes(good_wav[0].read_bytes()[:30])  # RIFF header cut mid-way
    (audio / "text.wav").write_text("not audio at all\n")

    train_rows = [
        row(good_wav[0], id="good-0", speaker="s1"),
        row(audio / "nowhere.wav", id="missing"),
        row(audio / "garbage.wav", id="garbage"),
        row(audio / "truncated.wav", id="truncated"),
        row(audio / "text.wav", id="text"),
        row(audio / "empty.wav", id="empty"),
        row(audio / "silent.wav", id="silent"),
        row(audio / "nan.wav", id="nan"),
        row(good_wav[1], id="good-1", speaker="s1", category="female"),
        row(audio / "short.wav", id="short"),
        row(audio / "tight.wav", phones="k æ t | d ɔ ɡ", id="tight"),
        row(good_wav[2], category="robot", id="robot"),
        row(good_wav[2], phones="k ж t", id="unknown-phone"),
        row(good_wav[2], phones="", id="empty-phones"),
        row(good_wav[2], phones="| |", id="only-boundaries"),
        row(good_wav[3], id="good-0"),  # same id as the first row
        row(good_wav[3], id="good-2", speaker="s2"),
    ]
    validation_rows = [
        row(good_wav[0], id="val-good", speaker="s3"),
        row(good_wav[1], id="val-leak", speaker="s1"),
    ]
    manifests = {
        "train": write_manifest(tmp_path / "train.jsonl", train_rows),
        "validation": write_manifest(tmp_path / "validation.jsonl", validation_rows),
    }
    expected = {
        "missing": "missing_audio",
        "garbage": "unreadable_audio",
        "truncated": "unreadable_audio",
        "text": "unreadable_audio",
        "empty": "empty_audio",
        "silent": "silent_audio",
        "nan": "non_finite_audio",
        "short": "too_short_for_encoder",
        "tight": "too_short_for_labels",
        "robot": "unknown_category",
        "unknown-phone": "unknown_phones",
        "empty-phones": "empty_transcription",
        "only-boundaries": "empty_transcription",
        "val-leak": "speaker_overlap",
    }
    return manifests, expected, {"good-0", "good-1", "good-2", "val-good"}


def test_an_utterance_longer_than_max_duration_is_reported_with_its_row_and_skipped(train_config, tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "short.wav", noise(1.0), RATE)
    sf.write(audio / "long.wav", noise(3.0, seed=1), RATE)
    rows = [row(audio / "short.wav", id="ok", speaker="s1"), row(audio / "long.wav", id="long", speaker="s1")]
    train_manifest = write_manifest(tmp_path / "train.jsonl", rows)
    val_manifest = write_manifest(tmp_path / "validation.jsonl", [row(audio / "short.wav", id="val", speaker="s2")])
    limit = ["data.max_duration=2.5", *BAD_CORPUS]

    cfg = train_config(
        f"data.train_manifest={train_manifest}", f"data.val_manifest={val_manifest}", "data.on_error=skip", *limit
    )
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    (problem,) = datamodule.check_report.problems
    assert (problem.kind, problem.source, problem.id) == ("too_long", f"{train_manifest}:2", "long")
    assert "3.0 s > data.max_duration 2.5 s" in problem.detail
    assert [r["id"] for r in datamodule.datasets["train"].rows] == ["ok"]

    # The command line honours the config's limit, and no limit (null) lets the row through.
    printed: list[str] = []
    assert main([str(train_manifest), f"paths.root_dir={tmp_path}", *limit], print_fn=printed.append) == 1
    assert "too_long (error, 1 row(s))" in printed[0] and f"{train_manifest}:2 (id long)" in printed[0]
    assert main([str(train_manifest), f"paths.root_dir={tmp_path}", *BAD_CORPUS, "data.max_duration=null"]) == 0


def test_receptive_field_and_frames_match_the_wav2vec2_feature_encoder():
    encoder = EncoderGeometry.of(Wav2Vec2Config())
    assert encoder.receptive_field == 400
    config = Wav2Vec2Config(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=32)
    model = Wav2Vec2Model(config)
    for samples in (399, 400, 719, 720, 16_000, 16_321):
        assert encoder.frames(samples) == int(model._get_feat_extract_output_lengths(torch.tensor(samples)))


def test_ctc_needs_a_blank_between_repeated_tokens():
    assert ctc_frames_needed(["v", "p", "v"]) == 3
    assert ctc_frames_needed(["v", "v", "v", "p"]) == 6


def test_every_kind_of_bad_row_is_reported_and_no_good_row_is_lost(tmp_path):
    manifests, expected, good = bad_corpus(tmp_path)
    splits = {split: read_manifest(path) for split, path in manifests.items()}
    report = check_splits(splits, labels(), AudioCache(tmp_path / "cache", RATE))

    reported = {p.id: p.kind for p in report.problems if p.kind != "duplicate_id"}
    assert reported == expected
    duplicates = [p for p in report.problems if p.kind == "duplicate_id"]
    assert [(p.id, p.source) for p in duplicates] == [("good-0", f"{manifests['train']}:16")]
    assert "train.jsonl:1" in duplicates[0].detail  # points at the row it repeats
    # Each problem names the manifest line of its row.
    lines = {r["id"]: r["_source"] for rows in splits.values() for r in rows if r["id"] != "good-0"}
    assert all(p.source == lines[p.id] for p in report.problems if p.id in lines)

    kept = apply_report(splits, report, "skip")
    assert {r["id"] for rows in kept.values() for r in rows} == good
    assert len(kept["train"]) == 3  # the first good-0 stays, its duplicate goes


def test_speaker_overlap_can_be_allowed_as_a_warning(tmp_path):
    manifests, _, _ = bad_corpus(tmp_path)
    splits = {split: read_manifest(path) for split, path in manifests.items()}
    report = check_splits(splits, labels(), AudioCache(None, RATE), allow_speaker_overlap=True)
    kept = apply_report(splits, report, "skip")
    assert {r["id"] for r in kept["validation"]} == {"val-good", "val-leak"}
    assert "speaker_overlap (warning" in report.format()


def test_raise_mode_reports_every_problem_kind_at_once(tmp_path):
    manifests, expected, _ = bad_corpus(tmp_path)
    splits = {split: read_manifest(path) for split, path in manifests.items()}
    report = check_splits(splits, labels(), AudioCache(None, RATE))
    with pytest.raises(DataCheckError) as err:
        apply_report(splits, report, "raise")
    for kind in set(expected.values()) | {"duplicate_id"}:
        assert f"\n{kind} (error" in str(err.value)
    assert "data.on_error=skip" in str(err.value)


def test_training_stops_before_the_first_step_on_bad_rows(train_config, tmp_path):
    manifests, _, _ = bad_corpus(tmp_path)
    cfg = train_config(
        f"data.train_manifest={manifests['train']}", f"data.val_manifest={manifests['validation']}", *BAD_CORPUS
    )
    with pytest.raises(DataCheckError, match=r"train.jsonl:2 \(id missing\)"):
        train(cfg)
    client = mlflow.MlflowClient(cfg.logger.mlflow.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(cfg.experiment_name).experiment_id])
    assert "train/loss" not in run.data.metrics
    assert run.data.params["data/check/rows_with_errors"] == "15"


def test_skip_mode_trains_without_the_bad_rows_and_logs_the_report(train_config, tmp_path):
    manifests, expected, good = bad_corpus(tmp_path)
    cfg = train_config(
        f"data.train_manifest={manifests['train']}",
        f"data.val_manifest={manifests['validation']}",
        "data.on_error=skip",
        "trainer.max_steps=2",
        "val_every_n_optimizer_steps=2",
        "test_after_fit=false",
        *BAD_CORPUS,
    )
    train(cfg)
    client = mlflow.MlflowClient(cfg.logger.mlflow.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(cfg.experiment_name).experiment_id])
    assert run.data.params["data/check/rows_with_errors"] == str(len(expected) + 1)
    report = json.loads(Path(client.download_artifacts(run.info.run_id, "data/check_report.json")).read_text())
    assert {p["id"] for found in report["problems"].values() for p in found} == set(expected) | {"good-0"}
    assert report["rows"] == {"train": 17, "validation": 2}
    assert "val/accuracy" in run.data.metrics


def test_datamodule_setup_checks_with_the_models_encoder(train_config, tmp_path):
    # A direct setup() call (no trainer) still checks, with the standard wav2vec2 receptive field.
    manifests, _, _ = bad_corpus(tmp_path)
    cfg = train_config(f"data.train_manifest={manifests['train']}", "data.on_error=skip", *BAD_CORPUS)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    assert "short" in {p.id for p in datamodule.check_report.problems}
    assert {r["id"] for r in datamodule.datasets["train"].rows} == {"good-0", "good-1", "good-2"}


def test_command_line_check_exits_1_and_writes_the_json_report(tmp_path, capsys):
    manifests, expected, _ = bad_corpus(tmp_path)
    out = tmp_path / "report.json"
    paths = [str(manifests["train"]), str(manifests["validation"]), f"paths.root_dir={tmp_path}"]
    status = main([*paths, *BAD_CORPUS, f"json={out}"])
    assert status == 1
    assert "missing_audio (error, 1 row(s))" in capsys.readouterr().out
    assert set(json.loads(out.read_text())["problems"]) == set(expected.values()) | {"duplicate_id"}


def test_command_line_check_of_a_clean_corpus_exits_0(demo_corpus, tmp_path, capsys):
    assert main([str(demo_corpus["train"]), str(demo_corpus["validation"]), f"paths.root_dir={tmp_path}"]) == 0
    assert "speaker_overlap (warning" in capsys.readouterr().out  # the demo's creaky voice


def test_prepare_check_reports_rows_prepare_itself_accepts(tmp_path, demo_corpus, capsys, monkeypatch):
    # A silent file has a good header (prepare takes it); the data check decodes it and finds it silent.
    monkeypatch.setenv("BROADCLASS_ROOT", str(tmp_path))  # the check's audio cache goes under the project root
    rows = read_manifest(demo_corpus["train"])  # audio paths made absolute
    sf.write(tmp_path / "silent.wav", np.zeros(RATE, np.float32), RATE)
    rows.append({**rows[0], "id": "silent-one", "audio_filepath": str(tmp_path / "silent.wav")})
    source = write_manifest(tmp_path / "corpus.jsonl", rows)
    with pytest.raises(SystemExit):
        prepare_main([str(source), f"out={tmp_path / 'sets'}", "sets=2", "check=true"])
    out = capsys.readouterr().out
    assert "silent_audio (error, 1 row(s))" in out and "(id silent-one)" in out


def broken_manifest(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """A manifest with one good row, the 9 kinds of bad row and 3 lines that are no row, and a clean validation
    manifest; returns (train, validation, file:line → kind of every problem)."""
    audio = tmp_path / "audio"
    audio.mkdir()
    good = audio / "good.wav"
    sf.write(good, noise(1.0), RATE)
    sf.write(audio / "silent.wav", np.zeros(RATE, np.float32), RATE)
    sf.write(audio / "empty.wav", np.zeros(0, np.float32), RATE)
    sf.write(audio / "short.wav", noise(300 / RATE), RATE)
    (audio / "corrupt.wav").write_bytes(np.random.default_rng(1).bytes(5000))
    lines = [
        (row(good, id="good", speaker="s1"), None),
        (row(audio / "nowhere.wav", id="missing"), "missing_audio"),
        ('{"audio_filepath": "good.wav", ', "broken_line"),  # not JSON
        (row(audio / "corrupt.wav", id="corrupt"), "unreadable_audio"),
        (["audio/good.wav", 1.0], "broken_line"),  # not an object
        (row(audio / "empty.wav", id="empty"), "empty_audio"),
        (row(audio / "silent.wav", id="silent"), "silent_audio"),
        ({}, "broken_line"),  # no fields
        (row(audio / "short.wav", id="short"), "too_short_for_encoder"),
        (row(good, phones="k ж t", id="unknown-phone"), "unknown_phones"),
        (row(good, phones="", id="empty-phones"), "empty_transcription"),
        (row(good, category="robot", id="robot"), "unknown_category"),
        (row(good, id="good"), "duplicate_id"),
    ]
    train_manifest = tmp_path / "train.jsonl"
    train_manifest.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)) + "\n" for line, _ in lines),
        encoding="utf-8",
    )
    validation = write_manifest(tmp_path / "validation.jsonl", [row(good, id="val", speaker="s2")])
    expected = {f"{train_manifest}:{n}": kind for n, (_, kind) in enumerate(lines, start=1) if kind is not None}
    return train_manifest, validation, expected


def test_lines_that_are_no_row_and_every_bad_row_are_reported_in_one_run_of_the_command(tmp_path):
    train_manifest, validation, expected = broken_manifest(tmp_path)
    assert len(expected) == 12
    printed: list[str] = []
    out = tmp_path / "report.json"
    arguments = [str(train_manifest), str(validation), f"paths.root_dir={tmp_path}", *BAD_CORPUS, f"json={out}"]
    assert main(arguments, print_fn=printed.append) == 1
    (text,) = printed
    for source, kind in expected.items():
        assert f"\n  {source}" in text, (source, kind)
    assert "Data check of train 13, validation 1 rows: 12 row(s) with errors." in text
    found = {p["source"]: kind for kind, problems in json.loads(out.read_text())["problems"].items() for p in problems}
    assert found == expected


def test_training_setup_stops_with_one_error_listing_the_broken_lines_and_every_bad_row(train_config, tmp_path):
    train_manifest, validation, expected = broken_manifest(tmp_path)
    cfg = train_config(f"data.train_manifest={train_manifest}", f"data.val_manifest={validation}", *BAD_CORPUS)
    datamodule = instantiate(cfg.data)
    with pytest.raises(DataCheckError) as raised:
        datamodule.setup("fit")
    assert {p.source: p.kind for p in raised.value.report.problems} == expected
    assert all(f"\n  {source}" in str(raised.value) for source in expected)
    assert "broken_line (error, 3 row(s))" in str(raised.value)


def test_skip_mode_drops_the_broken_lines_with_the_bad_rows(train_config, tmp_path):
    train_manifest, validation, expected = broken_manifest(tmp_path)
    cfg = train_config(
        f"data.train_manifest={train_manifest}", f"data.val_manifest={validation}", "data.on_error=skip", *BAD_CORPUS
    )
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    assert [r["id"] for r in datamodule.datasets["train"].rows] == ["good"]
    assert datamodule.check_report.bad_sources() == set(expected)


def test_a_missing_manifest_is_reported_with_the_problems_of_the_others(tmp_path):
    train_manifest, _, expected = broken_manifest(tmp_path)
    printed: list[str] = []
    nowhere = tmp_path / "validation.jsonl"
    nowhere.unlink()
    assert main([str(train_manifest), str(nowhere), f"paths.root_dir={tmp_path}", *BAD_CORPUS], printed.append) == 1
    assert "unusable_manifest (error, 1 row(s))" in printed[0]
    assert f"  {nowhere}: manifest not found" in printed[0]
    assert all(f"\n  {source}" in printed[0] for source in expected)


def test_the_command_checks_unlabeled_audio_without_the_label_checks(tmp_path):
    train_manifest, validation, expected = broken_manifest(tmp_path)
    out = tmp_path / "report.json"
    arguments = [str(train_manifest), str(validation), f"paths.root_dir={tmp_path}", "unlabeled=true", f"json={out}"]
    assert main(arguments, print_fn=lambda line: None) == 1
    found = {p["source"]: kind for kind, problems in json.loads(out.read_text())["problems"].items() for p in problems}
    label_kinds = {"unknown_phones", "empty_transcription", "unknown_category"}
    assert found == {source: kind for source, kind in expected.items() if kind not in label_kinds}
    # Audio alone passes: rows without phones, category or duration.
    clean = write_manifest(tmp_path / "clean.jsonl", [{"id": "a", "audio_filepath": "audio/good.wav"}])
    assert main([str(clean), f"paths.root_dir={tmp_path}", "unlabeled=true"], print_fn=lambda line: None) == 0
    assert main([str(clean), f"paths.root_dir={tmp_path}"], print_fn=lambda line: None) == 1  # labeled: no phones
