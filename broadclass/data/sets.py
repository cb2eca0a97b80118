"""Cutting a corpus into k speaker-disjoint sets (``python -m broadclass.prepare``), and finding one set.

:func:`prepare_sets` reads any source (:func:`read_source`: a CSV/JSONL table, :mod:`broadclass.data.sources`;
a TIMIT-style folder, :mod:`broadclass.data.timit`; a HuggingFace dataset, :mod:`broadclass.data.hf_datasets`),
checks every row, deals the speakers into folds and writes each set's manifests and summary.

Sets are folds of speakers, as in k-fold cross-validation: the speakers are dealt into k folds and set i
validates on fold i and trains on the other k - 1, so every speaker is validated on exactly once and no
speaker is in both splits of a set. Folds are stratified by category: each speaker counts under the
category most of its utterances have, and speakers (most utterances first, ties in an order drawn from
``seed``) go one by one to the fold furthest below its share of that category's utterances.
``test_share`` p first holds out about a share p of each category's utterances (whole speakers) as a
test split common to all sets (``test.jsonl`` in each set folder, so the sets' test numbers compare).

Every problem of every row (columns, fields, audio, phones eSpeak cannot say, phones with no broad
class) is collected and raised as one :class:`CorpusError` before anything is written; each file is
then replaced atomically. The same arguments give byte-identical files; a rerun with fewer sets removes
the extra set folders it made before. :func:`locate_set` is the data config's ``manifests_from`` for one set
(``conf/data/onset.yaml``).
"""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from omegaconf import OmegaConf
from rich.console import Console
from rich.progress import track

from broadclass.data.audio import AudioError, read_header
from broadclass.data.hf_datasets import AUDIO_DIR, DatasetSource, is_datasets_source
from broadclass.data.labels import LabelMap, UnknownPhoneError
from broadclass.data.manifest import write_manifest, write_text_atomic
from broadclass.data.markdown import markdown_table
from broadclass.data.sources import CorpusError, load_category_map, parse_columns, raise_listed, read_table_source
from broadclass.data.timit import read_timit_source

SPLITS = ("train", "validation", "test")
TEST_FOLD = -1
FORMAT_VERSION = 1
LABELS_DIR = Path(__file__).resolve().parents[1] / "conf" / "labels"
DEFAULT_SETS = 5


def progress(items: Iterable, description: str, total: int | None = None) -> Iterable:
    """``items`` with a progress bar on stderr (redrawn on a terminal; elsewhere its final state)."""
    return track(items, description=description, total=total, console=Console(stderr=True))


# ---- reading a corpus ------------------------------------------------------------------------------
def read_source(
    source: str | Path,
    category_map: Mapping[str, str] | None = None,
    category_level: int | None = None,
    columns: Mapping[str, str] | None = None,
    keep_splits: bool = False,
    text_for_phones: bool = False,
) -> tuple[list[dict], list[str], DatasetSource | None]:
    """The usable rows of any source, a problem for each row that is not, and the ``datasets`` source
    whose audio is still to be written (or None)."""
    columns = dict(columns or {})
    if is_datasets_source(source):
        if category_level is not None:
            raise CorpusError("category_level= applies to a TIMIT-style folder, not to a dataset")
        required = ["audio", "text" if text_for_phones else "phones"]
        required += [] if category_map is not None else ["category"]
        required += [] if keep_splits else ["speaker"]
        dataset = DatasetSource(source, columns, required, keep_splits, category_map)
        return *dataset.rows(), dataset
    if keep_splits:
        raise CorpusError("keep_splits=true applies to a HuggingFace dataset (its splits), not to this source")
    if Path(source).is_dir():
        if columns or text_for_phones:
            raise CorpusError("columns= and phonemize= apply to tables and datasets, not to a TIMIT-style folder")
        return read_timit_source(source, category_map, category_level), [], None
    if category_level is not None:
        raise CorpusError("category_level= applies to a TIMIT-style folder, not to a manifest")
    return *read_table_source(source, columns, category_map, text_for_phones), None


