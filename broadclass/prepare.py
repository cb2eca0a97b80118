"""Turn a corpus into k speaker-disjoint sets for the reference recipe (``+experiment=onSet1`` …).

``python -m broadclass.prepare SOURCE --sets 5`` writes the sets to ``data/sets`` (``--out`` elsewhere:
then train with ``paths.sets_dir=<that folder>``). SOURCE is one of:

* a manifest, JSONL or CSV (header row), one utterance a row: ``audio_filepath`` (absolute, or relative
  to the manifest's folder), ``phones`` (phone units separated by spaces, ``|`` between words),
  ``category`` and ``speaker``; optional ``id`` (default ``<speaker>-<audio file stem>``) and ``text``.
  With ``--category-map`` the category may come from the speaker instead of a column.
* a TIMIT-style folder: every ``<utt>.phn`` (lines ``start end phone``) with its audio beside it
  (``<utt>.wav``, ``<utt>.WAV`` or ``<utt>.WAV.wav``); the speaker is the folder holding them. A
  ``<utt>.wrd`` beside it (TIMIT's word alignment) puts ``|`` between the words' phones. The category
  comes from ``--category-map`` (CSV ``speaker,category`` or a JSON object speaker → category) or from
  ``--category-level N``: the name of the folder N levels above the audio file (1 = the speaker's
  folder, 2 = its parent, e.g. TIMIT's dialect region ``dr1``).

Sets are folds of speakers, as in k-fold cross-validation: the speakers are dealt into k folds and set i
validates on fold i and trains on the other k - 1, so every speaker is validated on exactly once and no
speaker is in both splits of a set. Folds are stratified by category: each speaker counts under the
category most of its utterances have, and speakers (most utterances first, ties in an order drawn from
``--seed``) go one by one to the fold furthest below its share of that category's utterances.
``--test-share p`` first holds out about a share p of each category's utterances (whole speakers) as a
test split common to all sets (``test.jsonl`` in each set folder, so the sets' test numbers compare).

Output::

    OUT/sets.json                      the arguments and each speaker's fold (-1 = test)
    OUT/set<i>/train.jsonl             manifests (broadclass.data.manifest format, absolute audio paths,
    OUT/set<i>/validation.jsonl        durations read from the audio headers)
    OUT/set<i>/test.jsonl              with --test-share
    OUT/set<i>/summary.md, .json       speakers, utterances, hours and utterances per category, per split

The same arguments give byte-identical files; a rerun with fewer sets removes the extra set folders it
made before. ``locate_set`` is the data config's ``prepare`` step for one set (``conf/data/onset.yaml``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import soundfile as sf

from broadclass.data.manifest import jsonl_rows, write_manifest

SPLITS = ("train", "validation", "test")
TEST_FOLD = -1
FORMAT_VERSION = 1
LABELS_DIR = Path(__file__).resolve().parent / "conf" / "labels"
MAX_LISTED = 20
# Where paths.sets_dir points by default (conf/paths/default.yaml): <project>/data/sets.
DEFAULT_OUT = Path(os.environ.get("BROADCLASS_ROOT") or ".") / "data" / "sets"


class PrepareError(ValueError):
    """A corpus that cannot be split into sets; the message names the rows or files."""


def _raise_listed(problems: Sequence[str], what: str) -> None:
    if problems:
        listed = "\n".join(f"  {p}" for p in problems[:MAX_LISTED])
        more = f"\n  … and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise PrepareError(f"{len(problems)} {what}:\n{listed}{more}")


# ---- reading a corpus ------------------------------------------------------------------------------
def load_category_map(path: str | Path) -> dict[str, str]:
    """Speaker → category from a CSV (``speaker,category`` columns) or a JSON object."""
    path = Path(path)
    if not path.is_file():
        raise PrepareError(f"category map not found: {path}")
    if path.suffix.lower() == ".json":
        try:
            mapping = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise PrepareError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(mapping, dict):
            raise PrepareError(f"{path}: expected a JSON object speaker -> category")
        return {str(k): str(v) for k, v in mapping.items()}
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if not {"speaker", "category"} <= set(reader.fieldnames or []):
            raise PrepareError(f"{path}: needs a header row with columns speaker,category; got {reader.fieldnames}")
        return {row["speaker"]: row["category"] for row in reader}


def _manifest_records(path: Path) -> Iterable[tuple[int, dict]]:
    """(line number, row) of a JSONL or CSV file."""
    if path.suffix.lower() == ".csv":
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            for row in reader:
                yield reader.line_num, {k: v for k, v in row.items() if k is not None}
        return
    yield from jsonl_rows(path, PrepareError)


def read_manifest_source(path: str | Path, category_map: Mapping[str, str] | None = None) -> list[dict]:
    """Rows of a JSONL/CSV corpus manifest, audio paths absolute, each with ``_source`` = ``file:line``."""
    path = Path(path)
    if not path.is_file():
        raise PrepareError(f"corpus manifest not found: {path}")
    required = ("audio_filepath", "phones", "speaker") + (() if category_map else ("category",))
    rows, problems = [], []
    for line_no, record in _manifest_records(path):
        source = f"{path}:{line_no}"
        missing = [key for key in required if not str(record.get(key) or "").strip()]
        if missing:
            problems.append(f"{source}: missing or empty {', '.join(missing)}")
            continue
        speaker = str(record["speaker"]).strip()
        if category_map is not None:
            if speaker not in category_map:
                problems.append(f"{source}: speaker {speaker!r} is not in the category map")
                continue
            record["category"] = category_map[speaker]
        audio = Path(str(record["audio_filepath"]))
        audio = audio if audio.is_absolute() else path.parent / audio
        row = {
            "id": str(record.get("id") or f"{speaker}-{audio.stem}"),
            "audio_filepath": str(audio.resolve()),
            "phones": " ".join(str(record["phones"]).split()),
            "category": str(record["category"]).strip(),
            "speaker": speaker,
            "_source": source,
        }
        if record.get("text"):
            row["text"] = str(record["text"])
        rows.append(row)
    _raise_listed(problems, "row(s) cannot be used")
    if not rows:
        raise PrepareError(f"corpus manifest has no rows: {path}")
    return rows


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
            raise PrepareError(f"{path}:{line_no}: expected 'start end label', got {line!r}")
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
    """Rows of a TIMIT-style folder (see the module docstring), sorted by path."""
    root = Path(root)
    if (category_map is None) == (category_level is None):
        raise PrepareError("a TIMIT-style folder needs exactly one of --category-map or --category-level")
    if category_level is not None and category_level < 1:
        raise PrepareError(f"--category-level counts folders up from the audio file, from 1; got {category_level}")
    phn_files = sorted(p for p in root.rglob("*") if p.suffix.lower() == ".phn" and p.is_file())
    if not phn_files:
        raise PrepareError(f"no .phn files under {root}")
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
    _raise_listed(problems, "utterance(s) cannot be used")
    return rows


def read_source(
    source: str | Path, category_map: Mapping[str, str] | None = None, category_level: int | None = None
) -> list[dict]:
    source = Path(source)
    if source.is_dir():
        return read_timit_source(source, category_map, category_level)
    if category_level is not None:
        raise PrepareError("--category-level applies to a TIMIT-style folder, not to a manifest")
    return read_manifest_source(source, category_map)


def check_rows(rows: Sequence[dict]) -> None:
    """Unique ids and a transcription on every row; raises one error listing every problem."""
    first: dict[str, str] = {}
    problems = []
    for row in rows:
        if row["id"] in first:
            problems.append(f"{row['_source']}: id {row['id']!r} already used at {first[row['id']]}")
        first.setdefault(row["id"], row["_source"])
        if not row["phones"].replace("|", "").strip():
            problems.append(f"{row['_source']}: no phones")
    _raise_listed(problems, "row(s) cannot be used")


def add_durations(rows: Sequence[dict]) -> None:
    """Set each row's ``duration`` (seconds) from its audio header; one error lists every bad file."""
    problems = []
    for row in rows:
        path = Path(row["audio_filepath"])
        if not path.is_file():
            problems.append(f"{row['_source']}: audio file not found: {path}")
            continue
        try:
            info = sf.info(str(path))
        except Exception as err:  # soundfile raises LibsndfileError, RuntimeError, TypeError by format
            problems.append(f"{row['_source']}: cannot read the audio header of {path}: {err}")
            continue
        if info.frames <= 0:
            problems.append(f"{row['_source']}: audio file has no samples: {path}")
            continue
        row["duration"] = round(info.frames / info.samplerate, 6)
    _raise_listed(problems, "audio file(s) cannot be used")


