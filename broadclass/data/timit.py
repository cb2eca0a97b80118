"""Corpus rows from a TIMIT-style folder: every ``<utt>.phn`` with its audio beside it.

A ``<utt>.phn`` holds lines ``start end phone``; its audio is ``<utt>.wav``, ``<utt>.WAV`` or
``<utt>.WAV.wav``; the speaker is the folder holding them. A ``<utt>.wrd`` beside it (TIMIT's word
alignment) puts ``|`` between the words' phones. The category comes from a speaker → category map or from
the name of the folder N levels above the audio file (1 = the speaker's folder, 2 = its parent, e.g.
TIMIT's dialect region ``dr1``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from broadclass.data.sources import CorpusError, raise_listed


def _timit_audio(phn: Path) -> Path | None:
    base = phn.with_suffix("")
    for suffix in (".wav", ".WAV", ".WAV.wav"):
        candidate = base.parent / (base.name + suffix)
        if candidate.is_file():
            return candidate
    return None


def _read_segments(path: Path) -> list[tuple[int, int, str]]:
    """``start end label`` lines of a TIMIT .phn/.wrd file."""
    segments = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3 or not (parts[0].isdigit() and parts[1].isdigit()):
            raise CorpusError(f"{path}:{line_no}: expected 'start end label', got {line!r}")
        segments.append((int(parts[0]), int(parts[1]), parts[2]))
    return segments


def timit_phones(phn: Path) -> str:
    """The phones of a .phn file, with ``|`` between words when a .wrd file is beside it.

    A phone belongs to the word whose span holds its midpoint; phones outside every word (pauses, the
    utterance edges) belong to none and never start a new word.
    """
    phones = _read_segments(phn)
    wrd = phn.with_suffix(".wrd" if phn.suffix == ".phn" else ".WRD")
    words = _read_segments(wrd) if wrd.is_file() else []
    out: list[str] = []
    current = None
    for start, end, phone in phones:
        middle = (start + end) / 2
        word = next((i for i, (ws, we, _) in enumerate(words) if ws <= middle < we), None)
        if word is not None and current is not None and word != current:
            out.append("|")
        if word is not None:
            current = word
        out.append(phone)
    return " ".join(out)


def read_timit_source(
    root: str | Path, category_map: Mapping[str, str] | None = None, category_level: int | None = None
) -> list[dict]:
    """Rows of a TIMIT-style folder (see the module docstring), sorted by path; ``_source`` is the .phn file."""
    root = Path(root)
    if (category_map is None) == (category_level is None):
        raise CorpusError("a TIMIT-style folder needs exactly one of category_map= or category_level=")
    if category_level is not None and category_level < 1:
        raise CorpusError(f"category_level= counts folders up from the audio file, from 1; got {category_level}")
    phn_files = sorted(p for p in root.rglob("*") if p.suffix.lower() == ".phn" and p.is_file())
    if not phn_files:
        raise CorpusError(f"no .phn files under {root}")
    rows, problems = [], []
    for phn in phn_files:
        audio = _timit_audio(phn)
        if audio is None:
            problems.append(f"{phn}: no audio file beside it (.wav, .WAV or .WAV.wav)")
            continue
        speaker = phn.parent.name
        if category_map is not None:
            category = category_map.get(speaker)
            if category is None:
                problems.append(f"{phn}: speaker {speaker!r} is not in the category map")
                continue
        else:
            levels = audio.relative_to(root).parents
            if category_level >= len(levels):
                problems.append(f"{phn}: no folder {category_level} level(s) up inside {root}")
                continue
            category = audio.parents[category_level - 1].name
        rows.append(
            {
                "id": f"{speaker}-{phn.with_suffix('').name}",
                "audio_filepath": str(audio.resolve()),
                "phones": timit_phones(phn),
                "category": category,
                "speaker": speaker,
                "_source": str(phn),
            }
        )
    raise_listed(problems, "utterance(s) cannot be used")
    return rows
