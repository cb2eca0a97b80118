"""A synthetic demo corpus from eSpeak NG: random English sentences, IPA phones, one category each.

Two category sets (:data:`CATEGORY_SETS`):

* ``voice``: male, female, whisper, creaky voice; the accent is drawn at random, so the category is
  only in how the speech sounds, never in which words or phones it has.
* ``accent``: US, British, Scottish, Caribbean English; the voice (male or female) is drawn at random.

Validation speakers are held out: where a category has more than one voice variant, validation uses
one that training never hears (male ``+m6``, female ``+f3``, female whisper ``+whisperf``); creaky has
only ``+croak``. No sentence occurs in both splits. Categories are assigned round-robin, so their
counts differ by at most one.

Layout: ``root/<categories>/{train,validation}.jsonl``, ``root/<categories>/wav/<split>/<id>.wav``
(22,050 Hz 16-bit mono, as eSpeak makes it) and ``root/<categories>/corpus.json``, the build
arguments. A build whose arguments match ``corpus.json`` and whose files all exist is reused without
touching a file; other arguments rebuild the same folder from scratch. Builds of the same
arguments are byte-identical, anywhere. Not safe to run twice at once on one root (build it from one
process, e.g. Lightning's ``prepare_data``).

``python -m broadclass.demo_corpus root=data/demo categories=voice`` builds one from the shell.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import soundfile as sf

from broadclass.data.espeak import ESpeak
from broadclass.data.manifest import ManifestError, read_manifest, write_manifest, write_text_atomic

# Bump when a change to this module changes what a build writes, so old corpora are rebuilt.
CORPUS_VERSION = 1
SPLITS = ("train", "validation")
WORDS_FILE = Path(__file__).with_name("words.txt")
RATE_WPM = (140, 200)
PITCH = (30, 70)

ACCENTS = {"us": "en-us", "gb": "en", "scotland": "en-gb-scotland", "caribbean": "en-029"}
_MALE_TRAIN = ("m1", "m2", "m3", "m4", "m5", "m7", "m8")
_MALE_VALIDATION = ("m6",)
_FEMALE_TRAIN = ("f1", "f2", "f4", "f5")
_FEMALE_VALIDATION = ("f3",)


@dataclass(frozen=True)
class DemoCategory:
    """One category of a demo corpus and the eSpeak voices that realise it.

    ``accents`` are eSpeak language voices, drawn uniformly. ``train`` and ``validation`` are groups
    of voice variants: a group is drawn uniformly, then a variant within it, so a category mixing
    male and female voices is half of each whatever the number of variants of each.
    """

    name: str
    tag: str
    accents: tuple[str, ...]
    train: tuple[tuple[str, ...], ...]
    validation: tuple[tuple[str, ...], ...]

    def variants(self, split: str) -> tuple[tuple[str, ...], ...]:
        return self.train if split == "train" else self.validation


_ALL_ACCENTS = tuple(ACCENTS.values())
CATEGORY_SETS: dict[str, tuple[DemoCategory, ...]] = {
    "voice": (
        DemoCategory("male", "m", _ALL_ACCENTS, (_MALE_TRAIN,), (_MALE_VALIDATION,)),
        DemoCategory("female", "f", _ALL_ACCENTS, (_FEMALE_TRAIN,), (_FEMALE_VALIDATION,)),
        DemoCategory("whisper", "w", _ALL_ACCENTS, (("whisper",),), (("whisperf",),)),
        DemoCategory("creaky", "c", _ALL_ACCENTS, (("croak",),), (("croak",),)),
    ),
    "accent": tuple(
        DemoCategory(name, name[0], (voice,), (_MALE_TRAIN, _FEMALE_TRAIN), (_MALE_VALIDATION, _FEMALE_VALIDATION))
        for name, voice in ACCENTS.items()
    ),
}


@dataclass(frozen=True)
class _Utterance:
    """Everything needed to render one utterance; drawn up front so rendering involves no randomness."""

    id: str
    split: str
    category: str
    voice: str
    rate: int
    pitch: int
    noise_seed: int
    text: str


def load_words(path: Path = WORDS_FILE) -> list[str]:
    """The project's word list (one lowercase word per line)."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def draw_new_sentence(rng: random.Random, words: Sequence[str], min_words: int, max_words: int, used: set[str]) -> str:
    """A sentence of ``min_words``-``max_words`` random words not in ``used`` (added to it)."""
    for _ in range(1000):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(min_words, max_words)))
        if text not in used:
            used.add(text)
            return text
    raise ValueError(f"cannot draw a new sentence of {min_words}-{max_words} words: word list too small")


