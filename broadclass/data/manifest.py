"""JSONL manifests: one utterance per line (NeMo/SpeechBrain style).

Required fields: ``audio_filepath`` (absolute, or relative to the manifest's folder), ``duration``
(seconds), ``phones`` (phone units separated by spaces, ``|`` between words) and ``category``.
Optional: ``id`` (defaults to ``<manifest stem>-<line>``), ``speaker``, ``text``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

REQUIRED_FIELDS = ("audio_filepath", "duration", "phones", "category")


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file and line."""


def jsonl_rows(path: Path, error: type[Exception] = ManifestError) -> Iterator[tuple[int, dict]]:
    """(line number, object) of each non-blank line of a JSONL file; ``error`` names the line that is not one."""
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise error(f"{path}:{line_no}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise error(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
            yield line_no, row


def read_manifest(path: str | Path, required: Sequence[str] = REQUIRED_FIELDS) -> list[dict]:
    """Rows of a JSONL manifest with ``audio_filepath`` made absolute and an ``id`` on every row.

    ``required``: the fields every row must have (prediction needs only ``audio_filepath``)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    rows: list[dict] = []
    for line_no, row in jsonl_rows(path):
        missing = [key for key in required if key not in row]
        if missing:
            raise ManifestError(f"{path}:{line_no}: missing field(s) {', '.join(missing)}")
        if "duration" in row:
            try:
                row["duration"] = float(row["duration"])
            except (TypeError, ValueError):
                raise ManifestError(f"{path}:{line_no}: duration {row['duration']!r} is not a number") from None
        audio = Path(row["audio_filepath"])
        row["audio_filepath"] = str(audio if audio.is_absolute() else (path.parent / audio))
        row.setdefault("id", f"{path.stem}-{line_no}")
        row["_source"] = f"{path}:{line_no}"
        rows.append(row)
    if not rows:
        raise ManifestError(f"manifest is empty: {path}")
    return rows


def write_manifest(path: str | Path, rows: Iterable[Mapping]) -> Path:
    """Write rows atomically (temp file + rename), so a crash never leaves half a manifest."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for row in rows:
                clean = {k: v for k, v in row.items() if not k.startswith("_")}
                handle.write(json.dumps(clean, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
