"""The eSpeak demo corpus: audio, manifests, held-out voices, reproducibility, and IPA coverage."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from omegaconf import OmegaConf

from broadclass.data import demo
from broadclass.data.demo import ACCENTS, CATEGORY_SETS, build_demo_corpus
from broadclass.data.espeak import ESpeak, ESpeakError
from broadclass.data.labels import LabelMap
from broadclass.data.manifest import read_manifest
from tests.helpers.corpora import file_digests, rows_of

IPA_CONFIG = Path(__file__).resolve().parents[1] / "broadclass" / "conf" / "labels" / "ipa.yaml"
SMALL = {"n_train": 24, "n_val": 8}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    root = tmp_path_factory.mktemp("demo")
    return {categories: build_demo_corpus(root, categories, **SMALL) for categories in CATEGORY_SETS}


def label_map(categories: str) -> LabelMap:
    return LabelMap.from_config(
        OmegaConf.load(IPA_CONFIG), [{"name": c.name, "tag": c.tag} for c in CATEGORY_SETS[categories]]
    )


@pytest.mark.parametrize("categories", list(CATEGORY_SETS))
def test_wavs_are_mono_22050_and_match_durations(corpora, categories):
    for split, rows in rows_of(corpora[categories]).items():
        assert len(rows) == SMALL["n_train" if split == "train" else "n_val"]
        for row in rows:
            info = sf.info(row["audio_filepath"])
            assert (info.samplerate, info.channels, info.subtype) == (22050, 1, "PCM_16")
            assert info.frames > 0 and row["phones"].strip() and row["text"].strip()
            assert row["duration"] == pytest.approx(info.frames / info.samplerate, abs=1e-5)
            assert np.abs(sf.read(row["audio_filepath"], dtype="int16")[0]).max() > 0


def test_manifest_paths_are_relative_to_manifest_folder(corpora):
    manifest = corpora["voice"]["train"]
    first = manifest.read_text(encoding="utf-8").splitlines()[0]
    assert '"audio_filepath": "wav/train/' in first
    assert (manifest.parent / "wav" / "train").is_dir()


def test_second_build_rewrites_nothing(corpora, monkeypatch):
    manifests = corpora["voice"]
    folder = manifests["train"].parent
    before = {path: path.stat().st_mtime_ns for path in folder.rglob("*")}

    def no_synthesis(*args, **kwargs):
        raise AssertionError("a complete corpus was planned or synthesized again")

    # Neither planned nor synthesized again: the complete corpus is recognised and returned as it is.
    monkeypatch.setattr(demo, "_plan", no_synthesis)
    monkeypatch.setattr(demo, "_render_in_fresh_process", no_synthesis)
    assert build_demo_corpus(folder.parent, "voice", **SMALL) == manifests
    assert {path: path.stat().st_mtime_ns for path in folder.rglob("*")} == before


def test_same_seed_is_byte_identical_elsewhere(corpora, tmp_path):
    again = build_demo_corpus(tmp_path, "voice", **SMALL)
    assert file_digests(again["train"].parent) == file_digests(corpora["voice"]["train"].parent)


def test_other_arguments_rebuild_cleanly(tmp_path):
    build_demo_corpus(tmp_path, "voice", n_train=8, n_val=4)
    manifests = build_demo_corpus(tmp_path, "voice", n_train=4, n_val=4, seed=1)
    rows = rows_of(manifests)
    assert [len(rows["train"]), len(rows["validation"])] == [4, 4]
    assert len(list((tmp_path / "voice" / "wav").rglob("*.wav"))) == 8  # nothing left from the first build


def test_different_seed_gives_different_sentences(corpora, tmp_path):
    other = build_demo_corpus(tmp_path, "voice", seed=1, **SMALL)
    texts = {row["text"] for row in read_manifest(other["train"])}
    assert texts.isdisjoint(row["text"] for row in read_manifest(corpora["voice"]["train"]))


@pytest.mark.parametrize("categories", list(CATEGORY_SETS))
def test_no_sentence_in_two_splits(corpora, categories):
    rows = rows_of(corpora[categories])
    train, val = ({row["text"] for row in rows[split]} for split in ("train", "validation"))
    assert len(train) == len(rows["train"]) and len(val) == len(rows["validation"])
    assert train.isdisjoint(val)


@pytest.mark.parametrize("categories", list(CATEGORY_SETS))
def test_categories_are_balanced(corpora, categories):
    names = [c.name for c in CATEGORY_SETS[categories]]
    for split, rows in rows_of(corpora[categories]).items():
        counts = Counter(row["category"] for row in rows)
        assert set(counts) == set(names)
        assert max(counts.values()) - min(counts.values()) <= 1, (split, counts)


def test_validation_voices_are_held_out(corpora):
    rows = rows_of(corpora["voice"])
    variants = {
        split: {(row["category"], row["speaker"].split("+")[1]) for row in split_rows}
        for split, split_rows in rows.items()
    }
    for category in ("male", "female", "whisper"):
        train = {v for c, v in variants["train"] if c == category}
        val = {v for c, v in variants["validation"] if c == category}
        assert train and val and train.isdisjoint(val), category
    assert {v for c, v in variants["train"] | variants["validation"] if c == "creaky"} == {"croak"}


def test_accent_categories_use_their_accent(corpora):
    for rows in rows_of(corpora["accent"]).values():
        for row in rows:
            assert row["speaker"].split("+")[0] == ACCENTS[row["category"]]


@pytest.mark.parametrize("categories", list(CATEGORY_SETS))
def test_every_phone_has_a_broad_class(corpora, categories):
    labels = label_map(categories)
    rows = [row for split_rows in rows_of(corpora[categories]).values() for row in split_rows]
    labels.check((row["id"], row["phones"]) for row in rows)
    for row in rows:
        assert labels.encode(row["phones"], row["category"])


@pytest.mark.parametrize("categories", list(CATEGORY_SETS))
def test_larger_corpus_has_no_unknown_phones(tmp_path, categories):
    manifests = build_demo_corpus(tmp_path, categories, n_train=160, n_val=40, seed=7)
    rows = [row for split_rows in rows_of(manifests).values() for row in split_rows]
    assert {row["speaker"].split("+")[0] for row in rows} == set(ACCENTS.values())
    label_map(categories).check((row["id"], row["phones"]) for row in rows)


def test_espeak_names_a_bad_voice():
    espeak = ESpeak()
    assert espeak is ESpeak() and espeak.sample_rate == 22050
    for voice in ("en-gb", "en-us+nosuchvariant"):
        with pytest.raises(ESpeakError, match=voice.replace("+", r"\+")):
            espeak.synthesize("hello", voice)


def test_espeak_phonemes_are_units_per_word():
    words = ESpeak().phonemes("church judge", "en-us")
    assert words == [["tʃ", "ˈɜː", "tʃ"], ["dʒ", "ˈʌ", "dʒ"]]