def row_problems(rows: Sequence[dict]) -> list[str]:
    """Ids used twice and rows with no phones."""
    first: dict[str, str] = {}
    problems = []
    for row in rows:
        if row["id"] in first:
            problems.append(f"{row['_source']}: id {row['id']!r} already used at {first[row['id']]}")
        first.setdefault(row["id"], row["_source"])
        if not row["phones"].replace("|", "").strip():
            problems.append(f"{row['_source']}: no phones")
    return problems


def add_durations(rows: Sequence[dict]) -> list[str]:
    """Set each row's ``duration`` (seconds) from its audio header, where it has none yet; returns a
    problem for every audio file that cannot be used."""
    problems = []
    for row in progress(rows, "reading audio headers"):
        if "duration" in row:
            continue
        try:
            row["duration"] = round(read_header(row["audio_filepath"]).duration, 6)
        except AudioError as err:
            problems.append(f"{row['_source']}: {err}")
    return problems


def label_problems(rows: Sequence[dict], labels: str) -> list[str]:
    """Every phone with no broad class in ``labels`` (a name in conf/labels/ or a YAML path), with its rows."""
    path = Path(labels) if labels.endswith((".yaml", ".yml")) else LABELS_DIR / f"{labels}.yaml"
    if not path.is_file():
        choices = ", ".join(sorted(p.stem for p in LABELS_DIR.glob("*.yaml")))
        raise CorpusError(f"label config not found: {path} (names: {choices})")
    names = sorted({row["category"] for row in rows}) or ["none"]
    label_map = LabelMap.from_config(OmegaConf.load(path), [{"name": n, "tag": str(i)} for i, n in enumerate(names)])
    try:
        label_map.check((row["_source"], row["phones"]) for row in rows)
    except UnknownPhoneError as err:
        return [
            f"phone {phone!r} has no broad class in {path.name}, in {len(sources)} row(s): {', '.join(sources[:5])}"
            + (" …" if len(sources) > 5 else "")
            for phone, sources in sorted(err.unknown.items())
        ]
    return []


# ---- folds -----------------------------------------------------------------------------------------
def assign_folds(rows: Sequence[dict], n_sets: int, seed: int = 0, test_share: float = 0.0) -> dict[str, int]:
    """Speaker → fold (0 … n_sets-1, or TEST_FOLD), stratified by category, reproducible from ``seed``."""
    if n_sets < 2:
        raise CorpusError(f"need at least 2 sets (folds of speakers), got {n_sets}")
    if not 0.0 <= test_share < 1.0:
        raise CorpusError(f"test_share must be in [0, 1), got {test_share}")
    utterances: dict[str, Counter] = {}
    for row in rows:
        utterances.setdefault(row["speaker"], Counter())[row["category"]] += 1
    n_bins = n_sets + (1 if test_share > 0 else 0)
    if len(utterances) < n_bins:
        raise CorpusError(
            f"{len(utterances)} speaker(s) cannot make {n_sets} speaker-disjoint sets"
            f"{' and a test split' if test_share > 0 else ''}: use fewer sets"
        )
    # Bins: the folds, then the test split; each bin's target share of every category's utterances.
    targets = [(1.0 - test_share) / n_sets] * n_sets + ([test_share] if test_share > 0 else [])
    speakers = sorted(utterances)
    random.Random(seed).shuffle(speakers)
    # A speaker counts under its most frequent category (ties: the first name).
    primary = {s: min(counts, key=lambda name: (-counts[name], name)) for s, counts in utterances.items()}
    folds: dict[str, int] = {}
    for category in sorted(set(primary.values())):
        members = sorted((s for s in speakers if primary[s] == category), key=lambda s: -sum(utterances[s].values()))
        total = sum(sum(utterances[s].values()) for s in members)
        filled = [0] * n_bins
        for speaker in members:
            deficits = [targets[b] * total - filled[b] for b in range(n_bins)]
            chosen = max(range(n_bins), key=lambda b: (deficits[b], -b))
            filled[chosen] += sum(utterances[speaker].values())
            folds[speaker] = chosen if chosen < n_sets else TEST_FOLD
    return folds


