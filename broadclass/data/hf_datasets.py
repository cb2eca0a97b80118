"""Corpus rows from a HuggingFace ``datasets`` dataset, its audio written out as files.

A source is a folder written by ``save_to_disk``, parquet or arrow files (a file, or a folder of them),
or a hub id (``user/corpus``; needs network, or the dataset in the local cache with
``HF_HUB_OFFLINE=1``). Columns are found as for CSV/JSONL (:mod:`broadclass.data.sources`); the audio
column is the ``Audio`` feature when there is one. Audio may be stored in any of ``datasets``' forms:

* an ``Audio`` feature holding the encoded file (``bytes``) or a ``path`` to it;
* a struct of ``array`` and ``sampling_rate`` (a decoded waveform);
* a string column of file paths.

The ``Audio`` feature is read with ``decode=False`` and the bytes decoded with soundfile, so neither
torchcodec nor torchaudio is needed. Encoded files are written out byte for byte (their own format);
waveforms as 32-bit float WAV, so no sample changes. The splits of the dataset are kept, in order; each
row's ``_source`` is ``<source> <split> row <index>``.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from hashlib import sha1
from pathlib import Path

import numpy as np
import soundfile as sf

from broadclass.data.manifest import write_bytes_atomic
from broadclass.data.sources import CorpusError, raise_listed, resolve_columns, table_rows

SAVE_TO_DISK_FILES = ("dataset_info.json", "dataset_dict.json", "state.json")
DATA_FILE_SUFFIXES = (".parquet", ".arrow")
TABLE_SUFFIXES = (".csv", ".jsonl", ".json", ".tsv", ".txt")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "dev", "val"), "test": ("test",)}
AUDIO_DIR = "audio"


def is_datasets_source(source: str | Path) -> bool:
    """Whether ``source`` is read with ``datasets``: a save_to_disk folder, parquet/arrow data, a hub id."""
    path = Path(source)
    if path.is_dir():
        if any((path / name).is_file() for name in SAVE_TO_DISK_FILES):
            return True
        has_data = any(p.suffix in DATA_FILE_SUFFIXES for p in path.rglob("*"))
        return has_data and not any(p.suffix.lower() == ".phn" for p in path.rglob("*"))
    if path.is_file():
        return path.suffix in DATA_FILE_SUFFIXES
    return path.suffix.lower() not in TABLE_SUFFIXES and HUB_ID.fullmatch(str(source)) is not None


def load_splits(source: str | Path) -> dict[str, object]:
    """Split name → ``datasets.Dataset`` of ``source``; every failure is a :class:`CorpusError`."""
    try:
        import datasets
    except ImportError:
        raise CorpusError(
            f"{source} is a HuggingFace dataset: install the datasets package (pip install 'broadclass[datasets]')"
        ) from None
    path = Path(source)
    try:
        if path.is_dir() and any((path / name).is_file() for name in SAVE_TO_DISK_FILES):
            loaded = datasets.load_from_disk(str(path))
        elif path.is_file():
            loaded = datasets.load_dataset(path.suffix.lstrip("."), data_files=str(path))
        else:
            loaded = datasets.load_dataset(str(source))
    except Exception as err:  # datasets raises many kinds (FileNotFoundError, ConnectionError, DatasetNotFoundError)
        hint = ""
        if not path.exists():
            offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
            hint = " No such local file or folder either. " + (
                "HF_HUB_OFFLINE is set, so only datasets already in the local cache load: "
                "download it where there is network (or unset HF_HUB_OFFLINE)."
                if offline
                else "Is the hub id right, and is there network?"
            )
        raise CorpusError(f"cannot load the dataset {source}: {type(err).__name__}: {err}.{hint}") from None
    if isinstance(loaded, datasets.DatasetDict):
        return dict(loaded)
    return {str(loaded.split or "train"): loaded}


def kept_split_names(splits: Sequence[str], where: str) -> dict[str, str]:
    """The dataset's split → our split (train, validation, test) for ``keep_splits=true``."""
    ours = {}
    problems = []
    for split in splits:
        name = next((our for our, aliases in SPLIT_NAMES.items() if split.lower() in aliases), None)
        if name is None or name in ours.values():
            accepted = "; ".join(f"{our}: {', '.join(aliases)}" for our, aliases in SPLIT_NAMES.items())
            problems.append(f"{where}: keep_splits=true cannot place split {split!r} (one of each: {accepted})")
        else:
            ours[split] = name
    for needed in ("train", "validation"):
        if needed not in ours.values():
            problems.append(f"{where}: keep_splits=true needs a {needed} split; the splits are {', '.join(splits)}")
    raise_listed(problems, "problem(s) with the splits")
    return ours