def _plan(
    categories: Sequence[DemoCategory],
    n_per_split: dict[str, int],
    seed: int,
    min_words: int,
    max_words: int,
    words: Sequence[str],
) -> list[_Utterance]:
    rng = random.Random(seed)
    used: set[str] = set()
    plan = []
    for split in SPLITS:
        for index in range(n_per_split[split]):
            category = categories[index % len(categories)]
            text = draw_new_sentence(rng, words, min_words, max_words, used)
            variant = rng.choice(rng.choice(category.variants(split)))
            plan.append(
                _Utterance(
                    id=f"{split}-{index:05d}",
                    split=split,
                    category=category.name,
                    voice=f"{rng.choice(category.accents)}+{variant}",
                    rate=rng.randint(*RATE_WPM),
                    pitch=rng.randint(*PITCH),
                    noise_seed=rng.randrange(2**31),
                    text=text,
                )
            )
    return plan


def _render(plan: Sequence[_Utterance], corpus_dir: Path) -> None:
    """Synthesise every utterance, write its WAV, then write the split manifests in plan order.

    Runs in a fresh process (see :func:`_render_in_fresh_process`): eSpeak carries oscillator phase and
    pitch flutter from one utterance to the next, so its samples are reproducible only as the same
    sequence of calls from a freshly loaded library.
    """
    espeak = ESpeak()
    rows: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for utt in plan:
        words = espeak.phonemes(utt.text, utt.voice)
        samples = espeak.synthesize(utt.text, utt.voice, utt.rate, utt.pitch, seed=utt.noise_seed)
        if samples.size == 0 or not words:
            raise RuntimeError(f"eSpeak produced no audio or no phonemes for {utt.text!r} with voice {utt.voice!r}")
        relative = Path("wav") / utt.split / f"{utt.id}.wav"
        sf.write(corpus_dir / relative, samples, espeak.sample_rate, subtype="PCM_16")
        rows[utt.split].append(
            {
                "id": utt.id,
                "audio_filepath": relative.as_posix(),
                "duration": round(samples.size / espeak.sample_rate, 6),
                "phones": " | ".join(" ".join(units) for units in words),
                "category": utt.category,
                "speaker": utt.voice,
                "text": utt.text,
            }
        )
    for split, split_rows in rows.items():
        write_manifest(corpus_dir / f"{split}.jsonl", split_rows)


def _render_from_stdin() -> None:
    """Entry point of the rendering process: a JSON request on stdin, see :func:`_render_in_fresh_process`."""
    request = json.load(sys.stdin)
    _render([_Utterance(**utt) for utt in request["plan"]], Path(request["corpus_dir"]))


def _render_in_fresh_process(plan: Sequence[_Utterance], corpus_dir: Path) -> None:
    """Run :func:`_render` in a new interpreter that imports only this module.

    Not multiprocessing: its spawn start method re-imports the caller's ``__main__`` (a training
    script pulls in torch and lightning), and fork would inherit an eSpeak already used by the caller.
    """
    package_parent = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    request = json.dumps({"corpus_dir": str(corpus_dir), "plan": [asdict(utt) for utt in plan]})
    result = subprocess.run(
        [sys.executable, "-c", "from broadclass.data.demo import _render_from_stdin; _render_from_stdin()"],
        input=request,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"rendering the demo corpus in {corpus_dir} failed:\n{result.stderr.strip()}")


def _build_spec(categories: str, n_train: int, n_val: int, seed: int, min_words: int, max_words: int) -> dict:
    """What decides a corpus's bytes: arguments, word list, eSpeak build and this module's version."""
    return {
        "version": CORPUS_VERSION,
        "categories": categories,
        "n_train": n_train,
        "n_val": n_val,
        "seed": seed,
        "min_words": min_words,
        "max_words": max_words,
        "words_sha256": hashlib.sha256(WORDS_FILE.read_bytes()).hexdigest(),
        "espeakng_loader": metadata.version("espeakng-loader"),
    }


