"""Transcribe audio with a trained model into broad classes and decide each utterance's category.

``python -m broadclass.predict model=<checkpoint | exported folder | MLflow run id> input=<file | folder |
manifest> [output=predictions.jsonl] [csv=true] [batch_size=8] [batch_seconds=...] [window_seconds=20]
[window_context_seconds=3] [num_workers=0] [device=auto] [tracking_uri=...]``

Audio of any sample rate and channel count is decoded to mono at the model's sample rate (as in training).
Utterances are batched by length (longest first, so an out-of-memory error comes at once), ``batch_size`` to a
batch or, with ``batch_seconds``, as many as keep rows x the longest's seconds within it; on the GPU when there
is one. One JSON line per utterance: ``id``, ``audio_filepath``, ``duration`` (seconds of audio decoded),
``tokens`` (``v_m``, ``|``, ...), ``text`` (the tokens space-separated: what the exported model's
transformers pipeline returns), ``classes`` (tokens without their category tag, ``|`` kept), ``segments``
(each token with its ``start`` and ``end`` in seconds: from the first encoder frame of its greedy CTC run
to the start of the next token, frames of the encoder's stride, 20 ms for wav2vec2) and, per
decision rule, the ``category`` with its ``confidence`` (``posterior``: the category's share of the
posterior mass; ``vote``: its share of the decoded tokens; ``head``: the head's probability), plus
``posteriors`` per category.

A recording longer than ``window_seconds`` is transcribed in overlapping windows of that length
(:mod:`broadclass.model.windows`: the transformers pipeline's chunk-and-stride, ``window_context_seconds`` at
each end of a window computed for context and dropped), its tokens and segments on the recording's own
timeline and its category decided over the whole recording; its record adds ``windows``: each window's
span of the timeline (``start``, ``end``) with the category decided over that span. A recording up to one
window long is predicted whole, exactly as without windows. Memory holds one batch of windows whatever
the length.

A manifest whose rows have ``phones`` and ``category`` is scored too, by the validation's own code
(``BroadClassModule.evaluate_batch``), and each record gets its ``reference`` (``category``, ``tokens``).
The report (per-category precision/recall/F1 under every rule, WER, TER, the loss, the broad-class
confusion with S/D/I rates per class and category, and the duration of each class's segments) is printed
and written to ``<output stem>.report.txt`` and ``.report.json``: the keys of a validation's
``report.json`` (:class:`broadclass.model.evaluation.EvaluationResult`, stage ``test``, metric keys
``test/...``; ``step`` and ``epoch`` of the model's last validation) plus ``source`` (the model) and
``utterances``. Rows longer than one window get their reference but are not in the report (the
validation's code scores utterances). Files that cannot be read are listed on stderr and in
``<output stem>.errors.jsonl``; every other file is still predicted. At the end, the real-time factor: seconds
of audio predicted per wall second (decoding, network, decoding of tokens; not the model's loading).
``<output stem>.error_browser.html`` is the error browser of the records (broadclass.tracking.error_browser;
``error_browser=false``: not written).
"""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.utils.data import DataLoader, Dataset

from broadclass.arguments import argument, parse_arguments
from broadclass.data.audio import AudioError, decode, decode_span, normalize, read_header
from broadclass.data.datamodule import collate, pad_waves, seconds_batches
from broadclass.data.labels import LabelMap, UnknownPhoneError
from broadclass.data.manifest import ManifestError, read_manifest, write_manifest
from broadclass.metrics import format_report
from broadclass.metrics.alignment import class_analysis_text
from broadclass.model.format import ModelLoadError
from broadclass.model.module import BroadClassModule, TrainedModel
from broadclass.tracking.error_browser import BrowserLimits, prediction_page, write_page
from broadclass.tracking.run_model import load_model

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".opus", ".mp3", ".aif", ".aiff", ".au", ".caf", ".w64", ".sph"}