@dataclass(frozen=True)
class Clip:
    """One utterance's audio: an encoded file (``data``, ``suffix``) or a waveform (``wave``, ``rate``)."""

    data: bytes | None = None
    suffix: str = ".wav"
    wave: np.ndarray | None = None
    rate: int = 0

    def duration(self) -> float:
        if self.wave is not None:
            if self.rate <= 0 or self.wave.size == 0:
                raise ValueError(f"waveform of {self.wave.size} samples at {self.rate} Hz")
            return self.wave.shape[0] / self.rate
        info = sf.info(io.BytesIO(self.data))
        if info.frames <= 0:
            raise ValueError("no samples")
        return info.frames / info.samplerate

    def write(self, path_stem: Path) -> Path:
        """Write as ``path_stem`` + its suffix, atomically; returns the path."""
        if self.wave is None:
            return write_bytes_atomic(path_stem.with_name(path_stem.name + self.suffix), self.data)
        buffer = io.BytesIO()
        sf.write(buffer, self.wave, self.rate, format="WAV", subtype="FLOAT")
        return write_bytes_atomic(path_stem.with_name(path_stem.name + ".wav"), buffer.getvalue())


def _encoded(data: bytes | None, path: str | None, root: Path) -> Clip:
    """An encoded file from its bytes, or read from ``path`` (relative to ``root``); the suffix from the
    path, else from the format soundfile finds."""
    if data is None:
        if not path:
            raise ValueError("neither bytes nor a path")
        file = Path(path) if Path(path).is_absolute() else root / path
        if not file.is_file():
            raise ValueError(f"audio file not found: {file}")
        data = file.read_bytes()
    suffix = Path(path).suffix.lower() if path else ""
    if not suffix:
        try:
            suffix = "." + sf.info(io.BytesIO(data)).format.lower()
        except Exception:  # unreadable: reported when its duration is read
            suffix = ".audio"
    return Clip(data=data, suffix=suffix)


def _waveform(array: object, rate: object) -> Clip:
    """A decoded waveform; ``datasets`` stores several channels as (channels, samples): made (samples, channels)."""
    wave = np.asarray(array, np.float32)
    if wave.ndim == 2 and wave.shape[0] < wave.shape[1]:
        wave = wave.T
    return Clip(wave=wave, rate=int(rate))


def clips(dataset, column: str, root: Path) -> Iterator[tuple[int, Clip | None, str]]:
    """(row index, clip or None, why not) of every row of ``column``, whatever its storage form."""
    from datasets import Audio

    feature = dataset.features[column]
    if isinstance(feature, Audio):
        items = dataset.select_columns([column]).cast_column(column, Audio(decode=False))
        read = lambda value: _encoded(value.get("bytes"), value.get("path"), root)  # noqa: E731
    elif isinstance(feature, dict) and {"array", "sampling_rate"} <= set(feature):
        items = dataset.select_columns([column]).with_format("numpy")
        read = lambda value: _waveform(value["array"], value["sampling_rate"])  # noqa: E731
    elif getattr(feature, "dtype", None) in ("string", "large_string"):
        items = dataset.select_columns([column])
        read = lambda value: _encoded(None, value, root)  # noqa: E731
    else:
        raise CorpusError(
            f"audio column {column!r} is {feature}: expected an Audio feature, a struct of array and "
            "sampling_rate, or file paths"
        )
    for index, item in enumerate(items):
        value = item[column]
        if value is None:
            yield index, None, "no audio"
            continue
        try:
            yield index, read(value), ""
        except ValueError as err:
            yield index, None, str(err)


