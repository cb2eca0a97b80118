"""The Festival corpus: manifests, 16 kHz audio, ARPAbet coverage, held-out speakers, reproducibility, caching."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from omegaconf import OmegaConf

from broadclass.data.festival import (
    INSTALL_HINT,
    RADIO_TO_ARPABET,
    VOICES,
    FestivalNotFoundError,
    _unwrapped,
    build_festival_corpus,
    check_voices,
    festival_path,
)
from broadclass.data.labels import LabelMap
from broadclass.data.manifest import read_manifest
from tests.helpers.corpora import file_digests, rows_of

ARPABET_CONFIG = Path(__file__).resolve().parents[1] / "broadclass" / "conf" / "labels" / "arpabet.yaml"
SMALL = {"n_train": 6, "n_val": 3, "n_test": 3}
FRAME = 0.02  # one wav2vec2 frame
# .ci/run installs Festival and sets this: there, a missing Festival fails instead of skipping.
REQUIRED = os.environ.get("BROADCLASS_REQUIRE_FESTIVAL") == "1"


@pytest.fixture(scope="module")
def festival() -> None:
    try:
        check_voices(festival_path())
        return
    except FestivalNotFoundError as err:  # the message says what to install
        missing = str(err)
    if REQUIRED:
        pytest.fail(missing, pytrace=False)
    pytest.skip(missing)


@pytest.fixture(scope="module")
def corpus(festival, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_festival_corpus(tmp_path_factory.mktemp("festival"), **SMALL)


# corpus.json records the Festival version too: not part of what a build must reproduce.
BUILD_RECORD = ("corpus.json",)


def test_manifests_have_the_rows_and_fields(corpus):
    rows = rows_of(corpus)
    assert {split: len(split_rows) for split, split_rows in rows.items()} == {
        "train": SMALL["n_train"],
        "validation": SMALL["n_val"],
        "test": SMALL["n_test"],
    }
    first = corpus["train"].read_text(encoding="utf-8").splitlines()[0]
    assert '"audio_filepath": "wav/train/' in first
    for split_rows in rows.values():
        for row in split_rows:
            assert {"id", "audio_filepath", "duration", "phones", "category", "speaker", "text"} <= set(row)
            words = row["phones"].split(" | ")
            assert len(words) >= 3 and all(word.strip() for word in words)


def test_audio_is_16k_mono_with_the_stated_durations(corpus):
    for split_rows in rows_of(corpus).values():
        for row in split_rows:
            info = sf.info(row["audio_filepath"])
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            assert row["duration"] == pytest.approx(info.frames / info.samplerate, abs=FRAME)
            samples = sf.read(row["audio_filepath"], dtype="int16")[0].astype(np.int64)
            assert np.abs(samples).max() > 1000
            # No 16-bit wrap-around left from Festival (a full-scale step between two samples).
            assert np.abs(np.diff(samples)).max() < 32768
            # Cut in the final pause, before what Festival leaves unset: the last 20 ms are near silence.
            assert np.abs(samples[-320:]).max() < 1000


def test_every_phone_has_a_broad_class_under_labels_arpabet(corpus):
    label_map = LabelMap.from_config(OmegaConf.load(ARPABET_CONFIG), [{"name": v.name, "tag": v.tag} for v in VOICES])
    rows = [row for split_rows in rows_of(corpus).values() for row in split_rows]
    label_map.check((row["id"], row["phones"]) for row in rows)  # unknown: raise, naming every unknown phone
    for row in rows:
        # One token per ARPAbet phone and per word boundary: nothing split, nothing dropped.
        assert len(label_map.encode(row["phones"], row["category"])) == len(row["phones"].split())


def test_the_phone_map_covers_radio_into_arpabet_yaml():
    arpabet = {p for spec in OmegaConf.load(ARPABET_CONFIG).classes.values() for p in spec.phones}
    assert {p for p in RADIO_TO_ARPABET.values() if p is not None} <= arpabet


def test_each_category_in_each_split_and_held_out_speakers(corpus):
    rows = rows_of(corpus)
    names = {voice.name for voice in VOICES}
    speakers = {split: {row["speaker"] for row in split_rows} for split, split_rows in rows.items()}
    for split, split_rows in rows.items():
        assert {row["category"] for row in split_rows} == names, split
    assert not speakers["train"] & speakers["validation"]
    assert not speakers["train"] & speakers["test"]
    assert not speakers["validation"] & speakers["test"]
    texts = [row["text"] for split_rows in rows.values() for row in split_rows]
    assert len(set(texts)) == len(texts)


def test_same_seed_is_byte_identical_elsewhere_and_any_jobs(corpus, tmp_path):
    build_festival_corpus(tmp_path, **SMALL, jobs=1)
    assert file_digests(tmp_path, BUILD_RECORD) == file_digests(corpus["train"].parent, BUILD_RECORD)


def test_second_build_rewrites_nothing(corpus):
    folder = corpus["train"].parent
    before = {path: path.stat().st_mtime_ns for path in folder.rglob("*")}
    start = time.perf_counter()
    assert build_festival_corpus(folder, **SMALL) == corpus
    assert time.perf_counter() - start < 1.0
    assert {path: path.stat().st_mtime_ns for path in folder.rglob("*")} == before


def test_a_built_corpus_needs_no_festival(corpus, monkeypatch):
    monkeypatch.setenv("PATH", "")
    assert build_festival_corpus(corpus["train"].parent, **SMALL) == corpus


def test_other_arguments_rebuild(festival, tmp_path):
    build_festival_corpus(tmp_path, **SMALL)
    first = file_digests(tmp_path, BUILD_RECORD)
    build_festival_corpus(tmp_path, **{**SMALL, "seed": 1})
    assert file_digests(tmp_path, BUILD_RECORD) != first
    assert len(read_manifest(tmp_path / "train.jsonl")) == SMALL["n_train"]


def test_missing_festival_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(FestivalNotFoundError, match="apt-get install -y festival festvox-kallpc16k") as err:
        build_festival_corpus(tmp_path / "corpus", **SMALL)
    assert err.value.code == str(err.value)  # SystemExit: printed as the message, status 1
    assert not (tmp_path / "corpus").exists()


def test_missing_festival_from_the_shell_is_one_message(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path / "empty")}
    result = subprocess.run(
        [sys.executable, "-m", "broadclass.festival_corpus", f"root={tmp_path / 'corpus'}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert INSTALL_HINT in result.stderr


def test_unwrapping_undoes_a_16_bit_overflow():
    true = np.round(34000 * np.sin(np.linspace(0, 6 * np.pi, 400))).astype(np.int64)
    wrapped = ((true + 32768) % 65536 - 32768).astype(np.int16)
    assert (wrapped != true).any()
    np.testing.assert_allclose(_unwrapped(wrapped) * 32768, true)
