"""Corpora as users bring them: their own column names, HuggingFace datasets (every storage form of the
audio), orthographic text phonemized by eSpeak, and every input problem reported at once."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import mlflow
import numpy as np
import pytest
import soundfile as sf
import yaml

from broadclass.data.demo import load_words
from broadclass.data.espeak import ESpeak
from broadclass.data.labels import LabelMap
from broadclass.data.manifest import ManifestError, read_manifest
from broadclass.data.phonemize import Phonemizer
from broadclass.data.sets import prepare_sets
from broadclass.data.sources import CorpusError
from broadclass.prepare import main
from broadclass.train import train
from tests.helpers.config import CONF_DIR, SHORT_RUN, compose_config

# (speaker = eSpeak voice, category, text): 4 speakers, 2 categories, 2 sentences each.
UTTERANCES = [
    ("en-us+m1", "male", "the cat sat on the mat"),
    ("en-us+m1", "male", "a dog ran home"),
    ("en-us+m3", "male", "we like green apples"),
    ("en-us+m3", "male", "she sells sea shells"),
    ("en-us+f2", "female", "good morning to you"),
    ("en-us+f2", "female", "the sun is bright today"),
    ("en-us+f4", "female", "my friend reads books"),
    ("en-us+f4", "female", "it is time for lunch"),
]


def synthesize(voice: str, text: str) -> np.ndarray:
    espeak = ESpeak()
    return espeak.synthesize(text, voice).astype(np.float32) / 32768


def wav_bytes(wave: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def build_dataset(folder: Path, storage: str, utterances=UTTERANCES, columns=("audio", "speaker", "category", "text")):
    """A ``datasets.Dataset`` of synthesized speech, its audio stored as ``storage``: bytes, path or array."""
    rate = ESpeak().sample_rate
    waves = [synthesize(voice, text) for voice, _, text in utterances]
    audio_name, speaker_name, category_name, text_name = columns
    if storage == "array":
        audio = [{"array": wave, "sampling_rate": rate} for wave in waves]
    elif storage == "bytes":
        audio = [{"bytes": wav_bytes(wave, rate), "path": f"clip{i}.wav"} for i, wave in enumerate(waves)]
    else:
        (folder / "clips").mkdir(parents=True, exist_ok=True)
        audio = []
        for i, wave in enumerate(waves):
            sf.write(folder / "clips" / f"clip{i}.wav", wave, rate, subtype="PCM_16")
            audio.append(str(folder / "clips" / f"clip{i}.wav"))
    dataset = datasets.Dataset.from_dict(
        {
            audio_name: audio,
            speaker_name: [voice for voice, _, _ in utterances],
            category_name: [category for _, category, _ in utterances],
            text_name: [text for _, _, text in utterances],
        }
    )
    if storage != "array":
        dataset = dataset.cast_column(audio_name, datasets.Audio())
    return dataset, waves


def save(dataset, folder: Path, form: str) -> Path:
    """``dataset`` written as ``form``: a save_to_disk folder, a parquet file or an arrow file."""
    if form == "save_to_disk":
        dataset.save_to_disk(str(folder / "saved"))
        return folder / "saved"
    if form == "parquet":
        dataset.to_parquet(str(folder / "corpus.parquet"))
        return folder / "corpus.parquet"
    dataset.save_to_disk(str(folder / "for-arrow"))
    return next((folder / "for-arrow").glob("*.arrow"))


def all_rows(sets: Path) -> list[dict]:
    return [row for split in ("train", "validation") for row in read_manifest(sets / "set1" / f"{split}.jsonl")]


# ---- columns ---------------------------------------------------------------------------------------------
@pytest.fixture
def table(tmp_path) -> list[dict]:
    """A lab's corpus table: 4 speakers, 2 categories, its own column names."""
    rows = []
    for i, (voice, category, text) in enumerate(UTTERANCES):
        wav = tmp_path / "wav" / f"{i}.wav"
        wav.parent.mkdir(exist_ok=True)
        sf.write(wav, synthesize(voice, text), ESpeak().sample_rate)
        phones = Phonemizer("en-us").phones(text)
        rows.append({"path": f"wav/{i}.wav", "transcript": phones, "emotion": category, "spk": voice})
    return rows


