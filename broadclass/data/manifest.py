"""JSONL manifests: one utterance per line (NeMo/SpeechBrain style).

Required fields: ``audio_filepath`` (absolute, or relative to the manifest's folder), ``duration``
(seconds), ``phones`` (phone units separated by spaces, ``|`` between words) and ``category``.
Optional: ``id`` (defaults to ``<manifest stem>-<line>``), ``speaker``, ``text``. Unlabeled audio (for
self-supervised pretraining) needs only ``audio_filepath`` (:data:`UNLABELED_FIELDS`).

:func:`parse_manifest` reads the whole file and returns its rows with a :class:`LineProblem` for every line
that is no row (not JSON, not an object, a field missing or of the wrong type), so a caller can report those
with the problems of the rows; :func:`read_manifest` raises them as one :class:`ManifestError` instead.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REQUIRED_FIELDS = ("audio_filepath", "duration", "phones", "category")
# Unlabeled audio: the duration, when missing, is read from the audio header (broadclass.data.check).
UNLABELED_FIELDS = ("audio_filepath",)
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
    """(line number, object, problem) of each non-blank line: the object, or None and what is wrong with the
    line (without its place)."""
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                yield line_no, None, f"not valid JSON ({err.msg})"
                continue
            if not isinstance(row, dict):
                yield line_no, None, f"expected a JSON object, got {type(row).__name__}"
                continue
            yield line_no, row, None


def field_type_problems(row: Mapping) -> list[str]:
    """Known fields of ``row`` whose value has the wrong JSON type (a bool is no number)."""
    problems = []
    for key, types in FIELD_TYPES.items():
        value = row.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            expected = " or ".join(TYPE_NAMES[t] for t in types)
            problems.append(f"{key} {value!r} is {type(value).__name__}, expected {expected}")
        elif key == "duration" and not (math.isfinite(value) and value >= 0):
            problems.append(f"duration {value!r} is not a finite number of seconds >= 0")
    return problems


@dataclass(frozen=True)
class LineProblem:
    """A manifest line that is no row, or a manifest with none: where (``file:line``, or the file) and what."""

    source: str
    detail: str
    id: str = ""  # the line's own id, when it has one

    def __str__(self) -> str:
        return f"{self.source}: {self.detail}"


def parse_manifest(path: str | Path, required: Sequence[str] = REQUIRED_FIELDS) -> tuple[list[dict], list[LineProblem]]:
    """Rows of a JSONL manifest with ``audio_filepath`` made absolute, an ``id`` on every row and ``_source``
    (``file:line``); and a :class:`LineProblem` for every line that is no row, and for a manifest that is
    missing or has no line at all.

    ``required``: the fields every row must have (prediction and unlabeled audio need only ``audio_filepath``)."""
    path = Path(path)
    if not path.is_file():
        return [], [LineProblem(str(path), "manifest not found")]
    rows: list[dict] = []
    problems: list[LineProblem] = []
    for line_no, row, problem in jsonl_lines(path):
        where = f"{path}:{line_no}"
        if row is None:
            problems.append(LineProblem(where, problem))
            continue
        row_id = row.get("id")
        row_id = str(row_id) if isinstance(row_id, (str, int)) and not isinstance(row_id, bool) else ""
        missing = [key for key in required if row.get(key) is None]
        if missing:
            problems.append(LineProblem(where, f"missing field(s) {', '.join(missing)}", row_id))
        wrong_types = field_type_problems(row)
        problems += [LineProblem(where, detail, row_id) for detail in wrong_types]
        if missing or wrong_types:
            continue
        if "duration" in row:
            row["duration"] = float(row["duration"])
        audio = Path(row["audio_filepath"])
        row["audio_filepath"] = str(audio if audio.is_absolute() else (path.parent / audio))
        row.setdefault("id", f"{path.stem}-{line_no}")
        row["_source"] = where
        rows.append(row)
    if not rows and not problems:
        problems.append(LineProblem(str(path), "manifest is empty"))
    return rows, problems


def read_manifest(path: str | Path, required: Sequence[str] = REQUIRED_FIELDS) -> list[dict]:
    """The rows of :func:`parse_manifest`; one :class:`ManifestError` naming every line that is no row."""
    rows, problems = parse_manifest(path, required)
    if problems:
        raise ManifestError([str(p) for p in problems], f"problem(s) in {path}")
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


def corpus_summary(manifests: Mapping[str, str | Path], names: Sequence[str]) -> str:
    """Each split's manifest, then a plain-text table of its utterances per category (in ``names``' order)."""
    counts = {split: Counter(row["category"] for row in read_manifest(path)) for split, path in manifests.items()}
    header = ["split", *names, "total"]
    body = [[split, *(str(c[name]) for name in names), str(sum(c.values()))] for split, c in counts.items()]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    table = (
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *body]
    )
    return "\n".join([*(f"{split}: {path}" for split, path in manifests.items()), "", *table])
