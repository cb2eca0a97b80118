"""The error browser: one self-contained HTML page per evaluation (``error_browser.html``).

Every utterance with its reference and decided category under each rule (and the posterior of the decision),
its TER and S/D/I counts; the category and class confusion matrices, whose cells filter the table; per
utterance the audio, the waveform with the decoded tokens on it coloured by broad class (times from the
greedy CTC segments, ``broadclass.model.decoding.greedy_segments``), and the reference aligned with the
hypothesis (``broadclass.metrics.alignment``: RapidFuzz's edit script, the alignment jiwer reports), a
click on a token playing its segment. With two runs (``python -m broadclass.report compare=A B``) each
utterance shows both, and the table opens on the utterances where they disagree.

Nothing is fetched when the page is viewed: script, style and data are inline, and the audio is embedded as
Ogg/Opus data URIs, up to ``error_browser.max_audio_utterances`` utterances and ``max_audio_bytes`` bytes (the
worst first, then a random sample; recordings longer than ``excerpt_seconds`` as an excerpt around their first
error), with a note on the page of what was left out. Limits: ``conf/error_browser/default.yaml``.

The data is made by :func:`page_data` (plain Python, tested without a browser); :func:`render_page` puts it
into the template ``error_browser.html`` beside this module. Written by the :class:`ErrorBrowserLog` callback
(the best checkpoint's validation after fit, the test pass), by ``predict`` beside its output, and by
``report compare=A B``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import random
import tempfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import soundfile as sf
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from omegaconf import OmegaConf
from pytorch_lightning.utilities import rank_zero_warn

from broadclass.data.audio import AudioError, decode
from broadclass.data.labels import WORD_BOUNDARY, LabelMap, split_token
from broadclass.data.manifest import read_manifest
from broadclass.metrics.alignment import TokenIndex, aligned_positions, alignment_counts
from broadclass.tracking.mlflow_run import mlflow_logger
from broadclass.tracking.run_card import RunRecord, evaluation_predictions

ARTIFACT = "error_browser.html"
# The embedded audio is Opus, which takes 8, 12, 16, 24 or 48 kHz: 16 kHz keeps the speech band the models hear.
PAGE_AUDIO_RATE = 16_000
# The alignment's marks: a token right, substituted, deleted, inserted.
KINDS = {"equal": "C", "sub": "S", "del": "D", "ins": "I"}


@dataclass(frozen=True)
class BrowserLimits:
    """What the page embeds (``conf/error_browser/default.yaml`` says why each)."""

    max_audio_utterances: int
    max_audio_bytes: int
    worst_share: float
    excerpt_seconds: float
    waveform_points: int
    page_size: int
    seed: int

    def __post_init__(self) -> None:
        problems = [
            f"error_browser.{key}={getattr(self, key)} must be {what}"
            for key, what, ok in (
                ("max_audio_utterances", ">= 0", self.max_audio_utterances >= 0),
                ("max_audio_bytes", ">= 0", self.max_audio_bytes >= 0),
                ("worst_share", "between 0 and 1", 0 <= self.worst_share <= 1),
                ("excerpt_seconds", "> 0", self.excerpt_seconds > 0),
                ("waveform_points", "> 0", self.waveform_points > 0),
                ("page_size", "> 0", self.page_size > 0),
            )
            if not ok
        ]
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_config(cls, values: Mapping[str, Any] | None = None) -> BrowserLimits:
        """From the given values (a composed config's ``error_browser``), else from the YAML file."""
        if values is None:
            text = resources.files("broadclass").joinpath("conf/error_browser/default.yaml").read_text("utf-8")
            values = OmegaConf.to_container(OmegaConf.create(text))
        return cls(**values)


@dataclass(frozen=True)
class Vocabulary:
    """Names and tags of the categories and broad classes (rows and columns of the matrices)."""

    categories: list[str]
    category_tags: list[str]
    classes: list[str]
    class_tags: list[str]

    @classmethod
    def of(cls, labels: LabelMap) -> Vocabulary:
        return cls(
            labels.category_names,
            [c.tag for c in labels.categories],
            list(labels.classes),
            [spec["tag"] for spec in labels.classes.values()],
        )

    @classmethod
    def of_report(cls, class_confusion: Mapping[str, Any]) -> Vocabulary:
        """From an evaluation's ``class_confusion`` (``report.json``)."""
        c = class_confusion
        return cls(list(c["categories"]), list(c["category_tags"]), list(c["classes"]), list(c["class_tags"]))


# ---- one run's utterances, from a validation's predictions.jsonl or from predict's records --------------------
def from_evaluation(prediction: Mapping[str, Any], audio_filepath: str | None) -> dict[str, Any]:
    """An evaluation's per-utterance record (``BroadClassModule.evaluate_batch``) in the page's terms."""
    return {
        "id": str(prediction["id"]),
        "audio_filepath": audio_filepath,
        "reference": prediction["reference"].split(),
        "category": int(prediction["category"]),
        "hypothesis": prediction["hypothesis"].split(),
        "segments": [list(s) for s in prediction.get("segments") or []],
        "predicted": dict(prediction["predicted"]),
        "posteriors": list(prediction.get("posteriors") or []),
    }


def from_predict(record: Mapping[str, Any], categories: Sequence[str]) -> dict[str, Any]:
    """A ``predict`` record (``BroadClassModule.transcribe``) in the page's terms."""
    reference = record.get("reference")
    return {
        "id": str(record["id"]),
        "audio_filepath": record.get("audio_filepath"),
        "reference": list(reference["tokens"]) if reference else None,
        "category": categories.index(reference["category"]) if reference else None,
        "hypothesis": list(record["tokens"]),
        "segments": [[s["start"], s["end"]] for s in record["segments"]],
        "predicted": {rule: categories.index(choice["name"]) for rule, choice in record["category"].items()},
        "posteriors": [record["posteriors"][name] for name in categories],
    }


def utterance_errors(reference: Sequence[str], hypothesis: Sequence[str]) -> dict[str, Any]:
    """The alignment as ``[ref position, hyp position, kind]`` triples (kind C, S, D or I), the S/D/I counts
    and the TER (their sum over the reference's class tokens; None for an empty reference)."""
    alignment = []
    for i, j in aligned_positions(reference, hypothesis):
        if i is None:
            kind = KINDS["ins"]
        elif j is None:
            kind = KINDS["del"]
        else:
            same = split_token(reference[i])[0] == split_token(hypothesis[j])[0]
            kind = KINDS["equal" if same else "sub"]
        alignment.append([i, j, kind])
    counts = [sum(1 for *_, kind in alignment if kind == k) for k in ("S", "D", "I")]
    tokens = sum(1 for t in reference if t != WORD_BOUNDARY)
    return {"alignment": alignment, "sdi": counts, "ter": sum(counts) / tokens if tokens else None}


def run_view(utterance: Mapping[str, Any], rules: Sequence[str]) -> dict[str, Any]:
    """One run's side of an utterance: decisions with their posteriors, hypothesis, segments, errors."""
    posteriors = utterance["posteriors"]
    view = {
        "decided": {rule: utterance["predicted"][rule] for rule in rules},
        "posterior": {rule: posteriors[utterance["predicted"][rule]] if posteriors else None for rule in rules},
        "hypothesis": utterance["hypothesis"],
        "segments": utterance["segments"],
    }
    if utterance["reference"] is not None:
        view |= utterance_errors(utterance["reference"], utterance["hypothesis"])
    return view


def badness(view: Mapping[str, Any], category: int | None, rule: str) -> tuple:
    """Sort key, worst first: a wrong decision, then the TER and the edits; without a reference, the
    least confident decision."""
    if category is None:
        confidence = view["posterior"][rule]
        return (-(confidence if confidence is not None else 1.0),)
    ter = view["ter"] if view["ter"] is not None else 0.0
    return (view["decided"][rule] != category, ter, sum(view["sdi"]))


# ---- audio ------------------------------------------------------------------------------------------------------
def excerpt_window(view: Mapping[str, Any], duration: float, length: float) -> tuple[float, float]:
    """(start, end) seconds: the whole recording, or ``length`` seconds from shortly before its first error
    (its start when it has none)."""
    if duration <= length:
        return 0.0, duration
    first = 0.0
    segments = view["segments"]
    for _, j, kind in view.get("alignment", []):
        if kind != "C":
            if j is not None:
                first = segments[j][0]
            break
    start = min(max(0.0, first - 0.5), duration - length)
    return start, start + length


def encode_audio(wave: np.ndarray) -> str:
    """An Ogg/Opus data URI of a 16 kHz waveform."""
    buffer = io.BytesIO()
    sf.write(buffer, wave, PAGE_AUDIO_RATE, format="OGG", subtype="OPUS")
    return "data:audio/ogg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def envelope(wave: np.ndarray, points: int) -> list[int]:
    """The waveform's peak per bucket, 0-100 of the utterance's peak: what the page draws."""
    if not len(wave):
        return []
    buckets = np.array_split(np.abs(wave), min(points, len(wave)))
    peaks = np.array([b.max() for b in buckets])
    top = peaks.max() or 1.0
    return [int(round(100 * p / top)) for p in peaks]


def embed_audio(
    utterances: list[dict[str, Any]], audio_paths: Sequence[str | None], rule: str, limits: BrowserLimits
) -> str:
    """Adds ``audio`` (data URI, start, end, waveform) to the utterances chosen within the limits: the
    ``worst_share`` worst by :func:`badness` (of the first run), then a random sample of the rest, in that order
    while the bytes last. Returns the page's note of what was embedded and what was left out."""
    order = sorted(
        range(len(utterances)),
        key=lambda k: badness(utterances[k]["runs"][0], utterances[k]["category"], rule),
        reverse=True,
    )
    with_audio = [k for k in order if audio_paths[k]]
    n_worst = min(len(with_audio), round(limits.max_audio_utterances * limits.worst_share))
    worst, rest = with_audio[:n_worst], with_audio[n_worst:]
    sample = random.Random(limits.seed).sample(rest, min(len(rest), limits.max_audio_utterances - n_worst))
    candidates = [*worst, *sample]

    def prepared(k: int) -> dict[str, Any] | None:
        """The utterance's page audio (its excerpt around the first error), or None when it cannot be read."""
        try:
            wave = decode(audio_paths[k], PAGE_AUDIO_RATE)
        except AudioError:
            return None
        duration = len(wave) / PAGE_AUDIO_RATE
        start, end = excerpt_window(utterances[k]["runs"][0], duration, limits.excerpt_seconds)
        part = wave[int(round(start * PAGE_AUDIO_RATE)) : int(round(end * PAGE_AUDIO_RATE))]
        audio = {"src": encode_audio(part), "start": round(start, 4), "end": round(end, 4)}
        return {**audio, "wave": envelope(part, limits.waveform_points), "excerpt": end - start < duration}

    # Decoded and encoded on every core (libsndfile and soxr leave Python's lock while they work): the demo's 100
    # utterances take 2.6 s instead of 5.0 on 2 cores. In order, so the byte limit keeps the same ones.
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        audios = list(pool.map(prepared, candidates))
    used, embedded, over_bytes, unreadable, excerpts = 0, [], 0, 0, 0
    for k, audio in zip(candidates, audios, strict=True):
        if audio is None:
            unreadable += 1
            continue
        if used + len(audio["src"]) > limits.max_audio_bytes:
            over_bytes += 1
            continue
        used += len(audio["src"])
        excerpts += audio.pop("excerpt")
        embedded.append(k)
        utterances[k]["audio"] = audio
    n_sampled = len(set(embedded) - set(worst))
    total, missing = len(utterances), len(utterances) - len(with_audio)
    note = (
        f"Audio is embedded for {len(embedded)} of {total} utterances ({used / 1e6:.1f} MB): "
        f"{len(embedded) - n_sampled} of the worst first, then a random sample of {n_sampled} others"
        f" (error_browser.max_audio_utterances={limits.max_audio_utterances}, "
        f"worst_share={limits.worst_share}, max_audio_bytes={limits.max_audio_bytes})."
    )
    left = [
        (total - len(worst) - len(sample) - missing, "beyond the utterance limit"),
        (over_bytes, "beyond the byte limit"),
        (unreadable, "unreadable"),
        (missing, "with no audio file known"),
    ]
    left = [f"{n} {why}" for n, why in left if n]
    note += f" Left out: {', '.join(left)}." if left else " Nothing was left out."
    if excerpts:
        note += (
            f" {excerpts} recording(s) longer than {limits.excerpt_seconds:g} s are excerpts around the first error."
        )
    return note


# ---- the page's data ----------------------------------------------------------------------------------------
def category_confusion(utterances: Sequence[Mapping[str, Any]], run: int, rule: str, k: int) -> list[list[int]]:
    """Rows: reference category, columns: the category ``rule`` decided (run ``run``)."""
    matrix = np.zeros((k, k), dtype=int)
    for u in utterances:
        matrix[u["category"], u["runs"][run]["decided"][rule]] += 1
    return matrix.tolist()


def class_confusion(utterances: Sequence[Mapping[str, Any]], run: int, vocabulary: Vocabulary) -> list[list[int]]:
    """The aligned class pairs' counts (``broadclass.metrics.alignment``): rows the reference classes and
    ``<ins>``, columns the hypothesis classes and ``<del>``."""
    index = TokenIndex(vocabulary.class_tags, vocabulary.category_tags)
    size = len(vocabulary.class_tags) + 1
    total = np.zeros((size, size), dtype=int)
    for u in utterances:
        view = u["runs"][run]
        pairs = [
            (None if i is None else u["reference"][i], None if j is None else view["hypothesis"][j])
            for i, j, _ in view["alignment"]
        ]
        total += alignment_counts(pairs, index)[0]
    return total.tolist()


def page_data(
    runs: Sequence[tuple[str, Sequence[Mapping[str, Any]]]],
    vocabulary: Vocabulary,
    rules: Sequence[str],
    primary_rule: str,
    limits: BrowserLimits,
    title: str,
) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready data. ``runs``: (name, utterances as :func:`from_evaluation` or
    :func:`from_predict` give them) for one run, or two runs over the same utterances (matched by id; the
    first run's order and audio)."""
    first_name, first = runs[0]
    others = [{u["id"]: u for u in utterances} for _, utterances in runs[1:]]
    missing = [
        (name, u["id"])
        for (name, _), by_id in zip(runs[1:], others, strict=True)
        for u in first
        if u["id"] not in by_id
    ]
    if missing:
        raise ValueError(f"run {missing[0][0]} has no utterance {missing[0][1]!r} ({len(missing)} missing in all)")
    referenced = all(u["reference"] is not None for u in first)
    utterances = []
    for u in first:
        sides = [u, *(by_id[u["id"]] for by_id in others)]
        utterances.append(
            {
                "id": u["id"],
                "category": u["category"] if referenced else None,
                "reference": u["reference"] if referenced else None,
                "runs": [run_view(side if referenced else {**side, "reference": None}, rules) for side in sides],
                "audio": None,
            }
        )
    # Each token's broad class (its row in the class matrix; -1 for a word boundary), so the page reads no token.
    number = {tag: c for c, tag in enumerate(vocabulary.class_tags)}

    def class_numbers(tokens: Sequence[str]) -> list[int]:
        return [number.get(split_token(token)[0], -1) for token in tokens]

    for u in utterances:
        u["reference_classes"] = class_numbers(u["reference"]) if referenced else None
        for view in u["runs"]:
            view["hypothesis_classes"] = class_numbers(view["hypothesis"])
    note = embed_audio(utterances, [u["audio_filepath"] for u in first], primary_rule, limits)
    k = len(vocabulary.categories)
    data = {
        "title": title,
        "runs": [name for name, _ in runs],
        "categories": vocabulary.categories,
        "classes": vocabulary.classes,
        "class_tags": vocabulary.class_tags,
        "rules": list(rules),
        "primary_rule": primary_rule,
        "has_references": referenced,
        "page_size": limits.page_size,
        "audio_note": note,
        "utterances": utterances,
    }
    if referenced:
        data["category_confusion"] = [category_confusion(utterances, r, primary_rule, k) for r in range(len(runs))]
        data["class_confusion"] = {
            "rows": [*vocabulary.classes, "<ins>"],
            "columns": [*vocabulary.classes, "<del>"],
            "matrices": [class_confusion(utterances, r, vocabulary) for r in range(len(runs))],
        }
    return data


def render_page(data: Mapping[str, Any]) -> str:
    """The self-contained page: the template with the data inline (``</`` escaped, so no string ends the script)."""
    template = resources.files("broadclass.tracking").joinpath("error_browser.html").read_text(encoding="utf-8")
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    return template.replace("__TITLE__", html.escape(data["title"])).replace("__DATA__", payload)


def write_page(path: Path, data: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_page(data), encoding="utf-8")
    return path


# ---- where the pages are made ---------------------------------------------------------------------------------
def evaluation_page(
    predictions: Sequence[Mapping[str, Any]],
    audio_of: Callable[[str], str | None],
    vocabulary: Vocabulary,
    rules: Sequence[str],
    primary_rule: str,
    limits: BrowserLimits,
    title: str,
) -> dict[str, Any]:
    """The page data of one logged evaluation (validation or test ``predictions.jsonl``)."""
    utterances = [from_evaluation(p, audio_of(str(p["id"]))) for p in predictions]
    return page_data([(title, utterances)], vocabulary, rules, primary_rule, limits, title)


def prediction_page(
    records: Sequence[Mapping[str, Any]],
    labels: LabelMap,
    rules: Sequence[str],
    primary_rule: str,
    limits: BrowserLimits,
    title: str,
) -> dict[str, Any]:
    """The page data of ``predict``'s records (with references where the manifest had them)."""
    vocabulary = Vocabulary.of(labels)
    utterances = [from_predict(r, vocabulary.categories) for r in records]
    return page_data([(title, utterances)], vocabulary, rules, primary_rule, limits, title)


def run_audio_paths(run: Run, stage: str) -> dict[str, str]:
    """id → audio file of the utterances a run evaluated in ``stage``, read from the manifest it logged as a
    dataset input (the test's, else the validation's); empty where that manifest is no longer there."""
    manifests = {}
    for item in run.inputs.dataset_inputs:
        context = next((tag.value for tag in item.tags if tag.key == "mlflow.data.context"), None)
        manifests[context] = json.loads(item.dataset.source).get("uri")
    path = (manifests.get("test") if stage == "test" else None) or manifests.get("validation")
    if not path or not Path(path).is_file():
        return {}
    return {str(row["id"]): row["audio_filepath"] for row in read_manifest(path, required=("audio_filepath",))}


def comparison_page(
    evaluations: Sequence[tuple[RunRecord, str, Mapping[str, Any], Sequence[Mapping[str, Any]]]],
    limits: BrowserLimits,
) -> dict[str, Any]:
    """The page data of two runs' evaluations of the same utterances: (run, artifact folder, report.json,
    predictions) each, as ``report compare=A B`` pairs them. The audio comes from the first run's manifest."""
    first, folder, report, _ = evaluations[0]
    audio = run_audio_paths(first.run, report["stage"])
    runs = [
        (f"{record.name} ({where})", [from_evaluation(p, audio.get(str(p["id"]))) for p in predictions])
        for record, where, _, predictions in evaluations
    ]
    shared = set.intersection(*(set(predictions[0]["predicted"]) for *_, predictions in evaluations))
    rules = [rule for rule in evaluations[0][3][0]["predicted"] if rule in shared]
    primary = report["rule"] if report["rule"] in shared else rules[0]
    title = " vs ".join(record.name for record, *_ in evaluations) + f" · {folder}"
    return page_data(runs, Vocabulary.of_report(report["class_confusion"]), rules, primary, limits, title)


class ErrorBrowserLog(pl.Callback):
    """Logs ``<stage>/step_<N>/error_browser.html`` for the best checkpoint's validation when fit ends and for
    the test. Listed after ``report`` (whose ``predictions.jsonl`` of the best validation it reads back)."""

    def __init__(self, limits: Mapping[str, Any], enabled: bool = True):
        self.limits = BrowserLimits.from_config(limits)
        self.enabled = enabled

    def _log(self, trainer: pl.Trainer, module: Any, folder: str, predictions: Sequence[Mapping[str, Any]]) -> None:
        logger = mlflow_logger(trainer.loggers)
        split = "test" if folder.startswith("test") and "test" in trainer.datamodule.datasets else "validation"
        rows = trainer.datamodule.datasets[split].rows
        paths = {str(row["id"]): row["audio_filepath"] for row in rows}
        title = f"{logger._experiment_name} · run {logger.run_id[:8]} · {folder}"
        data = evaluation_page(
            predictions,
            paths.get,
            Vocabulary.of(module.labels),
            module.rules,
            module.hparams.primary_rule,
            self.limits,
            title,
        )
        with tempfile.TemporaryDirectory(prefix="broadclass-browser-") as tmp:
            logger.experiment.log_artifact(logger.run_id, str(write_page(Path(tmp) / ARTIFACT, data)), folder)

    def _active(self, trainer: pl.Trainer) -> bool:
        return self.enabled and trainer.is_global_zero and mlflow_logger(trainer.loggers) is not None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active(trainer):
            return
        logger = mlflow_logger(trainer.loggers)
        try:
            record = RunRecord.load(logger.experiment, logger.run_id)
        except (OSError, MlflowException) as err:
            rank_zero_warn(f"no error browser for run {logger.run_id}: {err}")
            return
        step = record.best_validation_step()
        folder = f"val/step_{step:06d}" if step is not None else None
        predictions = evaluation_predictions(record, folder) if folder else None
        if not predictions:
            rank_zero_warn("no validation predictions were logged: no error browser")
            return
        self._log(trainer, pl_module, folder, predictions)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        last = getattr(pl_module, "last_evaluation", None)
        if self._active(trainer) and last is not None and last.predictions:
            self._log(trainer, pl_module, f"{last.stage}/step_{last.step:06d}", last.predictions)