def write_csv(path: Path, rows: list[dict], header: bool = True) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        if header:
            writer.writeheader()
        writer.writerows(rows)
    return path


def test_columns_named_by_the_user_give_the_sets_of_the_standard_layout(table, tmp_path):
    write_csv(tmp_path / "lab.csv", table)
    standard = [
        {"audio_filepath": r["path"], "phones": r["transcript"], "category": r["emotion"], "speaker": r["spk"]}
        for r in table
    ]
    write_csv(tmp_path / "standard.csv", standard)
    main(
        [str(tmp_path / "lab.csv"), f"out={tmp_path / 'lab'}", "sets=2"]
        + ["columns=audio=path,phones=transcript,category=emotion,speaker=spk"],
        print_fn=lambda _: None,
    )
    prepare_sets(tmp_path / "standard.csv", tmp_path / "standard", n_sets=2)
    for name in ("set1/train.jsonl", "set2/validation.jsonl"):
        assert (tmp_path / "lab" / name).read_bytes() == (tmp_path / "standard" / name).read_bytes()


def test_common_column_names_are_recognised_without_columns(table, tmp_path):
    renamed = [
        {"audio": r["path"], "phones": r["transcript"], "label": r["emotion"], "speaker_id": r["spk"]} for r in table
    ]
    write_csv(tmp_path / "corpus.csv", renamed)
    prepare_sets(tmp_path / "corpus.csv", tmp_path / "sets", n_sets=2)
    rows = all_rows(tmp_path / "sets")
    assert sorted(r["category"] for r in rows) == sorted(c for _, c, _ in UTTERANCES)
    assert all(Path(r["audio_filepath"]).is_file() for r in rows)


def test_an_unknown_layout_is_one_error_listing_the_columns_found(table, tmp_path):
    write_csv(tmp_path / "lab.csv", table)
    with pytest.raises(CorpusError) as raised:
        prepare_sets(tmp_path / "lab.csv", tmp_path / "sets", n_sets=2)
    assert len(raised.value.problems) == 1  # not one per row
    message = raised.value.problems[0]
    assert "no column for phones, category." in message
    assert "Columns found: path, transcript, emotion, spk" in message and "columns=phones=<column>" in message
    # A column the user names must exist; an unknown field name is refused.
    with pytest.raises(CorpusError, match="has no column 'wav_path'"):
        prepare_sets(tmp_path / "lab.csv", tmp_path / "sets", columns="audio=wav_path,phones=transcript")
    with pytest.raises(CorpusError, match="unknown field 'emotion'"):
        prepare_sets(tmp_path / "lab.csv", tmp_path / "sets", columns="emotion=emotion")
    assert not (tmp_path / "sets").exists()


def test_a_csv_without_a_header_row_is_named_as_such(table, tmp_path):
    write_csv(tmp_path / "bare.csv", table, header=False)
    with pytest.raises(CorpusError, match=r"bare.csv:1: is this a header row\?"):
        prepare_sets(tmp_path / "bare.csv", tmp_path / "sets", n_sets=2)