def split_set(rows: Sequence[dict], folds: Mapping[str, int], index: int) -> dict[str, list[dict]]:
    """Train/validation/test rows of set ``index`` (0-based): validation is fold ``index``."""
    splits: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for row in rows:
        fold = folds[row["speaker"]]
        split = "test" if fold == TEST_FOLD else "validation" if fold == index else "train"
        splits[split].append(row)
    return {split: split_rows for split, split_rows in splits.items() if split_rows or split != "test"}


# ---- summary ---------------------------------------------------------------------------------------
def summarize(splits: Mapping[str, Sequence[dict]], categories: Sequence[str]) -> dict:
    return {
        split: {
            "speakers": len({row["speaker"] for row in split_rows if "speaker" in row}),
            "utterances": len(split_rows),
            "hours": round(sum(row["duration"] for row in split_rows) / 3600, 4),
            "categories": {name: sum(row["category"] == name for row in split_rows) for name in categories},
        }
        for split, split_rows in splits.items()
    }


def format_summary(set_name: str, summary: Mapping[str, dict]) -> str:
    """A Markdown table: one row per split, utterances per category as columns."""
    categories = list(next(iter(summary.values()))["categories"])
    header = ["split", "speakers", "utterances", "hours", *categories]
    rows = [
        [split, stats["speakers"], stats["utterances"], f"{stats['hours']:.2f}"]
        + [stats["categories"][name] for name in categories]
        for split, stats in summary.items()
    ]
    return f"### {set_name}\n\n" + markdown_table(header, rows)


def suggest_tags(names: Sequence[str]) -> dict[str, str]:
    """The shortest lower-case prefixes that tell the category names apart (token tags)."""
    clean = {name: "".join(ch for ch in name.lower() if ch.isalnum()) or name for name in names}
    for length in range(1, max(len(c) for c in clean.values()) + 1):
        tags = {name: c[:length] for name, c in clean.items()}
        if len(set(tags.values())) == len(tags):
            return tags
    return {name: f"c{i}" for i, name in enumerate(names)}


# ---- writing sets ----------------------------------------------------------------------------------
def check_out_folder(out: Path) -> int:
    """The number of sets ``out`` holds from an earlier run; refuses a non-empty folder it did not make."""
    previous = out / "sets.json"
    if out.is_dir() and any(out.iterdir()) and not previous.is_file():
        raise CorpusError(f"{out} is not empty and has no sets.json: not a sets folder made by this tool")
    return json.loads(previous.read_text(encoding="utf-8")).get("sets", 0) if previous.is_file() else 0


def write_sets(
    sets: Sequence[Mapping[str, Sequence[dict]]],
    out: str | Path,
    spec: Mapping[str, object],
    old_sets: int = 0,
    note: str = "",
) -> dict[str, dict]:
    """Write every set folder (``sets[i]``: split → rows) and ``sets.json``; returns each set's summary.

    ``old_sets``: how many sets an earlier run left (:func:`check_out_folder`), the extra ones are
    removed. ``note``: a line for each summary.md under its table (where the phones came from)."""
    out = Path(out)
    categories = sorted({row["category"] for splits in sets for rows in splits.values() for row in rows})
    summaries = {}
    for index, splits in progress(enumerate(sets), "writing sets", total=len(sets)):
        set_name = f"set{index + 1}"
        folder = out / set_name
        for split in SPLITS:
            if split in splits:
                write_manifest(folder / f"{split}.jsonl", splits[split])
            else:
                (folder / f"{split}.jsonl").unlink(missing_ok=True)
        summary = summarize(splits, categories)
        write_text_atomic(folder / "summary.json", json.dumps(summary, indent=2) + "\n")
        write_text_atomic(folder / "summary.md", format_summary(set_name, summary) + (f"\n{note}\n" if note else ""))
        summaries[set_name] = summary
    for index in range(len(sets), old_sets):
        shutil.rmtree(out / f"set{index + 1}", ignore_errors=True)
    payload = {**spec, "sets": len(sets)}
    write_text_atomic(out / "sets.json", json.dumps(payload, ensure_ascii=False, indent=2) + "\n")
    return summaries


