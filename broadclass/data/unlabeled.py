"""A folder of audio files as one manifest of unlabeled audio, for self-supervised pretraining.

``python -m broadclass.prepare <folder> unlabeled=true out=<dir>`` (:func:`prepare_unlabeled`) writes
``<dir>/unlabeled.jsonl``: one row per audio file under the folder (any depth, sorted by path), with ``id`` (the
file's path relative to the folder), ``audio_filepath`` (absolute) and ``duration`` (seconds, from the header).
No transcriptions, categories or speakers are needed. Every file that cannot be used (unreadable, no samples)
is reported at once, and nothing is written until every file passes.
"""

from __future__ import annotations

from pathlib import Path

from broadclass.data.audio import AudioError, read_header
from broadclass.data.manifest import write_manifest
from broadclass.data.sets import progress
from broadclass.data.sources import CorpusError, raise_listed

# The files taken as audio (any case), in formats soundfile decodes; other files in the folder are left alone.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aif", ".aiff", ".au", ".caf", ".w64")
MANIFEST_NAME = "unlabeled.jsonl"


def audio_files(folder: Path) -> list[Path]:
    """Every audio file under ``folder`` (:data:`AUDIO_SUFFIXES`), sorted by path."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def prepare_unlabeled(source: str | Path, out: str | Path) -> Path:
    """Write the manifest of every audio file under the folder ``source`` to ``out/unlabeled.jsonl``; returns
    its path. One :class:`CorpusError` lists every file that cannot be used."""
    folder = Path(source)
    if not folder.is_dir():
        raise CorpusError(f"unlabeled=true takes a folder of audio files; {folder} is not a folder")
    files = audio_files(folder)
    if not files:
        raise CorpusError(f"no audio files under {folder} (suffixes: {', '.join(AUDIO_SUFFIXES)})")
    rows, problems = [], []
    for path in progress(files, "reading audio headers"):
        try:
            header = read_header(path)
        except AudioError as err:
            problems.append(str(err))
            continue
        rows.append(
            {
                "id": path.relative_to(folder).as_posix(),
                "audio_filepath": str(path.resolve()),
                "duration": round(header.duration, 6),
            }
        )
    raise_listed(problems, "audio file(s) cannot be used")
    return write_manifest(Path(out) / MANIFEST_NAME, rows)
