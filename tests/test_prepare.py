"""Corpus → speaker-disjoint sets (real WAV files, real headers), and the ARPAbet/TIMIT label maps."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from omegaconf import OmegaConf

from broadclass.data.labels import LabelMap
from broadclass.data.manifest import read_manifest
from broadclass.data.sets import locate_set, prepare_sets
from broadclass.data.sources import CorpusError
from broadclass.prepare import main
from tests.helpers.config import CONF_DIR

CATEGORIES = ("calm", "angry", "happy", "sad")
PHONES = ("h ə l oʊ | w ɜː l d", "k æ t", "s ɪ ŋ | ə | s ɒ ŋ", "tʃ ɪ p s")


def write_wav(path: Path, seconds: float, rate: int = 16_000, channels: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = np.random.default_rng(0).uniform(-0.1, 0.1, size=(int(seconds * rate), channels))
    sf.write(path, samples, rate, subtype="PCM_16")


@pytest.fixture
def corpus(tmp_path) -> Path:
    """4 categories x 5 speakers, 2-4 utterances each (60 rows), as a JSONL manifest with relative paths."""
    rows = []
    for c, category in enumerate(CATEGORIES):
        for s in range(5):
            speaker = f"{category}{s}"
            for u in range(2 + (s + c) % 3):
                audio = Path("wav") / speaker / f"{u}.wav"
                write_wav(tmp_path / "corpus" / audio, 0.1 + 0.05 * u)
                rows.append(
                    {"audio_filepath": str(audio), "phones": PHONES[u % 4], "category": category, "speaker": speaker}
                )
    manifest = tmp_path / "corpus" / "corpus.jsonl"
    manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return manifest


def speakers(manifest: Path) -> set[str]:
    return {row["speaker"] for row in read_manifest(manifest)}


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_sets_are_speaker_disjoint_folds_where_every_speaker_validates_once(corpus, tmp_path):
    prepare_sets(corpus, tmp_path / "sets", n_sets=3)
    validated: list[str] = []
    for k in (1, 2, 3):
        train, val = (speakers(tmp_path / "sets" / f"set{k}" / f"{s}.jsonl") for s in ("train", "validation"))
        assert not train & val
        assert len(train | val) == 20  # every speaker is in every set, on one side
        validated += sorted(val)
    # k-fold: each speaker is in exactly one validation split.
    assert sorted(validated) == sorted(set(validated)) and len(validated) == 20


def test_validation_splits_are_stratified_by_category(corpus, tmp_path):
    prepare_sets(corpus, tmp_path / "sets", n_sets=3)
    for k in (1, 2, 3):
        counts = Counter(r["category"] for r in read_manifest(tmp_path / "sets" / f"set{k}" / "validation.jsonl"))
        # 15 utterances per category over 3 folds: within one speaker (at most 4 utterances) of 5 each.
        assert set(counts) == set(CATEGORIES)
        assert all(1 <= n <= 9 for n in counts.values()), counts


def test_same_seed_rewrites_identical_files_and_another_seed_deals_other_folds(corpus, tmp_path):
    prepare_sets(corpus, tmp_path / "a", n_sets=3, seed=0)
    first = files(tmp_path / "a")
    prepare_sets(corpus, tmp_path / "a", n_sets=3, seed=0)  # idempotent: same bytes
    assert files(tmp_path / "a") == first
    prepare_sets(corpus, tmp_path / "b", n_sets=3, seed=1)
    folds = [json.loads((tmp_path / d / "sets.json").read_text())["speakers"] for d in ("a", "b")]
    assert folds[0] != folds[1]


def test_rerun_with_fewer_sets_removes_the_sets_it_made_before(corpus, tmp_path):
    prepare_sets(corpus, tmp_path / "sets", n_sets=4)
    prepare_sets(corpus, tmp_path / "sets", n_sets=2)
    assert sorted(p.name for p in (tmp_path / "sets").iterdir() if p.is_dir()) == ["set1", "set2"]


def test_refuses_to_write_into_a_folder_it_did_not_make(corpus, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(CorpusError, match="not a sets folder"):
        prepare_sets(corpus, tmp_path / "busy", n_sets=2)


def test_test_share_holds_out_the_same_speakers_as_test_in_every_set(corpus, tmp_path):
    prepare_sets(corpus, tmp_path / "sets", n_sets=3, test_share=0.2)
    tests = [speakers(tmp_path / "sets" / f"set{k}" / "test.jsonl") for k in (1, 2, 3)]
    assert tests[0] == tests[1] == tests[2]
    assert {s.rstrip("0123456789") for s in tests[0]} == set(CATEGORIES)  # stratified: every category
    for k in (1, 2, 3):
        others = speakers(tmp_path / "sets" / f"set{k}" / "train.jsonl") | speakers(
            tmp_path / "sets" / f"set{k}" / "validation.jsonl"
        )
        assert not others & tests[0]


def test_durations_are_read_from_the_audio_header_at_any_rate_and_channel_count(tmp_path):
    rows = []
    for s in range(2):
        write_wav(tmp_path / f"s{s}.wav", 0.5, rate=8_000, channels=2)
        rows.append({"audio_filepath": f"s{s}.wav", "phones": "k æ t", "category": "a", "speaker": f"s{s}"})
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    prepare_sets(tmp_path / "c.jsonl", tmp_path / "sets", n_sets=2)
    row = read_manifest(tmp_path / "sets" / "set1" / "train.jsonl")[0]
    assert row["duration"] == 0.5
    assert Path(row["audio_filepath"]).is_absolute()


def test_csv_manifest_gives_the_same_sets_as_jsonl(corpus, tmp_path):
    rows = [json.loads(line) for line in corpus.read_text(encoding="utf-8").splitlines()]
    with (corpus.parent / "corpus.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    prepare_sets(corpus, tmp_path / "j", n_sets=2)
    prepare_sets(corpus.parent / "corpus.csv", tmp_path / "c", n_sets=2)
    for k in (1, 2):
        for split in ("train", "validation"):
            name = f"set{k}/{split}.jsonl"
            assert (tmp_path / "j" / name).read_bytes() == (tmp_path / "c" / name).read_bytes()


def test_summary_is_printed_and_written_beside_the_manifests(corpus, tmp_path):
    printed: list[str] = []
    main([str(corpus), f"out={tmp_path / 'sets'}", "sets=2"], print_fn=printed.append)
    summary = json.loads((tmp_path / "sets" / "set1" / "summary.json").read_text())
    rows = read_manifest(tmp_path / "sets" / "set1" / "validation.jsonl")
    assert summary["validation"]["utterances"] == len(rows)
    assert summary["validation"]["categories"] == {c: sum(r["category"] == c for r in rows) for c in CATEGORIES}
    assert summary["validation"]["hours"] == round(sum(r["duration"] for r in rows) / 3600, 4)
    table = (tmp_path / "sets" / "set1" / "summary.md").read_text()
    assert "| split | speakers | utterances | hours | angry | calm | happy | sad |" in table
    assert table in printed
    # The last lines say how to train on the sets, with category tags that tell the names apart.
    assert f"paths.sets_dir={tmp_path / 'sets'}" in printed[-1] and "{name: happy, tag: h}" in printed[-1]


def test_progress_of_the_audio_headers_and_the_sets_is_shown_on_stderr(corpus, tmp_path, capsys):
    main([str(corpus), f"out={tmp_path / 'sets'}", "sets=2"], print_fn=lambda line: None)
    err = capsys.readouterr().err
    assert "reading audio headers" in err and "writing sets" in err


def test_every_unusable_row_is_named_with_its_file_and_line(corpus, tmp_path):
    lines = corpus.read_text(encoding="utf-8").splitlines()
    broken = json.loads(lines[2])
    broken["audio_filepath"] = "wav/nowhere.wav"
    lines[2] = json.dumps(broken)
    lines[4] = json.dumps({k: v for k, v in json.loads(lines[4]).items() if k != "speaker"})
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(CorpusError) as raised:
        prepare_sets(corpus, tmp_path / "sets", n_sets=2)
    # Every problem at once: the row without a speaker and the row whose audio is missing.
    assert raised.value.problems == [
        f"{corpus}:5: missing or empty speaker (column 'speaker')",
        f"{corpus}:3: audio file not found: {corpus.parent / 'wav' / 'nowhere.wav'}",
    ]
    assert not (tmp_path / "sets").exists()  # nothing is written from a corpus with errors


def test_unknown_phones_are_reported_before_anything_is_written(corpus, tmp_path):
    lines = corpus.read_text(encoding="utf-8").splitlines()
    lines[0] = json.dumps(json.loads(lines[0]) | {"phones": "k ☃"})
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"phone '☃' has no broad class in ipa.yaml, in 1 row.*corpus.jsonl:1"):
        prepare_sets(corpus, tmp_path / "sets", n_sets=2, labels="ipa")
    assert not (tmp_path / "sets").exists()


def test_fewer_speakers_than_sets_is_an_error(corpus, tmp_path):
    with pytest.raises(CorpusError, match="20 speaker.* cannot make 21"):
        prepare_sets(corpus, tmp_path / "sets", n_sets=21)


def write_timit(root: Path) -> None:
    """dr1/fabc0, dr1/mdef0, dr2/fghi0, dr2/mjkl0: one utterance each, TIMIT's file layout and case."""
    for region, speaker in (("dr1", "fabc0"), ("dr1", "mdef0"), ("dr2", "fghi0"), ("dr2", "mjkl0")):
        folder = root / "TRAIN" / region.upper() / speaker.upper()
        write_wav(folder / "SA1.WAV", 0.25)
        (folder / "SA1.PHN").write_text(
            "0 800 h#\n800 1600 sh\n1600 2400 iy\n2400 3200 hh\n3200 4000 ae\n4000 4000 h#\n"
        )
        (folder / "SA1.WRD").write_text("800 2400 she\n2400 4000 had\n")


