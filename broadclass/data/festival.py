"""A held-out corpus from another synthesizer family: Festival (not eSpeak), ARPAbet phones, three voices.

For studies that must not train and test on one synthesizer: random English sentences from the project's
word list, spoken by the three English voices Debian ships in main (:data:`VOICES`), one voice per
category. Festival's diphone voices ``kal_diphone`` and ``ked_diphone`` (two US men) and the HTS voice
``cmu_us_slt_arctic_hts`` (a US woman, a statistical-parametric model: a third way of making speech).

Speakers: each voice has its own pseudo-speakers, a tempo (duration factor) and a pitch shift in
semitones drawn once from the seed, and every utterance is spoken by one of them. Training, validation
and test each have speakers of their own (:data:`SPEAKERS_PER_VOICE`), so the held-out splits are held
out by speaker, as the demo holds out eSpeak voice variants. The diphone voices take the pitch shift as
their F0 target (``int_lr_params``: mean and range) and the tempo as ``Duration_Stretch``; Festival's
HTS module has no pitch control, so the HTS voice's pitch shift is a change of playback rate (F0 and
formants move together: a shorter or longer vocal tract), its speed (``-r``) set so the utterance still
lasts tempo × its natural length.

Phones come from Festival itself: each Word's segments (``SylStructure``) plus the segments the voice's
post-lexical rules insert after them (``ked_diphone`` adds an ``r`` after ``er``), in the ``radio``
phone set, mapped to ARPAbet (:data:`RADIO_TO_ARPABET`; pauses and breaths dropped) as
``conf/labels/arpabet.yaml`` lists it, with ``|`` between words.

Debian main has no British English voice (``rab_diphone`` is non-free), so every voice uses the
``radio`` set and no ``mrpa`` map is needed.

Audio: 16 kHz 16-bit mono (the HTS voice's 32 kHz and every playback-rate change resampled with soxr).
Two faults of Festival's diphone synthesis are mended. Its 16-bit samples overflow now and then
(``ked_diphone`` in about one utterance in four): the wrap-around is undone and the diphone voices are
scaled by half (:attr:`FestivalVoice.gain`). And past the last diphone, which ends in the middle of the
final pause, the wave is filled from memory Festival never set: usually near silence, but it differs
from process to process and was once a 0.1 s full-scale burst. Every utterance is cut there, so
it ends with half a pause (about 0.1 s) and builds are byte-identical.

Layout: ``root/{train,validation,test}.jsonl``, ``root/wav/<split>/<id>.wav`` and ``root/corpus.json``, the
build arguments. A build whose arguments match ``corpus.json`` and whose files all exist is reused without
touching a file and without Festival (a corpus copied to a machine without it still works); other
arguments rebuild the folder from scratch. The Festival version is recorded in ``corpus.json`` but does
not trigger a rebuild. Builds of the same arguments are byte-identical, anywhere, whatever ``jobs``.
Not safe to run twice at once on one root.

``python -m broadclass.festival_corpus root=data/festival`` builds one from the shell (about 50 s for the
default 1,100 utterances on 2 busy cores).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from broadclass.data.demo import WORDS_FILE, draw_new_sentence, load_words
from broadclass.data.manifest import ManifestError, read_manifest, write_manifest

# Bump when a change to this module changes what a build writes, so old corpora are rebuilt.
CORPUS_VERSION = 2
SPLITS = ("train", "validation", "test")
SAMPLE_RATE = 16_000
# Pseudo-speakers per voice in each split; no speaker is in two splits.
SPEAKERS_PER_VOICE = {"train": 6, "validation": 2, "test": 2}
_SPLIT_SHORT = {"train": "train", "validation": "val", "test": "test"}  # in speaker names: kal-val1
TEMPO = (0.85, 1.2)  # duration factor of a speaker (>1: slower)
SEMITONES = (-2.5, 2.5)  # pitch shift of a speaker
# What to install on Debian/Ubuntu: the synthesizer and the three voices (the CMU lexicon comes with them).
APT_PACKAGES = ("festival", "festvox-kallpc16k", "festvox-kdlpc16k", "festvox-us-slt-hts")
INSTALL_HINT = f"apt-get install -y {' '.join(APT_PACKAGES)}"


@dataclass(frozen=True)
class FestivalVoice:
    """One category: a Festival voice and how it is given a speaker's pitch.

    ``f0_mean``/``f0_std``: the voice's own ``int_lr_params`` targets (diphone voices), scaled by the
    pitch shift; ``None`` for an HTS voice, whose pitch moves by playback rate instead.
    ``duration_stretch``: the voice's own ``Duration_Stretch``, multiplied by the tempo.
    ``gain``: applied to the voice's samples, so the diphone voices (which reach full scale) and the HTS
    voice (peaks about half of it) come out about as loud.
    """

    name: str
    tag: str
    voice: str
    short: str
    package: str
    f0_mean: float | None = None
    f0_std: float | None = None
    duration_stretch: float = 1.0
    gain: float = 1.0

    @property
    def hts(self) -> bool:
        return self.f0_mean is None


VOICES: tuple[FestivalVoice, ...] = (
    FestivalVoice("us_male_kal", "k", "kal_diphone", "kal", "festvox-kallpc16k", 105.0, 14.0, 1.1, 0.5),
    FestivalVoice("us_male_ked", "d", "ked_diphone", "ked", "festvox-kdlpc16k", 105.0, 15.0, 1.1, 0.5),
    FestivalVoice("us_female_slt", "s", "cmu_us_slt_arctic_hts", "slt", "festvox-us-slt-hts"),
)

# Festival's radio phone set (festival/lib/radio_phones.scm, the US voices' set) -> ARPAbet as in
# conf/labels/arpabet.yaml. The names are ARPAbet's already, lower case; hv (voiced h) is HH; pauses,
# the utterance edge and breaths are not phones of a transcription (None: dropped).
RADIO_TO_ARPABET: dict[str, str | None] = {
    **{
        p: p.upper()
        for p in (
            "aa ae ah ao aw ax axr ay b ch d dh dx eh el em en er ey f g hh ih ix iy jh k l m n nx ng "
            "ow oy p r s sh t th uh uw v w y z zh"
        ).split()
    },
    "hv": "HH",
    "pau": None,
    "h#": None,
    "brth": None,
    "#": None,
}


class FestivalNotFoundError(SystemExit):
    """Festival or one of its voices is not installed; the message says what to install.

    A ``SystemExit`` (status 1), so that the training command, which meets it in ``prepare_data``, and
    ``python -m broadclass.festival_corpus`` end with this message alone, no traceback. Catch it by name.
    """

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class FestivalError(RuntimeError):
    """Festival ran but did not give every utterance's audio and phones; the message has its output."""


