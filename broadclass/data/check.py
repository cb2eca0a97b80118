"""Check manifests before training: every row that would waste or break a run, reported by kind.

``check_manifests`` reads every split's manifest and looks at every row once: it returns the rows and a
:class:`DataReport` naming each problem (``file:line``, id, what is wrong), the lines that are no row (not
JSON, a field missing …) with the problems of the rows that are, so one run reports everything. The datamodule
runs it in ``setup``, so every way into training gets it; ``data.on_error=raise`` stops there with the whole
report, ``skip`` drops the rows. Without labels (``labels=None``: unlabeled audio for self-supervised
pretraining) rows need only ``audio_filepath``, the audio checks run and the label checks do not.

Audio is opened by its header first (:func:`broadclass.data.audio.read_header`: missing, unreadable, empty,
too long), then decoded through the datamodule's :class:`AudioCache` (silent, non-finite, too short): the
decoded 16 kHz waveform lands in the cache, so the first epoch reads it from there instead of decoding again.

``python -m broadclass.check [MANIFEST ...] [OVERRIDE ...]`` checks from the shell (:mod:`broadclass.check`).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from broadclass.data.audio import AudioCache, AudioError, read_header
from broadclass.data.labels import WORD_BOUNDARY, LabelMap
from broadclass.data.manifest import REQUIRED_FIELDS, UNLABELED_FIELDS, parse_manifest

# What each kind means, in report order.
KINDS = {
    "unusable_manifest": "manifest file not found, or with no line",
    "broken_line": "manifest line that is no row: not JSON, not an object, a field missing or of the wrong type",
    "missing_audio": "audio file not found",
    "unreadable_audio": "audio file cannot be decoded",
    "empty_audio": "audio file has no samples",
    "too_long": "audio longer than data.max_duration (one batch of it could run out of memory)",
    "non_finite_audio": "audio has NaN or infinite samples",
    "silent_audio": "audio is silent (peak below -80 dBFS)",
    "too_short_for_encoder": "audio shorter than the encoder's receptive field: no output frame",
    "too_short_for_labels": "fewer encoder frames than CTC needs for the labels (tokens + repeats)",
    "unknown_category": "category not in data.categories",
    "unknown_phones": "phones with no broad class in the label config",
    "empty_transcription": "no tokens after mapping the phones",
    "duplicate_id": "utterance id used by an earlier row",
    "speaker_overlap": "evaluation speaker also in the train split",
}
# The kind of each reason an audio header cannot be used (broadclass.data.audio.AudioError.reason).
HEADER_KINDS = {"missing": "missing_audio", "unreadable": "unreadable_audio", "empty": "empty_audio"}
SILENCE_PEAK = 1e-4  # -80 dBFS: digital silence, or a lone bit of dither
EVALUATION_SPLITS = ("validation", "test")
ON_ERROR = ("raise", "skip")
MAX_LISTED = 20


@dataclass(frozen=True)
class EncoderGeometry:
    """The wav2vec2 feature encoder's convolutions; the default is the stack every wav2vec2 model uses."""

    kernels: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    strides: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)

    @classmethod
    def of(cls, config: object) -> EncoderGeometry:
        """From a ``Wav2Vec2Config`` (or anything with ``conv_kernel`` and ``conv_stride``)."""
        return cls(tuple(config.conv_kernel), tuple(config.conv_stride))

    def frames(self, samples: int) -> int:
        """Output frames for ``samples`` input samples (``Wav2Vec2Model._get_feat_extract_output_lengths``)."""
        for kernel, stride in zip(self.kernels, self.strides, strict=True):
            samples = (samples - kernel) // stride + 1 if samples >= kernel else 0
        return samples

    @property
    def receptive_field(self) -> int:
        """Fewest input samples giving one output frame (400 for the standard stack)."""
        size = 1
        for kernel, stride in zip(reversed(self.kernels), reversed(self.strides), strict=True):
            size = (size - 1) * stride + kernel
        return size


@dataclass(frozen=True)
class Problem:
    kind: str
    split: str
    source: str  # manifest file:line
    id: str
    detail: str