def test_timit_folder_takes_speaker_and_category_from_folders_and_words_from_wrd(tmp_path):
    write_timit(tmp_path / "timit")
    prepare_sets(tmp_path / "timit", tmp_path / "sets", n_sets=2, category_level=2, labels="timit61")
    rows = read_manifest(tmp_path / "sets" / "set1" / "train.jsonl") + read_manifest(
        tmp_path / "sets" / "set1" / "validation.jsonl"
    )
    assert {r["category"] for r in rows} == {"DR1", "DR2"}
    row = next(r for r in rows if r["speaker"] == "FABC0")
    assert row["id"] == "FABC0-SA1" and row["duration"] == 0.25
    assert row["phones"] == "h# sh iy | hh ae h#"


def test_timit_folder_category_from_a_speaker_map(tmp_path):
    write_timit(tmp_path / "timit")
    (tmp_path / "gender.csv").write_text("speaker,category\nFABC0,f\nMDEF0,m\nFGHI0,f\nMJKL0,m\n")
    prepare_sets(tmp_path / "timit", tmp_path / "sets", n_sets=2, category_map=tmp_path / "gender.csv")
    for k in (1, 2):  # stratified: each fold has one female and one male speaker
        val = read_manifest(tmp_path / "sets" / f"set{k}" / "validation.jsonl")
        assert sorted(r["category"] for r in val) == ["f", "m"]