@dataclass(frozen=True)
class Speaker:
    name: str
    voice: FestivalVoice
    tempo: float
    semitones: float


@dataclass(frozen=True)
class _Utterance:
    id: str
    split: str
    speaker: Speaker
    text: str


def _speakers(rng: random.Random) -> dict[tuple[str, str], list[Speaker]]:
    """Each voice's pseudo-speakers per split, drawn from ``rng``."""
    speakers = {}
    for voice in VOICES:
        for split in SPLITS:
            speakers[voice.name, split] = [
                Speaker(
                    f"{voice.short}-{_SPLIT_SHORT[split]}{i}",
                    voice,
                    round(rng.uniform(*TEMPO), 2),
                    round(rng.uniform(*SEMITONES), 1),
                )
                for i in range(SPEAKERS_PER_VOICE[split])
            ]
    return speakers


def _plan(n_per_split: dict[str, int], seed: int, min_words: int, max_words: int, words: Sequence[str]):
    """Every utterance, drawn up front: voices round-robin, a new sentence each, a speaker of its split."""
    rng = random.Random(seed)
    speakers = _speakers(rng)
    used: set[str] = set()
    plan = []
    for split in SPLITS:
        for index in range(n_per_split[split]):
            voice = VOICES[index % len(VOICES)]
            text = draw_new_sentence(rng, words, min_words, max_words, used)
            plan.append(_Utterance(f"{split}-{index:05d}", split, rng.choice(speakers[voice.name, split]), text))
    return plan


# ---- Festival ---------------------------------------------------------------------------------------

