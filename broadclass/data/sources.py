"""Corpus rows from tabular sources (CSV, JSONL), with the user's column names; the speaker → category map.

A corpus row, as the set-making of :mod:`broadclass.data.sets` works on it, has the fields of :data:`FIELDS`.
Each field comes from a column: the one the user names (``columns=audio=path,phones=transcript``), else
the first of the field's :data:`COMMON_NAMES` the source has. A required field with no column is one error
that lists the columns found, never one error per row.

Every problem of every row is collected; :func:`read_table_source` raises one :class:`CorpusError`
listing them all (file and line of each).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from broadclass.data.manifest import jsonl_lines, listed

# Corpus fields and the column names recognised for each without columns=, most specific first.
COMMON_NAMES: dict[str, tuple[str, ...]] = {
    "audio": ("audio_filepath", "audio", "path", "file", "wav", "audio_path", "file_path", "filename"),
    "phones": ("phones", "phonemes", "phonetic"),
    "text": ("text", "transcription", "transcript", "sentence", "normalized_text"),
    "category": ("category", "label"),
    "speaker": ("speaker", "speaker_id", "spk", "client_id"),
    "id": ("id", "utt_id", "utterance_id", "key"),
}
FIELDS = tuple(COMMON_NAMES)


class CorpusError(ValueError):
    """A corpus that cannot be used; ``problems`` names each row or file, all of them at once."""

    def __init__(self, problems: str | Sequence[str], what: str = "problem(s)"):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__(listed(self.problems, what))


def raise_listed(problems: Sequence[str], what: str) -> None:
    """Raise one :class:`CorpusError` listing ``problems``, if there are any."""
    if problems:
        raise CorpusError(problems, what)


def load_category_map(path: str | Path) -> dict[str, str]:
    """Speaker → category from a CSV (``speaker,category`` columns) or a JSON object."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"category map not found: {path}")
    if path.suffix.lower() == ".json":
        try:
            mapping = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise CorpusError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(mapping, dict):
            raise CorpusError(f"{path}: expected a JSON object speaker -> category")
        return {str(k): str(v) for k, v in mapping.items()}
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if not {"speaker", "category"} <= set(reader.fieldnames or []):
            raise CorpusError(f"{path}: needs a header row with columns speaker,category; got {reader.fieldnames}")
        return {row["speaker"]: row["category"] for row in reader}


def parse_columns(spec: str | None) -> dict[str, str]:
    """``audio=path,phones=transcript`` → ``{"audio": "path", "phones": "transcript"}``."""
    chosen: dict[str, str] = {}
    problems = []
    for item in (spec or "").split(","):
        if not item.strip():
            continue
        name, sep, column = (part.strip() for part in item.partition("="))
        if not sep or not column:
            problems.append(f"columns=: {item.strip()!r} is not FIELD=COLUMN")
        elif name not in COMMON_NAMES:
            problems.append(f"columns=: unknown field {name!r} (fields: {', '.join(FIELDS)})")
        else:
            chosen[name] = column
    raise_listed(problems, "problem(s) in columns=")
    return chosen