def test_locate_set_returns_its_manifests_and_names_a_missing_set(corpus, tmp_path):
    prepare_sets(corpus, tmp_path / "sets", n_sets=2, test_share=0.2)
    found = locate_set(tmp_path / "sets", "set2")
    assert found == {s: tmp_path / "sets" / "set2" / f"{s}.jsonl" for s in ("train", "validation", "test")}
    with pytest.raises(FileNotFoundError, match=r"set 'set3' has no train.jsonl or validation.jsonl.*set1, set2"):
        locate_set(tmp_path / "sets", "set3")


# ---- label maps ------------------------------------------------------------------------------------
def label_map(name: str, **changes) -> LabelMap:
    cfg = OmegaConf.merge(OmegaConf.load(CONF_DIR / "labels" / f"{name}.yaml"), changes)
    return LabelMap.from_config(cfg, [{"name": "a", "tag": "a"}])


def test_every_label_config_has_the_classes_of_ipa_in_the_same_order():
    # Same classes and tags, same order: a model's token ids do not depend on its corpus's phone alphabet.
    ipa = [(n, s["tag"]) for n, s in label_map("ipa").classes.items()]
    assert [(n, s["tag"]) for n, s in label_map("arpabet").classes.items()] == ipa
    assert [(n, s["tag"]) for n, s in label_map("timit61").classes.items()] == [*ipa, ("silence", "s")]