@dataclass
class DataReport:
    """Rows checked per split and every problem found. ``warn_only`` kinds never stop or drop a row."""

    rows: dict[str, int]
    problems: list[Problem] = field(default_factory=list)
    warn_only: frozenset[str] = frozenset()

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.kind not in self.warn_only]

    @property
    def ok(self) -> bool:
        return not self.errors

    def bad_sources(self) -> set[str]:
        return {p.source for p in self.errors}

    def by_kind(self) -> dict[str, list[Problem]]:
        grouped: dict[str, list[Problem]] = defaultdict(list)
        for problem in self.problems:
            grouped[problem.kind].append(problem)
        return {kind: grouped[kind] for kind in KINDS if kind in grouped}

    def to_dict(self) -> dict:
        return {
            "rows": self.rows,
            "rows_with_errors": len(self.bad_sources()),
            "warn_only": sorted(self.warn_only),
            "problems": {kind: [asdict(p) for p in found] for kind, found in self.by_kind().items()},
        }

    def format(self, limit: int = MAX_LISTED) -> str:
        checked = ", ".join(f"{split} {n}" for split, n in self.rows.items())
        if not self.problems:
            return f"Data check: no problems in {checked} rows."
        lines = [f"Data check of {checked} rows: {len(self.bad_sources())} row(s) with errors."]
        for kind, found in self.by_kind().items():
            label = "warning" if kind in self.warn_only else "error"
            lines.append(f"{kind} ({label}, {len(found)} row(s)): {KINDS[kind]}")
            lines += [f"  {p.source}{f' (id {p.id})' if p.id else ''}: {p.detail}" for p in found[:limit]]
            if len(found) > limit:
                lines.append(f"  … {len(found) - limit} more")
        return "\n".join(lines)


class DataCheckError(ValueError):
    """Manifest rows that would break or waste training; ``report`` holds every one."""

    def __init__(self, report: DataReport, hint: str = ""):
        self.report = report
        super().__init__(report.format() + (f"\n{hint}" if hint else ""))


@dataclass(frozen=True)
class _Audio:
    kind: str | None  # None: usable
    detail: str = ""
    samples: int = 0
    duration: float = 0.0  # seconds, from the header


def inspect_audio(path: str, audio: AudioCache, max_duration: float | None = None) -> _Audio:
    """Header first (cheap; a file too long is not decoded), then the decoded waveform through the cache."""
    try:
        header = read_header(path)
    except AudioError as err:
        return _Audio(HEADER_KINDS[err.reason], str(err))
    if max_duration is not None and header.duration > max_duration:
        return _Audio("too_long", f"{path}: {header.duration:.1f} s > data.max_duration {max_duration:g} s")
    try:
        wave = audio.load(path)
    except AudioError as err:
        return _Audio("unreadable_audio", str(err))
    if not np.isfinite(wave).all():
        return _Audio("non_finite_audio", f"{path}: {int((~np.isfinite(wave)).sum())} non-finite sample(s)")
    peak = float(np.abs(wave).max())
    if peak < SILENCE_PEAK:
        return _Audio("silent_audio", f"{path}: peak {peak:.2g}")
    return _Audio(None, samples=len(wave), duration=header.duration)


def _labels_problem(row: dict, labels: LabelMap) -> tuple[str, str] | None:
    if row["category"] not in labels.category_names:
        return "unknown_category", f"category {row['category']!r} (known: {', '.join(labels.category_names)})"
    classes, unknown = labels.class_sequence(str(row["phones"]))
    if unknown and labels.unknown == "raise":
        return "unknown_phones", f"{', '.join(repr(p) for p in sorted(unknown))} in {row['phones']!r}"
    if not [c for c in classes if c != WORD_BOUNDARY]:
        return "empty_transcription", f"phones {row['phones']!r}"
    return None


def ctc_frames_needed(tokens: Sequence[object]) -> int:
    """CTC needs a frame per token plus a blank between each pair of equal neighbours."""
    return len(tokens) + sum(a == b for a, b in zip(tokens[:-1], tokens[1:], strict=True))


def read_splits(
    manifests: Mapping[str, str | Path], labeled: bool = True
) -> tuple[dict[str, list[dict]], list[Problem]]:
    """The rows of each split's manifest, and a ``broken_line`` problem for every line that is no row
    (``unusable_manifest`` for a manifest missing or without lines). ``labeled``: rows need phones and a
    category (else only ``audio_filepath``)."""
    splits: dict[str, list[dict]] = {}
    problems: list[Problem] = []
    for split, path in manifests.items():
        splits[split], unread = parse_manifest(path, REQUIRED_FIELDS if labeled else UNLABELED_FIELDS)
        for line in unread:
            kind = "unusable_manifest" if line.source == str(path) else "broken_line"
            problems.append(Problem(kind, split, line.source, line.id, line.detail))
    return splits, problems