def resolve_columns(
    found: Sequence[str],
    chosen: Mapping[str, str],
    required: Iterable[str],
    where: str,
    preferred: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Field → column of a source with columns ``found``; one error for every field that has none.

    ``preferred``: a column to take for a field before the common names (a ``datasets`` Audio column).
    """
    columns: dict[str, str] = {}
    problems = []
    for name, column in chosen.items():
        if column in found:
            columns[name] = column
        else:
            problems.append(f"columns={name}={column}: {where} has no column {column!r}")
    for name in FIELDS:  # a column the user chose for one field is never taken for another
        if name in chosen:
            continue
        candidates = ([preferred[name]] if preferred and name in preferred else []) + list(COMMON_NAMES[name])
        column = next((c for c in candidates if c in found and c not in chosen.values()), None)
        if column is not None:
            columns[name] = column
    missing = [name for name in required if name not in columns and name not in chosen]
    if missing:
        names = "; ".join(f"{name}: {', '.join(COMMON_NAMES[name])}" for name in missing)
        example = ",".join(f"{name}=<column>" for name in missing)
        problems.append(
            f"{where}: no column for {', '.join(missing)}. Columns found: {', '.join(map(str, found)) or 'none'}. "
            f"Name them with columns={example} (recognised without it: {names})"
        )
    if problems:
        raise CorpusError(problems, f"problem(s) with the columns of {where}")
    return columns


@dataclass
class Table:
    """The records of a CSV or JSONL file: (line number, record), the columns seen, unreadable lines."""

    path: Path
    columns: list[str] = field(default_factory=list)
    records: list[tuple[int, dict]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def read_table(path: Path) -> Table:
    """Every record of a CSV (header row) or JSONL file; bad lines become ``problems``, never exceptions."""
    table = Table(path)
    if path.suffix.lower() == ".csv":
        with path.open(encoding="utf-8", errors="replace", newline="") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            table.columns = list(header)
            for record in reader:
                where = f"{path}:{reader.line_num}"
                extra = record.pop(None, None)  # csv puts surplus fields under the key None
                if extra is not None or None in record.values():
                    fields = len(header) + len(extra or ()) - sum(v is None for v in record.values())
                    table.problems.append(f"{where}: {fields} field(s), the header has {len(header)}")
                    continue
                table.records.append((reader.line_num, record))
        return table
    seen: dict[str, None] = {}
    for line_no, record, problem in jsonl_lines(path):
        if record is None:
            table.problems.append(f"{path}:{line_no}: {problem}")
            continue
        seen.update(dict.fromkeys(record))
        table.records.append((line_no, record))
    table.columns = list(seen)
    return table


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


def table_rows(
    records: Iterable[tuple[str, Mapping]],
    columns: Mapping[str, str],
    required: Sequence[str],
    audio_root: Path | None,
    category_of_speaker: Mapping[str, str] | None = None,
) -> tuple[list[dict], list[str]]:
    """Corpus rows of ``(where, record)`` pairs, and a problem for every record that cannot be one.

    ``audio_root``: the folder relative audio paths are resolved against (None: the audio is no path).
    """
    rows, problems = [], []
    for where, record in records:
        values = {name: _text(record.get(column)) for name, column in columns.items()}
        missing = [f"{name} (column {columns[name]!r})" for name in required if not values.get(name)]
        if missing:
            problems.append(f"{where}: missing or empty {', '.join(missing)}")
            continue
        if category_of_speaker is not None:
            if values["speaker"] not in category_of_speaker:
                problems.append(f"{where}: speaker {values['speaker']!r} is not in the category map")
                continue
            values["category"] = category_of_speaker[values["speaker"]]
        if audio_root is not None:
            audio = Path(values["audio"])
            audio_filepath = str((audio if audio.is_absolute() else audio_root / audio).resolve())
            default_id = f"{values.get('speaker', '')}-{audio.stem}"
        else:
            audio_filepath, default_id = None, ""
        row = {
            "id": values.get("id") or default_id,
            "audio_filepath": audio_filepath,
            "phones": " ".join(values.get("phones", "").split()),
            "category": values.get("category", ""),
        }
        row |= {key: values[key] for key in ("speaker", "text") if values.get(key)}
        row["_source"] = where
        rows.append(row)
    return rows, problems


def read_table_source(
    path: str | Path,
    chosen: Mapping[str, str],
    category_of_speaker: Mapping[str, str] | None = None,
    text_for_phones: bool = False,
) -> tuple[list[dict], list[str]]:
    """Rows of a CSV/JSONL corpus (audio paths absolute, ``_source`` = ``file:line`` on each), and a
    problem for every line that cannot be one. A layout with no column for a field raises.

    ``text_for_phones``: the phones will come from the text column (``phonemize=``), so it is the
    text, not a phones column, that every row needs."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"corpus manifest not found: {path}")
    table = read_table(path)
    if not table.records and not table.problems:
        raise CorpusError(f"corpus manifest has no rows: {path}")
    required = ["audio", "text" if text_for_phones else "phones", "speaker"]
    required += [] if category_of_speaker is not None else ["category"]
    try:
        columns = resolve_columns(table.columns, chosen, required, str(path))
    except CorpusError as err:
        known = {name for names in COMMON_NAMES.values() for name in names}
        if path.suffix.lower() == ".csv" and not known & set(table.columns):
            err.problems.append(
                f"{path}:1: is this a header row? It names no known column: add one, e.g. "
                "audio_filepath,phones,category,speaker"
            )
        raise CorpusError(table.problems + err.problems, f"problem(s) in {path}") from None
    rows, problems = table_rows(
        ((f"{path}:{line}", record) for line, record in table.records),
        columns,
        required,
        path.parent,
        category_of_speaker,
    )
    return rows, table.problems + problems