# Scheme run before the utterances: prints "@@ <id> | <phones of word 1> | <phones of word 2> ... @ <end>", where
# <end> (seconds) is where the last diphone ends, the middle of the final pause (-1: no final pause).
_PRELUDE = r"""
(define (bc_segs seg)
  "The segment's name and those of the following segments that belong to no word (post-lexical inserts)."
  (let ((out (list (item.name seg))) (s (item.next (item.relation seg 'Segment))))
    (while (and s (not (item.relation s 'SylStructure)))
      (set! out (cons (item.name s) out))
      (set! s (item.next s)))
    (reverse out)))
(define (bc_end u)
  "The middle of the final pause: beyond it Festival's diphone voices fill the wave from memory never set."
  (let ((last (utt.relation.last u 'Segment)))
    (if (and last (string-equal (item.name last) "pau") (item.prev last))
        (/ (+ (item.feat (item.prev last) 'end) (item.feat last 'end)) 2)
        -1)))
(define (bc_print id u)
  (format t "@@ %s" id)
  (mapcar
   (lambda (w)
     (format t " |")
     (mapcar
      (lambda (syl)
        (mapcar (lambda (seg) (mapcar (lambda (n) (format t " %s" n)) (bc_segs seg))) (item.daughters syl)))
      (item.daughters (item.relation w 'SylStructure))))
   (utt.relation.items u 'Word))
  (format t " @ %f\n" (bc_end u)))
"""


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _playback(speaker: Speaker) -> float:
    """Playback-rate factor of an HTS speaker's pitch shift (1 for diphone voices)."""
    return 2.0 ** (speaker.semitones / 12.0) if speaker.voice.hts else 1.0


def _utterance_scheme(utt: _Utterance, wav: Path) -> str:
    """Select the voice afresh (it resets every parameter), set the speaker, synthesize, save, print."""
    speaker, voice = utt.speaker, utt.speaker.voice
    lines = [f"(voice_{voice.voice})"]
    if voice.hts:
        # The model's own speed (-r, >1 faster) times the playback rate give tempo × the natural length.
        speed = 1.0 / (speaker.tempo * _playback(speaker))
        lines.append(f'(set! hts_engine_params (append {voice.voice}::hts_engine_params \'(("-r" {speed:.6f}))))')
    else:
        scale = 2.0 ** (speaker.semitones / 12.0)
        lines.append(
            f"(set! int_lr_params '((target_f0_mean {voice.f0_mean * scale:.3f}) "
            f"(target_f0_std {voice.f0_std * scale:.3f}) (model_f0_mean 170) (model_f0_std 34)))"
        )
        lines.append(f"(Parameter.set 'Duration_Stretch {voice.duration_stretch * speaker.tempo:.6f})")
    lines.append(f"(set! bc_u (utt.synth (Utterance Text {_scheme_string(utt.text)})))")
    lines.append(f"(utt.save.wave bc_u {_scheme_string(str(wav))} 'riff)")
    lines.append(f"(bc_print {_scheme_string(utt.id)} bc_u)")
    return "\n".join(lines) + "\n"


def festival_path() -> str:
    """The ``festival`` executable; :class:`FestivalNotFoundError` saying what to install when it is not on PATH."""
    path = shutil.which("festival")
    if path is None:
        raise FestivalNotFoundError(
            "Festival is not installed (`festival` is not on PATH); the Festival corpus needs it and three "
            f"voices. On Debian/Ubuntu: {INSTALL_HINT}"
        )
    return path