def safe_name(utterance_id: str) -> str:
    """A file name for an utterance id: unsafe characters replaced, plus a hash of the id if any were."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", utterance_id).lstrip(".") or "utt"
    return name if name == utterance_id else f"{name}-{sha1(utterance_id.encode()).hexdigest()[:8]}"


class DatasetSource:
    """The rows of a ``datasets`` source, read once for checking and once more to write their audio."""

    def __init__(
        self,
        source: str | Path,
        chosen: Mapping[str, str],
        required: Sequence[str],
        keep_splits: bool = False,
        category_of_speaker: Mapping[str, str] | None = None,
    ):
        self.source = str(source)
        self.splits = load_splits(source)
        self.root = Path(source) if Path(source).is_dir() else Path(source).parent
        self.split_of = kept_split_names(list(self.splits), self.source) if keep_splits else {}
        self.columns: dict[str, dict[str, str]] = {}
        problems = []
        for split, dataset in self.splits.items():
            from datasets import Audio

            audio_columns = [name for name, feat in dataset.features.items() if isinstance(feat, Audio)]
            where = f"{self.source} split {split!r}"
            try:
                self.columns[split] = resolve_columns(
                    dataset.column_names, chosen, required, where, {"audio": audio_columns[0]} if audio_columns else {}
                )
            except CorpusError as err:
                problems += err.problems
        raise_listed(problems, f"problem(s) with the columns of {self.source}")
        self.required = [name for name in required if name != "audio"]
        self.category_of_speaker = category_of_speaker

    def rows(self) -> tuple[list[dict], list[str]]:
        """Every usable row (its duration from the audio), and a problem for every row that is not."""
        rows, problems = [], []
        for split, dataset in self.splits.items():
            columns = self.columns[split]
            text_columns = [column for name, column in columns.items() if name != "audio"]
            records = dataset.select_columns(text_columns)
            where = f"{self.source} {split} row "
            split_rows, split_problems = table_rows(
                ((f"{where}{index}", record) for index, record in enumerate(records)),
                {name: column for name, column in columns.items() if name != "audio"},
                self.required,
                None,
                self.category_of_speaker,
            )
            problems += split_problems
            index_of = {f"{where}{index}": index for index in range(len(dataset))}
            by_index = {index_of[row["_source"]]: row for row in split_rows}
            for index, clip, why in clips(dataset, columns["audio"], self.root):
                row = by_index.get(index)
                if clip is None:
                    problems.append(f"{where}{index}: audio column {columns['audio']!r}: {why}")
                    by_index.pop(index, None)
                    continue
                if row is None:
                    continue
                try:
                    row["duration"] = round(clip.duration(), 6)
                except Exception as err:  # soundfile raises LibsndfileError, RuntimeError, TypeError by format
                    problems.append(f"{where}{index}: cannot read the audio of column {columns['audio']!r}: {err}")
                    by_index.pop(index)
                    continue
                row["id"] = row["id"] or f"{split}-{index:06d}"
                row["_audio"] = (split, index)
                if self.split_of:
                    row["_split"] = self.split_of[split]
            rows += [by_index[index] for index in sorted(by_index)]
        return rows, problems

    def write_audio(self, rows: Sequence[dict], folder: Path) -> None:
        """Write each row's audio into ``folder`` (named from its id) and point ``audio_filepath`` there.

        Files of earlier runs that no row names any more are removed; ``folder`` belongs to this source.
        """
        folder.mkdir(parents=True, exist_ok=True)
        wanted = {row["_audio"]: row for row in rows}
        written: set[Path] = set()
        for split, dataset in self.splits.items():
            for index, clip, _ in clips(dataset, self.columns[split]["audio"], self.root):
                row = wanted.get((split, index))
                if row is not None and clip is not None:
                    path = clip.write(folder / safe_name(row["id"]))
                    row["audio_filepath"] = str(path.resolve())
                    written.add(path)
        for stale in folder.iterdir():
            if stale.is_file() and stale not in written:
                stale.unlink()