def check_splits(
    splits: Mapping[str, Sequence[dict]],
    labels: LabelMap | None,
    audio: AudioCache,
    encoder: EncoderGeometry = EncoderGeometry(),
    allow_speaker_overlap: bool = False,
    workers: int | None = None,
    max_duration: float | None = None,
    unread: Sequence[Problem] = (),
) -> DataReport:
    """Every problem of every row of ``splits`` (split name → rows from ``parse_manifest``), after the
    ``unread`` problems of their manifests' lines (:func:`read_splits`); audio longer than ``max_duration``
    seconds (None: no limit) is an error. ``labels`` None: unlabeled audio, whose rows are not label-checked;
    a row without a ``duration`` gets its audio header's."""
    report = DataReport(
        rows={split: len(rows) + len({p.source for p in unread if p.split == split}) for split, rows in splits.items()},
        problems=list(unread),
        warn_only=frozenset({"speaker_overlap"} if allow_speaker_overlap else ()),
    )

    def add(kind: str, split: str, row: dict, detail: str) -> None:
        report.problems.append(Problem(kind, split, row["_source"], str(row["id"]), detail))

    paths = sorted({row["audio_filepath"] for rows in splits.values() for row in rows})
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        audio_of = dict(zip(paths, pool.map(lambda p: inspect_audio(p, audio, max_duration), paths), strict=True))

    first_seen: dict[str, str] = {}
    train_speakers = {str(row["speaker"]) for row in splits.get("train", ()) if row.get("speaker") is not None}
    for split, rows in splits.items():
        for row in rows:
            found = audio_of[row["audio_filepath"]]
            frames = encoder.frames(found.samples)
            if found.kind is not None:
                add(found.kind, split, row, found.detail)
            else:
                row.setdefault("duration", round(found.duration, 6))
                if frames == 0:
                    detail = f"{found.samples} samples < receptive field {encoder.receptive_field}"
                    add("too_short_for_encoder", split, row, detail)
            label_problem = _labels_problem(row, labels) if labels is not None else None
            if label_problem is not None:
                add(label_problem[0], split, row, label_problem[1])
            elif labels is not None and frames > 0:
                needed = ctc_frames_needed(labels.class_sequence(str(row["phones"]))[0])
                if frames < needed:
                    add("too_short_for_labels", split, row, f"{frames} frames for {needed} needed")
            utt_id = str(row["id"])
            if utt_id in first_seen:
                add("duplicate_id", split, row, f"id also at {first_seen[utt_id]}")
            else:
                first_seen[utt_id] = row["_source"]
            speaker = row.get("speaker")
            if split in EVALUATION_SPLITS and speaker is not None and str(speaker) in train_speakers:
                add("speaker_overlap", split, row, f"speaker {speaker!r} is also in train")
    return report


def check_manifests(
    manifests: Mapping[str, str | Path],
    labels: LabelMap | None,
    audio: AudioCache,
    encoder: EncoderGeometry = EncoderGeometry(),
    allow_speaker_overlap: bool = False,
    max_duration: float | None = None,
) -> tuple[dict[str, list[dict]], DataReport]:
    """The rows of every split's manifest and one report of every problem of their lines and rows
    (:func:`read_splits`, then :func:`check_splits`); ``labels`` None: unlabeled audio."""
    splits, unread = read_splits(manifests, labeled=labels is not None)
    report = check_splits(
        splits, labels, audio, encoder, allow_speaker_overlap, max_duration=max_duration, unread=unread
    )
    return splits, report


def apply_report(splits: Mapping[str, Sequence[dict]], report: DataReport, on_error: str) -> dict[str, list[dict]]:
    """The rows to use: all of them when clean; otherwise raise (``raise``) or drop bad rows (``skip``)."""
    if on_error not in ON_ERROR:
        raise ValueError(f"data.on_error must be one of {ON_ERROR}, got {on_error!r}")
    if report.ok:
        return {split: list(rows) for split, rows in splits.items()}
    if on_error == "raise":
        raise DataCheckError(
            report, "Fix or remove these rows, or set data.on_error=skip to train without them (the report is logged)."
        )
    bad = report.bad_sources()
    kept = {split: [row for row in rows if row["_source"] not in bad] for split, rows in splits.items()}
    emptied = [split for split, rows in kept.items() if not rows]
    if emptied:
        raise DataCheckError(report, f"data.on_error=skip leaves no rows in: {', '.join(emptied)}.")
    return kept