def _run_festival(festival: str, script: str, workdir: Path) -> subprocess.Popen:
    script_path = workdir / f"script-{hashlib.sha256(script.encode()).hexdigest()[:12]}.scm"
    script_path.write_text(script, encoding="utf-8")
    return subprocess.Popen(
        [festival, "--batch", str(script_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=workdir,
    )


def festival_version(festival: str) -> str:
    result = subprocess.run([festival, "--version"], capture_output=True, text=True, check=False)
    return result.stdout.strip().split(": ", 1)[-1]  # "<path>: Festival Speech Synthesis System: 2.5.0…"


def check_voices(festival: str) -> None:
    """:class:`FestivalNotFoundError` naming the packages of the voices Festival does not have."""
    with tempfile.TemporaryDirectory() as tmp:
        process = _run_festival(festival, '(format t "@@ %l\\n" (voice.list))\n', Path(tmp))
        output, _ = process.communicate()
    found = re.search(r"^@@ \((.*)\)$", output, re.MULTILINE)
    available = set(found.group(1).split()) if found else set()
    missing = [voice for voice in VOICES if voice.voice not in available]
    if missing:
        raise FestivalNotFoundError(
            f"Festival has no voice {', '.join(v.voice for v in missing)} (it has: {', '.join(sorted(available))}). "
            f"On Debian/Ubuntu: apt-get install -y {' '.join(v.package for v in missing)}"
        )


def _parse_phones(line: str) -> tuple[str, list[list[str]], float]:
    """``@@ <id> | dh ax | k ae t @ 1.23`` -> (id, ARPAbet phones per word, end in seconds or -1); unknown
    Festival phones raise."""
    line, _, end = line.rpartition(" @ ")
    utt_id, *spoken = line.removeprefix("@@ ").split("|")
    utt_id = utt_id.strip()
    words = []
    for word in spoken:
        phones = []
        for phone in word.split():
            if phone not in RADIO_TO_ARPABET:
                raise FestivalError(f"Festival phone {phone!r} in {utt_id} has no ARPAbet equivalent")
            if RADIO_TO_ARPABET[phone] is not None:
                phones.append(RADIO_TO_ARPABET[phone])
        if phones:
            words.append(phones)
    return utt_id, words, float(end)


def _unwrapped(samples: np.ndarray) -> np.ndarray:
    """Festival's int16 samples with overflows undone, as float (1.0 = full scale).

    Festival's LPC resynthesis casts to 16 bits without clipping: where the diphone voices go a few per
    cent past full scale (``ked_diphone`` in about one utterance in four, even at its own F0) the sample
    wraps around by 65,536, a full-scale click. Speech never moves by half the range between two
    samples, so such a step is a wrap, and unwrapping it restores the waveform exactly.
    """
    return np.unwrap(samples.astype(np.float64), period=65536.0) / 32768.0


def _to_16k(path: Path, speaker: Speaker, end: float) -> np.ndarray:
    """Festival's WAV as 16 kHz int16: cut at ``end`` seconds (when >= 0), unwrapped, scaled by the voice's
    gain, after the speaker's playback-rate change (soxr, deterministic); an utterance still past full scale
    is scaled to 0.99 of it."""
    samples, rate = sf.read(str(path), dtype="int16", always_2d=True)
    if end >= 0:
        samples = samples[: round(end * rate)]
    mono = _unwrapped(samples[:, 0]) * speaker.voice.gain
    source_rate = rate * _playback(speaker)
    if source_rate != SAMPLE_RATE:
        mono = soxr.resample(mono, source_rate, SAMPLE_RATE, quality="HQ")
    peak = float(np.abs(mono).max()) if mono.size else 0.0
    if peak > 0.99:
        mono = mono * (0.99 / peak)
    return np.round(mono * 32768).astype(np.int16)


def _render(plan: Sequence[_Utterance], corpus_dir: Path, jobs: int) -> None:
    """Synthesize the plan in ``jobs`` Festival processes, then write 16 kHz WAVs and the manifests.

    Each utterance selects its voice afresh and Festival keeps no state from one utterance to the next,
    so its output does not depend on which process spoke it or after what.
    """
    festival = festival_path()
    check_voices(festival)
    native = corpus_dir / ".festival"
    shutil.rmtree(native, ignore_errors=True)
    native.mkdir(parents=True)
    try:
        chunks = [plan[i::jobs] for i in range(min(jobs, len(plan)))]
        scripts = [_PRELUDE + "".join(_utterance_scheme(u, native / f"{u.id}.wav") for u in chunk) for chunk in chunks]
        processes = [_run_festival(festival, script, native) for script in scripts]
        phones: dict[str, list[list[str]]] = {}
        ends: dict[str, float] = {}
        outputs = []
        for process in processes:
            output, _ = process.communicate()
            outputs.append(output)
            for line in output.splitlines():
                if line.startswith("@@ "):
                    utt_id, phones[utt_id], ends[utt_id] = _parse_phones(line)
        missing = [u.id for u in plan if not phones.get(u.id) or not (native / f"{u.id}.wav").is_file()]
        if missing:
            tail = "\n".join("\n".join(o.strip().splitlines()[-20:]) for o in outputs)
            raise FestivalError(
                f"Festival gave no audio or no phones for {len(missing)} utterance(s) ({', '.join(missing[:5])}); "
                f"its output:\n{tail}"
            )
        rows: dict[str, list[dict]] = {split: [] for split in SPLITS}
        for utt in plan:
            samples = _to_16k(native / f"{utt.id}.wav", utt.speaker, ends[utt.id])
            relative = Path("wav") / utt.split / f"{utt.id}.wav"
            sf.write(corpus_dir / relative, samples, SAMPLE_RATE, subtype="PCM_16")
            rows[utt.split].append(
                {
                    "id": utt.id,
                    "audio_filepath": relative.as_posix(),
                    "duration": round(samples.size / SAMPLE_RATE, 6),
                    "phones": " | ".join(" ".join(word) for word in phones[utt.id]),
                    "category": utt.speaker.voice.name,
                    "speaker": utt.speaker.name,
                    "text": utt.text,
                }
            )
        for split, split_rows in rows.items():
            write_manifest(corpus_dir / f"{split}.jsonl", split_rows)
    finally:
        shutil.rmtree(native, ignore_errors=True)


# ---- build ------------------------------------------------------------------------------------------


def _build_spec(n: dict[str, int], seed: int, min_words: int, max_words: int) -> dict:
    """What decides a corpus's bytes, Festival aside: arguments, word list, voices and this module's version."""
    return {
        "version": CORPUS_VERSION,
        "n_train": n["train"],
        "n_val": n["validation"],
        "n_test": n["test"],
        "seed": seed,
        "min_words": min_words,
        "max_words": max_words,
        "words_sha256": hashlib.sha256(WORDS_FILE.read_bytes()).hexdigest(),
        "voices": [voice.voice for voice in VOICES],
    }


def _is_complete(corpus_dir: Path, spec: dict, manifests: dict[str, Path]) -> bool:
    try:
        recorded = json.loads((corpus_dir / "corpus.json").read_text(encoding="utf-8"))
        recorded.pop("festival", None)  # informative only
        if recorded != spec:
            return False
        rows = {split: read_manifest(path) for split, path in manifests.items()}
    except (OSError, ValueError, ManifestError):  # missing or unreadable: rebuild
        return False
    expected = {"train": spec["n_train"], "validation": spec["n_val"], "test": spec["n_test"]}
    if any(len(rows[split]) != expected[split] for split in SPLITS):
        return False
    return all(Path(row["audio_filepath"]).is_file() for split_rows in rows.values() for row in split_rows)


def build_festival_corpus(
    root: str | Path,
    n_train: int = 900,
    n_val: int = 100,
    n_test: int = 100,
    seed: int = 0,
    min_words: int = 3,
    max_words: int = 6,
    jobs: int | None = None,
) -> dict[str, Path]:
    """Build (or reuse) the Festival corpus in ``root``; returns ``{"train", "validation", "test"}`` manifests.

    ``jobs``: Festival processes (default: 2 where there are 2 CPUs and 100 utterances); the result does not
    depend on it.
    Raises :class:`FestivalNotFoundError` with the packages to install when Festival or a voice is missing
    and the corpus is not already built.
    """
    n = {"train": n_train, "validation": n_val, "test": n_test}
    if min(n.values()) < 1:
        raise ValueError(f"n_train, n_val and n_test must be at least 1, got {n_train}, {n_val} and {n_test}")
    if not 1 <= min_words <= max_words:
        raise ValueError(f"need 1 <= min_words <= max_words, got {min_words} and {max_words}")
    corpus_dir = Path(root)
    manifests = {split: corpus_dir / f"{split}.jsonl" for split in SPLITS}
    spec = _build_spec(n, seed, min_words, max_words)
    if _is_complete(corpus_dir, spec, manifests):
        return manifests

    festival = festival_path()  # before anything is deleted: no Festival, no change
    # Forget the old build first: a crash from here on leaves no corpus.json, so the next call rebuilds.
    (corpus_dir / "corpus.json").unlink(missing_ok=True)
    for split in SPLITS:
        shutil.rmtree(corpus_dir / "wav" / split, ignore_errors=True)
        (corpus_dir / "wav" / split).mkdir(parents=True)
    plan = _plan(n, seed, min_words, max_words, load_words())
    if jobs is None:  # a process per core (2 at most), one per 50 utterances at least: each loads the voices
        jobs = max(1, min(2, os.cpu_count() or 1, len(plan) // 50))
    _render(plan, corpus_dir, jobs)
    write_manifest(corpus_dir / "corpus.json", [{**spec, "festival": festival_version(festival)}])
    return manifests
