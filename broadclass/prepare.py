"""Turn a corpus into k speaker-disjoint sets for the reference recipe (``+experiment=onSet1`` …).

``python -m broadclass.prepare SOURCE sets=5`` writes the sets to ``data/sets`` (``out=<folder>`` elsewhere:
then train with ``paths.sets_dir=<that folder>``). SOURCE is one of:

* a manifest, JSONL or CSV (header row), one utterance a row: ``audio_filepath`` (absolute, or relative
  to the manifest's folder), ``phones`` (phone units separated by spaces, ``|`` between words),
  ``category`` and ``speaker``; optional ``id`` (default ``<speaker>-<audio file stem>``) and ``text``.
  With ``category_map=`` the category may come from the speaker instead of a column.
* a HuggingFace ``datasets`` dataset: a ``save_to_disk`` folder, parquet or arrow files, or a hub id
  (:mod:`broadclass.data.hf_datasets`). Its audio (``Audio`` bytes or paths, or arrays) is written to
  ``OUT/audio/``. ``keep_splits=true`` makes one set of its own train/validation(/test) splits instead of
  speaker folds (no speaker column needed then).
* with ``unlabeled=true``, a folder of audio files, for self-supervised pretraining: one manifest
  ``OUT/unlabeled.jsonl`` (default OUT: ``data/unlabeled``) with ``id`` (the path under the folder),
  ``audio_filepath`` and ``duration`` of every audio file; no phones, categories or speakers
  (:mod:`broadclass.data.unlabeled`).
* a TIMIT-style folder: every ``<utt>.phn`` (lines ``start end phone``) with its audio beside it
  (``<utt>.wav``, ``<utt>.WAV`` or ``<utt>.WAV.wav``); the speaker is the folder holding them. A
  ``<utt>.wrd`` beside it (TIMIT's word alignment) puts ``|`` between the words' phones. The category
  comes from ``category_map=`` (CSV ``speaker,category`` or a JSON object speaker → category) or from
  ``category_level=N``: the name of the folder N levels above the audio file (1 = the speaker's
  folder, 2 = its parent, e.g. TIMIT's dialect region ``dr1``).

Columns of a table or dataset (:mod:`broadclass.data.sources`): ``columns=audio=path,phones=transcript,
category=emotion,speaker=spk`` names them; without it common names are recognised (``audio``, ``path``,
``file``, ``wav``, ``text``, ``transcription``, ``label``, ``speaker_id`` …). ``phonemize=<eSpeak
voice>`` turns an orthographic ``text`` column into IPA phones (:mod:`broadclass.data.phonemize`).

The speakers are dealt into k folds, stratified by category, and set i validates on fold i and trains on
the rest; ``test_share=p`` first holds out about a share p of each category's utterances as a test split
common to all sets. How, and the checks: :mod:`broadclass.data.sets`.

Output::

    OUT/sets.json                      the arguments and each speaker's fold (-1 = test)
    OUT/set<i>/train.jsonl             manifests (broadclass.data.manifest format, absolute audio paths,
    OUT/set<i>/validation.jsonl        durations read from the audio headers)
    OUT/set<i>/test.jsonl              with test_share=
    OUT/set<i>/summary.md, .json       speakers, utterances, hours and utterances per category, per split
    OUT/audio/                         a dataset's audio, one file per utterance id
    OUT/unlabeled.jsonl                with unlabeled=true, instead of all the above

Every problem of every row (columns, fields, audio, phones eSpeak cannot say, phones with no broad
class) is reported at once before anything is written: the report and exit status 1, a traceback only with
``debug=true`` (or ``HYDRA_FULL_ERROR=1``). The same arguments give byte-identical files.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from broadclass.arguments import argument, parse_arguments
from broadclass.check import main as check_manifests
from broadclass.config import project_root
from broadclass.data.manifest import ManifestError
from broadclass.data.sets import DEFAULT_SETS, format_summary, locate_set, prepare_sets, suggest_tags
from broadclass.data.sources import CorpusError
from broadclass.data.unlabeled import prepare_unlabeled

# Where paths.sets_dir points by default (conf/paths/default.yaml): <project>/data/sets.
DEFAULT_OUT = project_root() / "data" / "sets"
# Where unlabeled=true writes its manifest by default.
DEFAULT_UNLABELED_OUT = project_root() / "data" / "unlabeled"
# The arguments that only make sets of labeled utterances; unlabeled=true refuses them.
SETS_ONLY = ("sets", "seed", "test_share", "category_map", "category_level", "labels", "columns", "phonemize")


@dataclass
class PrepareArguments:
    source: str = argument(
        help="a JSONL/CSV manifest, a TIMIT-style folder, a HuggingFace dataset (folder, file, hub id), "
        "or with unlabeled=true a folder of audio files",
        positional=True,
    )
    out: Path | None = argument(
        None, f"folder for set1/ … setK/ (null: {DEFAULT_OUT}), or for unlabeled.jsonl (null: {DEFAULT_UNLABELED_OUT})"
    )
    sets: int | None = argument(None, f"number of sets = folds of speakers (null: {DEFAULT_SETS})")
    seed: int = argument(0, "seed of the speaker order")
    test_share: float = argument(0.0, "share held out as a common test split")
    category_map: Path | None = argument(None, "CSV speaker,category or JSON {speaker: category}")
    category_level: int | None = argument(None, "TIMIT folder: category = folder N levels up")
    labels: str | None = argument(None, "check every phone maps: ipa, arpabet, timit61 or a YAML path")
    columns: str | None = argument(
        None,
        "which column holds each field, e.g. columns=audio=path,phones=transcript,category=emotion,speaker=spk "
        "(fields: audio, phones, text, category, speaker, id)",
    )
    phonemize: str | None = argument(None, "phones from the text column with this eSpeak voice (en-us, es …)")
    keep_splits: bool = argument(False, "a dataset: one set of its own splits, no folds")
    unlabeled: bool = argument(
        False,
        "a folder of audio files -> OUT/unlabeled.jsonl (id, audio_filepath, duration) for self-supervised "
        "pretraining: no phones, categories or speakers; takes only out, check and debug",
    )
    check: bool = argument(False, "then check every row as training will (python -m broadclass.check)")
    debug: bool = argument(False, "show the traceback of an input error")


def main(argv: Sequence[str] | None = None, print_fn: Callable[[str], None] = print) -> None:
    about = (
        "Split a corpus into k speaker-disjoint, category-stratified sets (set1 … setK), or with unlabeled=true "
        "list a folder of audio files as one manifest. See the module docstring (python -m pydoc "
        "broadclass.prepare) for the input formats."
    )
    args = parse_arguments(PrepareArguments, argv, "python -m broadclass.prepare", about)
    try:
        if args.unlabeled:
            manifests, check_arguments = _prepare_unlabeled(args, print_fn)
        else:
            manifests, check_arguments = _prepare_sets(args, print_fn)
    except (CorpusError, ManifestError) as err:
        if args.debug or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    if args.check:
        if check_manifests([*manifests, *check_arguments], print_fn):
            raise SystemExit(1)


def _prepare_unlabeled(args: PrepareArguments, print_fn: Callable[[str], None]) -> tuple[list[str], list[str]]:
    """The unlabeled manifest, written; returns it and the data check's arguments for it."""
    defaults = PrepareArguments()
    given = [f"{name}=" for name in (*SETS_ONLY, "keep_splits") if getattr(args, name) != getattr(defaults, name)]
    if given:
        raise CorpusError(f"unlabeled=true lists audio files, it makes no sets: drop {', '.join(given)}")
    manifest = prepare_unlabeled(args.source, args.out or DEFAULT_UNLABELED_OUT)
    rows = sum(1 for _ in manifest.open(encoding="utf-8"))
    print_fn(f"{rows} audio file(s) listed in {manifest.resolve()}.")
    return [str(manifest)], ["unlabeled=true"]