@dataclass
class PredictConfig:
    model: str = argument(help="checkpoint, exported folder, MLflow run id or name, or models:/<name>/<version>")
    input: str = argument(help="an audio file, a folder of audio files, or a manifest (.jsonl)")
    output: str = argument("predictions.jsonl", "the JSON lines written (reports and errors beside it)")
    csv: bool = argument(False, "also write <output stem>.csv")
    batch_size: int = argument(8, "utterances (or windows of a long recording) per batch")
    batch_seconds: float | None = argument(
        None, "seconds of audio per batch, counted padded (rows x the longest); replaces batch_size (null: rows)"
    )
    window_seconds: float = argument(20.0, "a longer recording is transcribed in overlapping windows this long")
    window_context_seconds: float = argument(
        3.0, "at each end of a window, seconds run for context and dropped (the pipeline's stride_length_s)"
    )
    num_workers: int = argument(0, "audio-decoding worker processes")
    device: str = argument("auto", "auto (the GPU when there is one), cpu, cuda, cuda:1 ...")
    tracking_uri: str | None = argument(None, "for a run id or name: default $MLFLOW_TRACKING_URI or the project's")
    error_browser: bool = argument(True, "also write <output stem>.error_browser.html (limits: conf/error_browser/)")


class InputError(ValueError):
    """An input that cannot be predicted at all (as opposed to one unreadable file among others)."""


@dataclass
class Utterance:
    id: str
    audio_filepath: str
    source: str  # the file, or the manifest row, for messages
    phones: str | None = None
    category: str | None = None
    duration: float = 0.0  # read from the file's header before batching, for length sorting


@dataclass
class Outputs:
    records: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    report: dict[str, Any] | None = None
    audio_seconds: float = 0.0  # of the records
    wall_seconds: float = 0.0  # from the first file read to the last record

    @property
    def real_time_factor(self) -> float:
        """Seconds of audio predicted per wall second."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds else 0.0


def parse_args(argv: Sequence[str] | None) -> PredictConfig:
    """``key=value`` arguments checked against :class:`PredictConfig`."""
    return parse_arguments(PredictConfig, argv, "python -m broadclass.predict", __doc__)


def collect(input_path: str | Path) -> list[Utterance]:
    """Utterances of a manifest (``.jsonl``), of every audio file under a folder, or of one audio file."""
    path = Path(input_path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        if not files:
            raise InputError(f"no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) under {path}")
        return [Utterance(str(f.relative_to(path).with_suffix("")), str(f), str(f)) for f in files]
    if path.suffix == ".jsonl":
        return [
            Utterance(str(row["id"]), row["audio_filepath"], row["_source"], row.get("phones"), row.get("category"))
            for row in read_manifest(path, required=("audio_filepath",))
        ]
    if not path.is_file():
        raise InputError(f"input={path}: no such file or folder")
    return [Utterance(path.stem, str(path), str(path))]


def check_references(utterances: Sequence[Utterance], labels: LabelMap) -> bool:
    """Whether the utterances can be scored: every row has ``phones`` and a known ``category``."""
    if not utterances or any(u.phones is None or u.category is None for u in utterances):
        return False
    names = set(labels.category_names)
    unknown = [f"  {u.source}: {u.category!r}" for u in utterances if u.category not in names]
    if unknown:
        raise InputError(
            f"{len(unknown)} row(s) have a category the model does not know ({', '.join(labels.category_names)}):\n"
            + "\n".join(unknown[:20])
        )
    labels.check((u.source, u.phones) for u in utterances)
    return True


class AudioDataset(Dataset):
    """Items as the datamodule's (``broadclass.data.datamodule.collate``): the normalised waveform at the
    model's sample rate, id, and with ``labels`` (scoring) the reference's token ids and category. A file that
    fails to decode yields its ``error`` instead of raising."""

    def __init__(self, utterances: Sequence[Utterance], sample_rate: int, labels: LabelMap | None):
        self.utterances = utterances
        self.sample_rate = sample_rate
        self.labels = labels

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> dict[str, Any]:
        utt = self.utterances[index]
        try:
            wave = normalize(decode(utt.audio_filepath, self.sample_rate))
        except AudioError as err:
            return {"index": index, "error": str(err)}
        item = {"index": index, "input_values": wave, "id": utt.id}
        if self.labels is not None:
            item["labels"] = self.labels.encode(utt.phones, utt.category)
            item["category"] = self.labels.category_index(utt.category)
        return item


def collate_readable(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The readable items padded into a batch (with their references when they have them), their
    ``indices``, and the ``failed`` ones as (index, error)."""
    readable = [item for item in items if "error" not in item]
    if readable and "labels" in readable[0]:
        batch = collate(readable)
    else:
        audio, mask = pad_waves([item["input_values"] for item in readable])
        batch = {"input_values": audio, "attention_mask": mask}
    batch["indices"] = [item["index"] for item in readable]
    batch["failed"] = [(item["index"], item["error"]) for item in items if "error" in item]
    return batch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def length_sorted_batches(
    utterances: Sequence[Utterance], batch_size: int, batch_seconds: float | None = None
) -> list[list[int]]:
    """Longest first, cut into batches (:func:`cut_batches`)."""
    order = sorted(range(len(utterances)), key=lambda i: -utterances[i].duration)
    return cut_batches(order, [u.duration for u in utterances], batch_size, batch_seconds)