def _is_complete(corpus_dir: Path, spec: dict, manifests: dict[str, Path]) -> bool:
    spec_path = corpus_dir / "corpus.json"
    try:
        if json.loads(spec_path.read_text(encoding="utf-8")) != spec:
            return False
        rows = {split: read_manifest(path) for split, path in manifests.items()}
    except (OSError, ValueError, ManifestError):  # missing or unreadable: rebuild
        return False
    if len(rows["train"]) != spec["n_train"] or len(rows["validation"]) != spec["n_val"]:
        return False
    return all(Path(row["audio_filepath"]).is_file() for split_rows in rows.values() for row in split_rows)


def build_demo_corpus(
    root: str | Path,
    categories: str = "voice",
    n_train: int = 3200,
    n_val: int = 100,
    seed: int = 0,
    min_words: int = 3,
    max_words: int = 6,
    n_labeled: int | None = None,
) -> dict[str, Path]:
    """Build (or reuse) the demo corpus under ``root/<categories>``; returns the manifest paths.

    Returns ``{"train": .../train.jsonl, "validation": .../validation.jsonl}``. The result depends
    only on the arguments (and the word list and eSpeak build), so the same call gives byte-identical
    WAVs and manifests in any folder. ``n_labeled``: train on the first ``n_labeled`` training rows only
    (``train_<n>.jsonl``; categories alternate, so they stay balanced) — the small labeled set of the
    pretraining study, whose other rows are the unlabeled audio.
    """
    if n_labeled is not None and not 1 <= n_labeled <= n_train:
        raise ValueError(f"n_labeled must be between 1 and n_train={n_train}, got {n_labeled}")
    manifests = _build_corpus(root, categories, n_train, n_val, seed, min_words, max_words)
    if n_labeled is None or n_labeled == n_train:
        return manifests
    subset = manifests["train"].with_name(f"train_{n_labeled}.jsonl")
    # The first lines as written (audio paths relative to the folder), so the subset is as portable as the corpus.
    lines = manifests["train"].read_text(encoding="utf-8").splitlines(keepends=True)[:n_labeled]
    if not subset.is_file() or subset.read_text(encoding="utf-8") != "".join(lines):
        write_text_atomic(subset, "".join(lines))
    return {**manifests, "train": subset}


def _build_corpus(
    root: str | Path, categories: str, n_train: int, n_val: int, seed: int, min_words: int, max_words: int
) -> dict[str, Path]:
    if categories not in CATEGORY_SETS:
        raise ValueError(f"unknown demo categories {categories!r}; choose one of {', '.join(CATEGORY_SETS)}")
    if n_train < 1 or n_val < 1:
        raise ValueError(f"n_train and n_val must be at least 1, got {n_train} and {n_val}")
    if not 1 <= min_words <= max_words:
        raise ValueError(f"need 1 <= min_words <= max_words, got {min_words} and {max_words}")

    corpus_dir = Path(root) / categories
    manifests = {split: corpus_dir / f"{split}.jsonl" for split in SPLITS}
    spec = _build_spec(categories, n_train, n_val, seed, min_words, max_words)
    if _is_complete(corpus_dir, spec, manifests):
        return manifests

    # Forget the old build first: a crash from here on leaves no corpus.json, so the next call rebuilds.
    (corpus_dir / "corpus.json").unlink(missing_ok=True)
    for split in SPLITS:
        shutil.rmtree(corpus_dir / "wav" / split, ignore_errors=True)
        (corpus_dir / "wav" / split).mkdir(parents=True)

    plan = _plan(
        CATEGORY_SETS[categories], {"train": n_train, "validation": n_val}, seed, min_words, max_words, load_words()
    )
    # A fresh interpreter per build: eSpeak's output depends on every call made since it was loaded.
    _render_in_fresh_process(plan, corpus_dir)
    write_manifest(corpus_dir / "corpus.json", [spec])  # atomic; one JSON line
    return manifests