# ---- HuggingFace datasets ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("storage", "form"),
    [
        ("bytes", "save_to_disk"),
        ("path", "save_to_disk"),
        ("array", "save_to_disk"),
        ("bytes", "parquet"),
        ("array", "parquet"),
        ("path", "arrow"),
    ],
)
def test_a_dataset_in_every_storage_form_gives_sets_with_its_audio_written_out(tmp_path, storage, form):
    dataset, waves = build_dataset(tmp_path / "build", storage)
    dataset = dataset.map(lambda row: {"phones": Phonemizer("en-us").phones(row["text"])})
    source = save(dataset, tmp_path / "build", form)
    prepare_sets(source, tmp_path / "sets", n_sets=2, labels="ipa")
    rows = sorted(all_rows(tmp_path / "sets"), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == [f"train-{i:06d}" for i in range(len(UTTERANCES))]
    for row, wave, (voice, category, text) in zip(rows, waves, UTTERANCES, strict=True):
        written, rate = sf.read(row["audio_filepath"], dtype="float32")
        assert Path(row["audio_filepath"]).parent == tmp_path / "sets" / "audio"
        assert rate == ESpeak().sample_rate and row["duration"] == round(len(wave) / rate, 6)
        # Encoded files are copied byte for byte (16-bit here), waveforms written as float: no sample moves.
        np.testing.assert_allclose(written, wave, atol=0 if storage == "array" else 1 / 32768)
        assert (row["speaker"], row["category"], row["text"]) == (voice, category, text)


def test_keep_splits_makes_one_set_of_the_datasets_own_splits_with_chosen_columns(tmp_path):
    columns = ("sound", "spk", "emotion", "sentence")
    train, _ = build_dataset(tmp_path / "a", "bytes", UTTERANCES[:6], columns)
    dev, _ = build_dataset(tmp_path / "b", "bytes", UTTERANCES[6:], columns)
    datasets.DatasetDict({"train": train, "dev": dev}).save_to_disk(str(tmp_path / "dd"))
    summaries = prepare_sets(
        tmp_path / "dd",
        tmp_path / "sets",
        keep_splits=True,
        phonemize="en-us",
        columns="audio=sound,speaker=spk,category=emotion,text=sentence",
    )
    assert list(summaries) == ["set1"] and not (tmp_path / "sets" / "set2").exists()
    val = read_manifest(tmp_path / "sets" / "set1" / "validation.jsonl")
    assert [r["id"] for r in val] == ["dev-000000", "dev-000001"]
    assert [r["text"] for r in val] == [text for _, _, text in UTTERANCES[6:]]
    spec = json.loads((tmp_path / "sets" / "sets.json").read_text())
    assert spec["keep_splits"] and spec["phonemes"]["voice"] == "en-us" and "speakers" not in spec


def test_a_dataset_without_speakers_needs_keep_splits_and_unplaceable_splits_are_named(tmp_path):
    dataset, _ = build_dataset(tmp_path, "bytes")
    dataset.remove_columns("speaker").save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(CorpusError, match=r"no column for phones, speaker(.|\n)*Columns found: audio, category, text"):
        prepare_sets(tmp_path / "saved", tmp_path / "sets")
    with pytest.raises(CorpusError, match="keep_splits=true needs a validation split; the splits are train"):
        prepare_sets(tmp_path / "saved", tmp_path / "sets", keep_splits=True, phonemize="en-us")


def test_a_hub_id_offline_is_a_clear_error(tmp_path):
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # set by conftest before datasets was imported
    with pytest.raises(CorpusError, match="cannot load the dataset someone/their-corpus(.|\n)*HF_HUB_OFFLINE is set"):
        prepare_sets("someone/their-corpus", tmp_path / "sets")


def test_bad_audio_rows_of_a_dataset_are_all_listed_before_anything_is_written(tmp_path):
    dataset, _ = build_dataset(tmp_path, "bytes")
    audio = list(dataset.cast_column("audio", datasets.Audio(decode=False))["audio"])
    audio[2] = {"bytes": b"not audio", "path": "x.wav"}
    audio[5] = None
    audio[6] = {"bytes": wav_bytes(np.zeros(0, np.float32), 16_000), "path": "empty.wav"}
    broken = dataset.remove_columns("audio").add_column("audio", audio).cast_column("audio", datasets.Audio())
    broken.save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(CorpusError) as raised:
        prepare_sets(tmp_path / "saved", tmp_path / "sets", phonemize="en-us")
    where = f"{tmp_path / 'saved'} train row"
    problems = raised.value.problems
    assert len(problems) == 3
    assert problems[0].startswith(f"{where} 2: cannot read the audio of column 'audio': Error opening")
    assert problems[1:] == [
        f"{where} 5: audio column 'audio': no audio",
        f"{where} 6: cannot read the audio of column 'audio': no samples",
    ]
    assert not (tmp_path / "sets").exists()


def test_a_column_of_file_paths_is_read_relative_to_the_dataset_and_a_missing_file_named(tmp_path):
    rate = ESpeak().sample_rate
    (tmp_path / "corpus" / "clips").mkdir(parents=True)
    for i, (voice, _, text) in enumerate(UTTERANCES):
        sf.write(tmp_path / "corpus" / "clips" / f"{i}.flac", synthesize(voice, text), rate)
    paths = [f"clips/{i}.flac" for i in range(len(UTTERANCES))]
    paths[3] = "clips/gone.flac"
    columns = {"file": paths, "speaker": [v for v, _, _ in UTTERANCES], "label": [c for _, c, _ in UTTERANCES]}
    columns["sentence"] = [t for _, _, t in UTTERANCES]
    datasets.Dataset.from_dict(columns).to_parquet(str(tmp_path / "corpus" / "train.parquet"))
    with pytest.raises(CorpusError) as raised:
        prepare_sets(tmp_path / "corpus", tmp_path / "sets", n_sets=2, phonemize="en-us")
    assert raised.value.problems == [
        f"{tmp_path / 'corpus'} train row 3: audio column 'file': audio file not found: "
        f"{tmp_path / 'corpus' / 'clips' / 'gone.flac'}"
    ]
    (tmp_path / "corpus" / "clips" / "3.flac").rename(tmp_path / "corpus" / "clips" / "gone.flac")
    prepare_sets(tmp_path / "corpus", tmp_path / "sets", n_sets=2, phonemize="en-us")
    written = sorted(p.name for p in (tmp_path / "sets" / "audio").iterdir())
    assert written == [f"train-{i:06d}.flac" for i in range(len(UTTERANCES))]  # copied in their own format


# ---- phones from text ---------------------------------------------------------------------------------------
def ipa_labels() -> LabelMap:
    return LabelMap.from_config(
        yaml.safe_load((CONF_DIR / "labels" / "ipa.yaml").read_text()), [{"name": "x", "tag": "x"}]
    )


@pytest.mark.parametrize(
    ("voice", "text", "phones"),
    [
        ("en-us", "hello world", "h ə l ˈoʊ | w ˈɜː l d"),
        ("en-us", "the cat", "ð ə | k ˈæ t"),
        ("es", "el niño come", "e l | n ˈi ɲ o | k ˈo m e"),
        ("es", "ciudad", "θ j u ð ˈa d"),
        ("de", "ich möchte Pfeffer", "ɪ ç | m ˈœ ç t ə | pf ˈɛ f ɜ"),
    ],
)
def test_known_words_get_their_ipa_phones_word_by_word(voice, text, phones):
    assert Phonemizer(voice).phones(text) == phones


@pytest.mark.parametrize(
    ("voice", "text"),
    [
        ("en-us", "the quick brown fox jumps over the lazy dog while judges vote on rhythm and measure pleasure"),
        (
            "es",
            "el veloz murciélago hindú comía feliz cardillo y kiwi; la cigüeña tocaba el saxofón detrás del palenque",
        ),
        ("de", "zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich; ich möchte Pfeffer und Brötchen"),
    ],
)
def test_every_phone_of_pangrams_has_a_broad_class(voice, text):
    phones = Phonemizer(voice).phones(text)
    assert len(phones.split(" | ")) >= 10
    ipa_labels().check([(voice, phones)])  # raises UnknownPhoneError naming any phone with no class


def test_phonemized_sets_record_the_voice_and_espeak_version(table, tmp_path):
    rows = [
        {"wav": r["path"], "sentence": t, "label": r["emotion"], "spk": r["spk"]}
        for r, (_, _, t) in zip(table, UTTERANCES, strict=True)
    ]
    write_csv(tmp_path / "text.csv", rows)
    prepare_sets(tmp_path / "text.csv", tmp_path / "sets", n_sets=2, phonemize="en-us")
    out = all_rows(tmp_path / "sets")
    assert {r["phones"] for r in out} == {Phonemizer("en-us").phones(t) for _, _, t in UTTERANCES}
    version = ESpeak().version
    assert f"eSpeak NG {version}, voice en-us" in (tmp_path / "sets" / "set1" / "summary.md").read_text()
    spec = json.loads((tmp_path / "sets" / "sets.json").read_text())
    assert spec["phonemes"] == {"phonemizer": "espeak-ng", "voice": "en-us", "espeak_version": version}


def test_words_espeak_cannot_say_and_unknown_voices_are_reported_by_row(table, tmp_path):
    texts = [text for _, _, text in UTTERANCES]
    rows = [
        {"wav": r["path"], "text": t, "label": r["emotion"], "spk": r["spk"]} for r, t in zip(table, texts, strict=True)
    ]
    rows[1]["text"] = "a ☃ ran home"
    rows[4]["text"] = "pay 5 € — now"
    rows[6]["text"] = "— …"
    write_csv(tmp_path / "text.csv", rows)
    with pytest.raises(CorpusError) as raised:
        prepare_sets(tmp_path / "text.csv", tmp_path / "sets", n_sets=2, phonemize="en-us")
    assert raised.value.problems == [
        f"{tmp_path / 'text.csv'}:3: eSpeak voice en-us cannot say '☃'",
        f"{tmp_path / 'text.csv'}:6: eSpeak voice en-us cannot say '€'",
        f"{tmp_path / 'text.csv'}:8: no phones",
    ]
    with pytest.raises(CorpusError, match="phonemize=xx-nowhere: eSpeak voice 'xx-nowhere' could not be set"):
        prepare_sets(tmp_path / "text.csv", tmp_path / "sets", n_sets=2, phonemize="xx-nowhere")
    assert not (tmp_path / "sets").exists()


# ---- every manifest problem at once, no traceback ------------------------------------------------------------
BAD_LINES = [
    '{"audio_filepath": "a.wav", "duration": 1.0, "phones": "k æ t", "category": "male"}',  # good
    "not json at all",
    '["a", "list"]',
    '{"audio_filepath": "b.wav", "phones": "k æ t"}',
    '{"audio_filepath": "c.wav", "duration": "2.31", "phones": "k æ t", "category": "male"}',
    '{"audio_filepath": "d.wav", "duration": 1.0, "phones": "k æ t", "category": 3}',
    '{"audio_filepath": 7, "duration": true, "phones": "k æ t", "category": "male"}',
]
EXPECTED = [
    "{m}:2: not valid JSON (Expecting value)",
    "{m}:3: expected a JSON object, got list",
    "{m}:4: missing field(s) duration, category",
    "{m}:5: duration '2.31' is str, expected an integer or a number",
    "{m}:6: category 3 is int, expected a string",
    "{m}:7: audio_filepath 7 is int, expected a string",
    "{m}:7: duration True is bool, expected an integer or a number",
]


def test_read_manifest_reports_every_manifest_level_problem_at_once(tmp_path):
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("\n".join(BAD_LINES) + "\n", encoding="utf-8")
    with pytest.raises(ManifestError) as raised:
        read_manifest(manifest)
    assert raised.value.problems == [line.format(m=manifest) for line in EXPECTED]


def test_prepare_reads_every_line_of_a_jsonl_corpus_before_it_reports(table, tmp_path):
    lines = [json.dumps(row) for row in table]
    lines[1] = "{broken"
    lines[4] = json.dumps({k: v for k, v in table[4].items() if k != "emotion"})
    (tmp_path / "corpus.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(CorpusError) as raised:
        prepare_sets(tmp_path / "corpus.jsonl", tmp_path / "sets", columns="phones=transcript,category=emotion")
    assert raised.value.problems == [
        f"{tmp_path / 'corpus.jsonl'}:2: not valid JSON (Expecting property name enclosed in double quotes)",
        f"{tmp_path / 'corpus.jsonl'}:5: missing or empty category (column 'emotion')",
    ]


def test_predict_input_manifest_reports_every_bad_line(tmp_path):
    from broadclass.predict import collect

    manifest = tmp_path / "to-predict.jsonl"
    manifest.write_text('{"audio_filepath": "a.wav"}\nnot json\n{"id": "x"}\n', encoding="utf-8")
    with pytest.raises(ManifestError) as raised:
        collect(manifest)
    assert raised.value.problems == [
        f"{manifest}:2: not valid JSON (Expecting value)",
        f"{manifest}:3: missing field(s) audio_filepath",
    ]


def run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, check=False, timeout=300)


def test_data_check_command_lists_every_problem_of_every_manifest_and_exits_1_without_traceback(tmp_path):
    train, validation = tmp_path / "train.jsonl", tmp_path / "validation.jsonl"
    train.write_text("\n".join(BAD_LINES) + "\n", encoding="utf-8")
    validation.write_text('{"audio_filepath": "a.wav"}\n', encoding="utf-8")
    result = run_module("broadclass.check", str(train), str(validation), "data.categories=[{name: male, tag: m}]")
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    for line in EXPECTED:
        assert line.format(m=train) in result.stdout
    assert f"{validation}:1: missing field(s) duration, phones, category" in result.stdout
    # The one line that is a row is checked in the same run: its audio does not exist.
    assert f"{train}:1 (id train-1): audio file not found: {tmp_path / 'a.wav'}" in result.stdout
    assert "Data check of train 7, validation 1 rows: 8 row(s) with errors." in result.stdout


def test_prepare_command_reports_bad_input_with_status_1_and_keeps_earlier_sets(table, tmp_path):
    write_csv(tmp_path / "corpus.csv", table)
    columns = "audio=path,phones=transcript,category=emotion,speaker=spk"
    out = tmp_path / "sets"
    main([str(tmp_path / "corpus.csv"), f"out={out}", "sets=2", f"columns={columns}"], print_fn=lambda _: None)
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    table[3]["spk"] = ""
    table[5]["path"] = "wav/missing.wav"
    write_csv(tmp_path / "corpus.csv", table)
    result = run_module("broadclass.prepare", str(tmp_path / "corpus.csv"), f"out={out}", f"columns={columns}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "corpus.csv:5: missing or empty speaker (column 'spk')" in result.stderr
    assert f"corpus.csv:7: audio file not found: {tmp_path / 'wav' / 'missing.wav'}" in result.stderr
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before  # nothing lost


# ---- end to end ------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(1200)  # a limit for hangs, several times its duration on a loaded 2-core machine
def test_a_datasets_folder_of_plain_text_is_phonemized_into_sets_the_reference_recipe_trains_on(
    tmp_path, empty_mlflow_db
):
    # 10 speakers (eSpeak voice variants), 2 categories, 4 sentences each, plain English text.
    words = load_words()
    rng = np.random.default_rng(0)
    voices = [(f"en-us+m{i}", "male") for i in range(1, 6)] + [(f"en-us+f{i}", "female") for i in range(1, 6)]
    utterances = [
        (voice, category, " ".join(rng.choice(words, size=4))) for voice, category in voices for _ in range(4)
    ]
    dataset, _ = build_dataset(tmp_path, "bytes", utterances)
    dataset.save_to_disk(str(tmp_path / "corpus"))
    sets = tmp_path / "sets"
    result = run_module(
        "broadclass.prepare",
        str(tmp_path / "corpus"),
        "phonemize=en-us",
        "sets=5",
        f"out={sets}",
        "check=true",
    )
    assert result.returncode == 0, result.stderr
    assert "Data check: no problems" in result.stdout
    assert "voice en-us" in (sets / "set1" / "summary.md").read_text()
    shutil.copy(empty_mlflow_db, tmp_path / "mlflow.db")
    cfg = compose_config(
        tmp_path,
        [
            "+experiment=onSet1",
            "trainer=cpu",
            "model=tiny",
            "model.pretrained=null",
            f"paths.sets_dir={sets}",
            "data.categories=[{name: female, tag: f}, {name: male, tag: m}]",
            "data.num_workers=0",
            *SHORT_RUN,
        ],
    )
    train(cfg)
    client = mlflow.MlflowClient(cfg.logger.mlflow.tracking_uri)
    run = client.search_runs([client.get_experiment_by_name(cfg.experiment_name).experiment_id])[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "model_broadclass_onSet1"
    assert "val/ter" in run.data.metrics and "val/macro_avg/f1" in run.data.metrics
