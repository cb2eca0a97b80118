"""JSONL manifests: one utterance per line (NeMo/SpeechBrain style).

Required fields: ``audio_filepath`` (absolute, or relative to the manifest's folder), ``duration``
(seconds), ``phones`` (phone units separated by spaces, ``|`` between words) and ``category``.
Optional: ``id`` (defaults to ``<manifest stem>-<line>``), ``speaker``, ``text``.

:func:`read_manifest` reads the whole file before it judges it: every line that is not JSON, not an
object, lacks a field or has a field of the wrong type is named in one :class:`ManifestError`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

REQUIRED_FIELDS = ("audio_filepath", "duration", "phones", "category")
# What a row of audio without transcriptions needs (self-supervised pretraining).
AUDIO_FIELDS = ("audio_filepath", "duration")
# The JSON type every known field must have when present; ids and speakers may be numbers (LibriSpeech).
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "audio_filepath": (str,),
    "duration": (int, float),
    "phones": (str,),
    "category": (str,),
    "text": (str,),
    "id": (str, int),
    "speaker": (str, int),
}
TYPE_NAMES = {str: "a string", int: "an integer", float: "a number"}
MAX_LISTED = 50


class ManifestError(ValueError):
    """A manifest that cannot be used; ``problems`` names each bad line as ``file:line: what``."""

    def __init__(self, problems: str | Sequence[str], what: str = "problem(s)"):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__(listed(self.problems, what))


def listed(problems: Sequence[str], what: str, limit: int = MAX_LISTED) -> str:
    """``problems`` as one message: a single problem as it is, several counted and one a line."""
    if len(problems) == 1:
        return problems[0]
    lines = "\n".join(f"  {p}" for p in problems[:limit])
    more = f"\n  … and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"{len(problems)} {what}:\n{lines}{more}"


def jsonl_lines(path: Path) -> Iterator[tuple[int, dict | None, str | None]]:
    """(line number, object, problem) of each non-blank line: the object, or None and what is wrong."""
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                yield line_no, None, f"{path}:{line_no}: not valid JSON ({err.msg})"
                continue
            if not isinstance(row, dict):
                yield line_no, None, f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}"
                continue
            yield line_no, row, None


def field_type_problems(row: Mapping, where: str) -> list[str]:
    """Known fields of ``row`` whose value has the wrong JSON type (a bool is no number)."""
    problems = []
    for key, types in FIELD_TYPES.items():
        value = row.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            expected = " or ".join(TYPE_NAMES[t] for t in types)
            problems.append(f"{where}: {key} {value!r} is {type(value).__name__}, expected {expected}")
        elif key == "duration" and not (math.isfinite(value) and value >= 0):
            problems.append(f"{where}: duration {value!r} is not a finite number of seconds >= 0")
    return problems


def read_manifest(path: str | Path, required: Sequence[str] = REQUIRED_FIELDS) -> list[dict]:
    """Rows of a JSONL manifest with ``audio_filepath`` made absolute and an ``id`` on every row.

    ``required``: the fields every row must have (prediction needs only ``audio_filepath``). Raises one
    :class:`ManifestError` naming every bad line."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    rows: list[dict] = []
    problems: list[str] = []
    for line_no, row, problem in jsonl_lines(path):
        where = f"{path}:{line_no}"
        if row is None:
            problems.append(problem)
            continue
        missing = [key for key in required if row.get(key) is None]
        if missing:
            problems.append(f"{where}: missing field(s) {', '.join(missing)}")
        wrong_types = field_type_problems(row, where)
        problems += wrong_types
        if missing or wrong_types:
            continue
        if "duration" in row:
            row["duration"] = float(row["duration"])
        audio = Path(row["audio_filepath"])
        row["audio_filepath"] = str(audio if audio.is_absolute() else (path.parent / audio))
        row.setdefault("id", f"{path.stem}-{line_no}")
        row["_source"] = where
        rows.append(row)
    if problems:
        raise ManifestError(problems, f"problem(s) in {path}")
    if not rows:
        raise ManifestError(f"manifest is empty: {path}")
    return rows


def write_manifest(path: str | Path, rows: Iterable[Mapping]) -> Path:
    """Write rows atomically (temp file + rename), so a crash never leaves half a manifest."""
    lines = (json.dumps({k: v for k, v in row.items() if not k.startswith("_")}, ensure_ascii=False) for row in rows)
    return write_text_atomic(path, "".join(line + "\n" for line in lines))


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` atomically (temp file + rename), so a reader never sees half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))