def _prepare_sets(args: PrepareArguments, print_fn: Callable[[str], None]) -> tuple[list[str], list[str]]:
    """The sets, written and summarised; returns set 1's manifests (every row once) and the data check's
    arguments for them."""
    out = args.out or DEFAULT_OUT
    summaries = prepare_sets(
        args.source,
        out,
        n_sets=args.sets,
        seed=args.seed,
        test_share=args.test_share,
        category_map=args.category_map,
        category_level=args.category_level,
        labels=args.labels,
        columns=args.columns,
        phonemize=args.phonemize,
        keep_splits=args.keep_splits,
    )
    for set_name, summary in summaries.items():
        print_fn(format_summary(set_name, summary))
    names = list(next(iter(next(iter(summaries.values())).values()))["categories"])
    tags = ", ".join(f"{{name: {name}, tag: {tag}}}" for name, tag in suggest_tags(names).items())
    where = "" if out.resolve() == DEFAULT_OUT.resolve() else f" paths.sets_dir={out.resolve()}"
    print_fn(f"Sets written to {out.resolve()}. Train on set 1 with the reference recipe:")
    print_fn(f"  python -m broadclass.train +experiment=onSet1{where} 'data.categories=[{tags}]'")
    manifests = [str(path) for path in locate_set(out, "set1").values()]
    labels = args.labels or ("ipa" if args.phonemize else None)
    return manifests, [f"data.categories=[{tags}]", *([f"labels={labels}"] if labels else [])]


if __name__ == "__main__":
    main()