def test_arpabet_maps_cmu_phones_with_stress_digits_stripped():
    classes, unknown = label_map("arpabet").class_sequence("HH AH0 L OW1 | W ER1 L D | CH IY2 Z NG")
    assert not unknown
    words = [w.split() for w in ("fricative vowel approximant vowel", "approximant vowel approximant plosive")]
    assert classes == [*words[0], "|", *words[1], "|", "affricate", "vowel", "fricative", "nasal"]


def test_timit61_has_all_61_phones_in_timit_groups():
    timit = label_map("timit61")
    assert sum(len(s["phones"]) for s in timit.classes.values()) == 61
    classes, unknown = timit.class_sequence("h# dcl d ax-h hh q dx pau el en jh epi")
    assert not unknown
    assert classes == (
        "silence silence plosive vowel approximant plosive plosive silence approximant nasal affricate silence".split()
    )


def test_dropped_class_leaves_transcriptions_and_vocabulary():
    timit = label_map("timit61", drop=["silence"])
    assert timit.class_sequence("h# sh iy | pau | hh ae dcl d h#")[0] == (
        "fricative vowel | approximant vowel plosive".split()
    )
    assert "silence" not in timit.classes and not any(t.startswith("s_") for t in timit.tokens)
    assert timit.tokens == label_map("ipa").tokens  # the same vocabulary as IPA-labelled data


def test_drop_must_name_a_class():
    with pytest.raises(ValueError, match=r"labels.drop must name classes .* got \['pause'\]"):
        label_map("timit61", drop=["pause"])


# ---- unlabeled audio ----------------------------------------------------------------------------------------------
def test_a_folder_of_audio_becomes_one_unlabeled_manifest(tmp_path, monkeypatch):
    monkeypatch.setenv("BROADCLASS_ROOT", str(tmp_path))  # the check's audio cache goes under the project root
    folder = tmp_path / "recordings"
    write_wav(folder / "b.wav", 0.5)
    write_wav(folder / "day2" / "a.FLAC", 1.5, rate=22_050, channels=2)
    (folder / "notes.txt").write_text("not audio, left alone\n")
    printed: list[str] = []
    main([str(folder), "unlabeled=true", f"out={tmp_path / 'out'}", "check=true"], print_fn=printed.append)
    manifest = tmp_path / "out" / "unlabeled.jsonl"
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    assert rows == [
        {"id": "b.wav", "audio_filepath": str((folder / "b.wav").resolve()), "duration": 0.5},
        {"id": "day2/a.FLAC", "audio_filepath": str((folder / "day2" / "a.FLAC").resolve()), "duration": 1.5},
    ]
    assert printed[0] == f"2 audio file(s) listed in {manifest.resolve()}."
    assert printed[1].startswith("Data check: no problems in unlabeled 2 rows.")


def test_every_unusable_audio_file_is_reported_at_once_and_nothing_is_written(tmp_path, capsys):
    folder = tmp_path / "recordings"
    write_wav(folder / "good.wav", 0.5)
    sf.write(folder / "empty.wav", np.zeros(0, np.float32), 16_000)
    (folder / "sub").mkdir()
    (folder / "sub" / "broken.flac").write_bytes(b"fLaC and then nothing that decodes")
    with pytest.raises(SystemExit) as raised:
        main([str(folder), "unlabeled=true", f"out={tmp_path / 'out'}"])
    assert raised.value.code == 1
    err = capsys.readouterr().err
    assert "2 audio file(s) cannot be used" in err and "Traceback" not in err
    assert f"audio file has no samples: {folder / 'empty.wav'}" in err
    assert f"cannot decode audio file {folder / 'sub' / 'broken.flac'}" in err
    assert not (tmp_path / "out").exists()


def test_unlabeled_refuses_the_arguments_of_labeled_sets(tmp_path, capsys):
    write_wav(tmp_path / "recordings" / "a.wav", 0.5)
    with pytest.raises(SystemExit) as raised:
        main([str(tmp_path / "recordings"), "unlabeled=true", "sets=3", "labels=ipa", f"out={tmp_path / 'out'}"])
    assert raised.value.code == 1
    assert "unlabeled=true lists audio files, it makes no sets: drop sets=, labels=" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path / "recordings" / "a.wav"), "unlabeled=true", f"out={tmp_path / 'out'}"])
    assert "takes a folder of audio files" in capsys.readouterr().err