def prepare_sets(
    source: str | Path,
    out: str | Path,
    n_sets: int | None = None,
    seed: int = 0,
    test_share: float = 0.0,
    category_map: str | Path | None = None,
    category_level: int | None = None,
    labels: str | None = None,
    columns: str | Mapping[str, str] | None = None,
    phonemize: str | None = None,
    keep_splits: bool = False,
) -> dict[str, dict]:
    """Read, check and split a corpus into ``out/set1`` … ``out/set<n_sets>``; returns the summaries.

    Nothing is written until every row has passed every check; then each file is replaced atomically.
    ``columns``: field → column name (or ``audio=path,phones=…``); ``phonemize``: an eSpeak voice that
    turns the text column into IPA phones (labels default to ``ipa`` then); ``keep_splits``: one set
    with the dataset's own train/validation/test splits instead of speaker folds."""
    out = Path(out)
    if keep_splits and n_sets not in (None, 1):
        raise CorpusError(f"keep_splits=true makes one set from the dataset's splits, not {n_sets}: drop sets=")
    if keep_splits and test_share:
        raise CorpusError("keep_splits=true keeps the dataset's own test split: drop test_share=")
    n_sets = 1 if keep_splits else n_sets or DEFAULT_SETS
    old_sets = check_out_folder(out)
    mapping = load_category_map(category_map) if category_map else None
    chosen = parse_columns(columns) if isinstance(columns, str) else dict(columns or {})
    rows, problems, dataset = read_source(source, mapping, category_level, chosen, keep_splits, phonemize is not None)
    phonemes = None
    if phonemize:
        from broadclass.data.phonemize import phonemize_rows

        phonemes, unsayable = phonemize_rows(rows, phonemize)
        problems += unsayable
        labels = labels or "ipa"
    problems += row_problems(rows)
    if labels:
        problems += label_problems(rows, labels)
    problems += add_durations(rows)
    raise_listed(problems, "row(s) cannot be used")

    if keep_splits:
        folds = None
        sets = [{split: kept for split in SPLITS if (kept := [row for row in rows if row["_split"] == split])}]
    else:
        folds = assign_folds(rows, n_sets, seed, test_share)
        sets = [split_set(rows, folds, index) for index in range(n_sets)]
    if dataset is not None:
        dataset.write_audio(rows, out / AUDIO_DIR)
    else:
        shutil.rmtree(out / AUDIO_DIR, ignore_errors=True)  # a dataset's audio from an earlier run
    spec = {
        "version": FORMAT_VERSION,
        "source": str(Path(source).resolve()) if Path(source).exists() else str(source),
        "seed": seed,
        "test_share": test_share,
        "category_map": str(Path(category_map).resolve()) if category_map else None,
        "category_level": category_level,
        "columns": chosen,
        "phonemes": phonemes,
        "keep_splits": keep_splits,
    }
    spec |= {"speakers": dict(sorted(folds.items()))} if folds is not None else {}
    note = f"Phones from the text by eSpeak NG {phonemes['espeak_version']}, voice {phonemize}." if phonemes else ""
    return write_sets(sets, out, spec, old_sets, note)


def locate_set(set_dir: str | Path, set_name: str) -> dict[str, Path]:
    """The manifests of one prepared set: train and validation, and test when the set has one."""
    folder = Path(set_dir) / set_name
    manifests = {split: folder / f"{split}.jsonl" for split in SPLITS if (folder / f"{split}.jsonl").is_file()}
    missing = [f"{split}.jsonl" for split in ("train", "validation") if split not in manifests]
    if missing:
        found = sorted(p.name for p in Path(set_dir).glob("set*") if p.is_dir()) if Path(set_dir).is_dir() else []
        raise FileNotFoundError(
            f"set {set_name!r} has no {' or '.join(missing)} in {folder} "
            f"(sets found there: {', '.join(found) or 'none'}). Make the sets with "
            f"`python -m broadclass.prepare <corpus> out={set_dir}`, or point paths.sets_dir at them."
        )
    return manifests