def check_labels(rows: Sequence[dict], labels: str) -> None:
    """Every phone has a broad class in ``labels`` (a name in conf/labels/ or a YAML path)."""
    from omegaconf import OmegaConf

    from broadclass.data.labels import LabelMap

    path = Path(labels) if labels.endswith((".yaml", ".yml")) else LABELS_DIR / f"{labels}.yaml"
    if not path.is_file():
        choices = ", ".join(sorted(p.stem for p in LABELS_DIR.glob("*.yaml")))
        raise PrepareError(f"label config not found: {path} (names: {choices})")
    names = sorted({row["category"] for row in rows})
    label_map = LabelMap.from_config(OmegaConf.load(path), [{"name": n, "tag": str(i)} for i, n in enumerate(names)])
    label_map.check((row["_source"], row["phones"]) for row in rows)


# ---- folds -----------------------------------------------------------------------------------------
def assign_folds(rows: Sequence[dict], n_sets: int, seed: int = 0, test_share: float = 0.0) -> dict[str, int]:
    """Speaker → fold (0 … n_sets-1, or TEST_FOLD), stratified by category, reproducible from ``seed``."""
    if n_sets < 2:
        raise PrepareError(f"need at least 2 sets (folds of speakers), got {n_sets}")
    if not 0.0 <= test_share < 1.0:
        raise PrepareError(f"--test-share must be in [0, 1), got {test_share}")
    utterances: dict[str, Counter] = {}
    for row in rows:
        utterances.setdefault(row["speaker"], Counter())[row["category"]] += 1
    n_bins = n_sets + (1 if test_share > 0 else 0)
    if len(utterances) < n_bins:
        raise PrepareError(
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
            "speakers": len({row["speaker"] for row in split_rows}),
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
    lines = [f"### {set_name}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for split, stats in summary.items():
        cells = [split, stats["speakers"], stats["utterances"], f"{stats['hours']:.2f}"]
        cells += [stats["categories"][name] for name in categories]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def suggest_tags(names: Sequence[str]) -> dict[str, str]:
    """The shortest lower-case prefixes that tell the category names apart (token tags)."""
    clean = {name: "".join(ch for ch in name.lower() if ch.isalnum()) or name for name in names}
    for length in range(1, max(len(c) for c in clean.values()) + 1):
        tags = {name: c[:length] for name, c in clean.items()}
        if len(set(tags.values())) == len(tags):
            return tags
    return {name: f"c{i}" for i, name in enumerate(names)}


# ---- writing sets ----------------------------------------------------------------------------------
def write_sets(
    rows: Sequence[dict], folds: Mapping[str, int], out: str | Path, n_sets: int, spec: Mapping[str, object]
) -> dict[str, dict]:
    """Write every set folder and ``sets.json``; returns each set's summary."""
    out = Path(out)
    previous = out / "sets.json"
    if out.is_dir() and any(out.iterdir()) and not previous.is_file():
        raise PrepareError(f"{out} is not empty and has no sets.json: not a sets folder made by this tool")
    old_sets = json.loads(previous.read_text(encoding="utf-8")).get("sets", 0) if previous.is_file() else 0
    categories = sorted({row["category"] for row in rows})
    summaries = {}
    for index in range(n_sets):
        set_name = f"set{index + 1}"
        folder = out / set_name
        splits = split_set(rows, folds, index)
        for split in SPLITS:
            if split in splits:
                write_manifest(folder / f"{split}.jsonl", splits[split])
            else:
                (folder / f"{split}.jsonl").unlink(missing_ok=True)
        summary = summarize(splits, categories)
        (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        (folder / "summary.md").write_text(format_summary(set_name, summary), encoding="utf-8")
        summaries[set_name] = summary
    for index in range(n_sets, old_sets):
        shutil.rmtree(out / f"set{index + 1}", ignore_errors=True)
    payload = {**spec, "sets": n_sets, "speakers": dict(sorted(folds.items()))}
    previous.write_text(json.dumps(payload, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return summaries


def prepare_sets(
    source: str | Path,
    out: str | Path,
    n_sets: int = 5,
    seed: int = 0,
    test_share: float = 0.0,
    category_map: str | Path | None = None,
    category_level: int | None = None,
    labels: str | None = None,
) -> dict[str, dict]:
    """Read, check and split a corpus into ``out/set1`` … ``out/set<n_sets>``; returns the summaries."""
    mapping = load_category_map(category_map) if category_map else None
    rows = read_source(source, mapping, category_level)
    check_rows(rows)
    if labels:
        check_labels(rows, labels)
    add_durations(rows)
    folds = assign_folds(rows, n_sets, seed, test_share)
    spec = {
        "version": FORMAT_VERSION,
        "source": str(Path(source).resolve()),
        "seed": seed,
        "test_share": test_share,
        "category_map": str(Path(category_map).resolve()) if category_map else None,
        "category_level": category_level,
    }
    return write_sets(rows, folds, out, n_sets, spec)


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
            f"`python -m broadclass.prepare <corpus> --out {set_dir}`, or point paths.sets_dir at them."
        )
    return manifests


def main(argv: Sequence[str] | None = None, print_fn: Callable[[str], None] = print) -> dict[str, dict]:
    parser = argparse.ArgumentParser(
        description="Split a corpus into k speaker-disjoint, category-stratified sets (set1 … setK).",
        epilog="See the module docstring (python -m pydoc broadclass.prepare) for the input formats.",
    )
    parser.add_argument("source", type=Path, help="a JSONL/CSV manifest or a TIMIT-style folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for set1/ … setK/ (default data/sets)")
    parser.add_argument("--sets", type=int, default=5, help="number of sets = folds of speakers (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the speaker order (default 0)")
    parser.add_argument("--test-share", type=float, default=0.0, help="share held out as a common test split")
    parser.add_argument("--category-map", type=Path, help="CSV speaker,category or JSON {speaker: category}")
    parser.add_argument("--category-level", type=int, help="TIMIT folder: category = folder N levels up")
    parser.add_argument("--labels", help="check every phone maps: ipa, arpabet, timit61 or a YAML path")
    parser.add_argument(
        "--check", action="store_true", help="then check every row as training will (broadclass.data.check)"
    )
    args = parser.parse_args(argv)
    summaries = prepare_sets(
        args.source,
        args.out,
        n_sets=args.sets,
        seed=args.seed,
        test_share=args.test_share,
        category_map=args.category_map,
        category_level=args.category_level,
        labels=args.labels,
    )
    for set_name, summary in summaries.items():
        print_fn(format_summary(set_name, summary))
    names = list(next(iter(next(iter(summaries.values())).values()))["categories"])
    tags = ", ".join(f"{{name: {name}, tag: {tag}}}" for name, tag in suggest_tags(names).items())
    where = "" if args.out.resolve() == DEFAULT_OUT.resolve() else f" paths.sets_dir={args.out.resolve()}"
    print_fn(f"Sets written to {args.out.resolve()}. Train on set 1 with the reference recipe:")
    print_fn(f"  python -m broadclass.train +experiment=onSet1{where} 'data.categories=[{tags}]'")
    if args.check:  # set 1's splits hold every row once
        from broadclass.data.check import main as check

        manifests = [str(path) for path in locate_set(args.out, "set1").values()]
        labels = ["--labels", args.labels] if args.labels else []
        if check([*manifests, f"data.categories=[{tags}]", *labels], print_fn):
            raise SystemExit(1)
    return summaries


if __name__ == "__main__":
    main()