def cut_batches(
    order: Sequence[int], seconds: Sequence[float], batch_size: int, batch_seconds: float | None
) -> list[list[int]]:
    """``order`` in consecutive batches: ``batch_size`` to a batch, or with ``batch_seconds`` as many as keep rows
    x the longest's seconds within it (:func:`broadclass.data.datamodule.seconds_batches`)."""
    if batch_seconds is not None:
        return seconds_batches(list(order), list(seconds), batch_seconds)
    return [list(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]


def failure(utt: Utterance, error: str) -> dict[str, str]:
    return {"id": utt.id, "audio_filepath": utt.audio_filepath, "error": error}


def predict_recording(
    module: BroadClassModule,
    utt: Utterance,
    window_seconds: float,
    context_seconds: float,
    batch_size: int,
    batch_seconds: float | None,
) -> dict[str, Any]:
    """The record of a recording longer than one window (:meth:`BroadClassModule.transcribe_recording`), its
    windows batched as predict batches utterances."""
    rate = module.sample_rate
    header = read_header(utt.audio_filepath)
    return module.transcribe_recording(
        lambda start, stop: decode_span(utt.audio_filepath, start, stop, rate),
        header.frames * rate // header.sample_rate,
        window_seconds,
        context_seconds,
        lambda seconds: cut_batches(range(len(seconds)), seconds, batch_size, batch_seconds),
    )


def predict(
    trained: TrainedModel,
    utterances: Sequence[Utterance],
    batch_size: int = 8,
    device: str = "auto",
    num_workers: int = 0,
    console: Console | None = None,
    batch_seconds: float | None = None,
    window_seconds: float = 20.0,
    window_context_seconds: float = 3.0,
) -> Outputs:
    """Records in input order (recordings longer than ``window_seconds`` in windows: :func:`predict_recording`), the
    files that failed, the report when references are given, and the seconds of audio and of wall time."""
    if not 0 < 2 * window_context_seconds < window_seconds:
        raise InputError(
            f"window_context_seconds={window_context_seconds:g} must be positive and under half of "
            f"window_seconds={window_seconds:g}: a window drops that much at each end"
        )
    started = time.perf_counter()
    outputs = Outputs()
    whole: list[Utterance] = []
    position: list[int] = []  # of each of whole in utterances
    windowed: list[tuple[int, Utterance]] = []
    for n, utt in enumerate(utterances):
        try:
            duration = read_header(utt.audio_filepath).duration
        except AudioError as err:
            outputs.errors.append(failure(utt, str(err)))
            continue
        if duration > window_seconds:
            windowed.append((n, replace(utt, duration=duration)))
        else:
            whole.append(replace(utt, duration=duration))
            position.append(n)
    labels = trained.labels
    module = trained.module.to(resolve_device(device)).eval()
    scored = check_references(whole + [utt for _, utt in windowed], labels)
    loader = DataLoader(
        AudioDataset(whole, module.sample_rate, labels if scored else None),
        batch_sampler=length_sorted_batches(whole, batch_size, batch_seconds),
        collate_fn=collate_readable,
        num_workers=num_workers,
        pin_memory=module.device.type == "cuda",
    )
    by_index: dict[int, dict[str, Any]] = {}
    progress = Progress(
        TextColumn("predicting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
    )
    with progress, torch.inference_mode():
        task = progress.add_task("predict", total=len(whole) + len(windowed))
        for batch in loader:
            outputs.errors += [failure(whole[i], error) for i, error in batch["failed"]]
            if batch["indices"]:
                batch_utts = [whole[i] for i in batch["indices"]]
                records = [
                    {"id": utt.id, "audio_filepath": utt.audio_filepath, **record}
                    for utt, record in zip(batch_utts, module.transcribe(batch), strict=True)
                ]
                if scored:
                    for utt, record in zip(batch_utts, records, strict=True):
                        record["reference"] = reference(labels, utt)
                by_index.update(zip([position[i] for i in batch["indices"]], records, strict=True))
            progress.advance(task, len(batch["indices"]) + len(batch["failed"]))
        for n, utt in windowed:
            try:
                record = predict_recording(
                    module, utt, window_seconds, window_context_seconds, batch_size, batch_seconds
                )
            except AudioError as err:
                outputs.errors.append(failure(utt, str(err)))
            else:
                if scored:
                    record["reference"] = reference(labels, utt)
                by_index[n] = {"id": utt.id, "audio_filepath": utt.audio_filepath, **record}
            progress.advance(task, 1)
    outputs.records = [by_index[n] for n in sorted(by_index)]
    outputs.audio_seconds = sum(record["duration"] for record in outputs.records)
    outputs.wall_seconds = time.perf_counter() - started
    scored_records = sum(n in by_index for n in position)  # recordings in windows are not scored
    if scored and scored_records:
        trained_at = trained.metadata.get("report") or {}  # the model's last validation
        result = module.evaluation_result("test", int(trained_at.get("step", 0)), int(trained_at.get("epoch", 0)))
        outputs.report = {"source": trained.source, "utterances": scored_records, **result.summary()}
    return outputs


def reference(labels: LabelMap, utt: Utterance) -> dict[str, Any]:
    return {"category": utt.category, "tokens": labels.decode(labels.encode(utt.phones, utt.category))}


def report_text(report: dict[str, Any]) -> str:
    errors = report["errors"]
    lines = [
        f"{report['utterances']} utterances scored, model {report['source']}",
        f"WER {errors['wer']:.4f}   TER {errors['ter']:.4f}",
    ]
    for rule, scores in report["rule_reports"].items():
        lines += ["", f"category (rule: {rule})", format_report(scores, report["categories"], digits=4)]
    lines += ["", class_analysis_text(report["class_confusion"], report["durations"])]
    return "\n".join(lines)


def write_csv(path: Path, records: Sequence[dict[str, Any]], rules: Sequence[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["id", "audio_filepath", "duration", "text", "classes"]
            + [f"{rule}_{column}" for rule in rules for column in ("category", "confidence")]
        )
        for r in records:
            per_rule = [r["category"][rule][key] for rule in rules for key in ("name", "confidence")]
            writer.writerow([r["id"], r["audio_filepath"], r["duration"], r["text"], " ".join(r["classes"]), *per_rule])


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    stderr = Console(stderr=True)
    try:
        utterances = collect(cfg.input)
        trained = load_model(cfg.model, tracking_uri=cfg.tracking_uri)
        outputs = predict(
            trained,
            utterances,
            cfg.batch_size,
            cfg.device,
            cfg.num_workers,
            stderr,
            cfg.batch_seconds,
            cfg.window_seconds,
            cfg.window_context_seconds,
        )
    except (InputError, ModelLoadError, ManifestError, UnknownPhoneError) as err:
        raise SystemExit(f"error: {err}") from None
    output = Path(cfg.output)
    write_manifest(output, outputs.records)
    write_manifest(output.with_suffix(".errors.jsonl"), outputs.errors)
    written = [str(output)]
    if cfg.csv:
        write_csv(output.with_suffix(".csv"), outputs.records, trained.module.rules)
        written.append(str(output.with_suffix(".csv")))
    if outputs.errors:
        stderr.print(
            f"{len(outputs.errors)} file(s) could not be predicted (also in {output.with_suffix('.errors.jsonl')}):"
        )
        for error in outputs.errors:
            stderr.print(f"  {error['audio_filepath']}: {error['error']}", markup=False, highlight=False)
    if cfg.error_browser and outputs.records:
        page = output.with_suffix(".error_browser.html")
        module = trained.module
        data = prediction_page(
            outputs.records,
            trained.labels,
            module.rules,
            module.hparams.primary_rule,
            BrowserLimits.from_config(),
            f"predict · {trained.source} · {cfg.input}",
        )
        written.append(str(write_page(page, data)))
    if outputs.report is not None:
        text = report_text(outputs.report)
        print(text)
        output.with_suffix(".report.json").write_text(json.dumps(outputs.report, indent=2) + "\n", encoding="utf-8")
        output.with_suffix(".report.txt").write_text(text + "\n", encoding="utf-8")
        written += [str(output.with_suffix(".report.json")), str(output.with_suffix(".report.txt"))]
    stderr.print(f"{len(outputs.records)} of {len(utterances)} utterance(s) predicted: {', '.join(written)}")
    stderr.print(
        f"{outputs.audio_seconds:.1f} s of audio in {outputs.wall_seconds:.1f} s: real-time factor "
        f"{outputs.real_time_factor:.1f} (audio seconds per wall second)"
    )
    return 0 if outputs.records else 1


if __name__ == "__main__":
    sys.exit(main())
