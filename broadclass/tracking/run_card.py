"""A Markdown model card for one MLflow run, in the layout the HF Trainer writes into its README.md.

Built from the card pieces every card shares (:mod:`broadclass.model.card_sections`: front matter, what the model
transcribes, each evaluation's report and confusion matrix), with what only the run has added here.

Everything comes from what the run logged: the resolved config (``config/config.yaml``), the metric
histories (one "Training results" row per validation) and the per-evaluation ``report.json`` artifacts
(category names, the full report and confusion matrix of the best validation and of the test). The
``ModelCard`` callback records the framework versions when training starts and logs the card as the
artifact ``model_card.md`` when fit (and the test after it) ends.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import yaml
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from broadclass.data.markdown import markdown_table
from broadclass.metrics import category_keys
from broadclass.model.card_sections import evaluation_section, front_matter, number, transcription_sentence
from broadclass.tracking.error_analysis import error_analysis_markdown, parse_predictions
from broadclass.tracking.mlflow_run import mlflow_logger

CARD_ARTIFACT = "model_card.md"
VERSION_TAG = "version/"
FRAMEWORKS = ("broadclass", "torch", "pytorch-lightning", "transformers", "torchmetrics", "mlflow", "hydra-core")
FIELDS = (("precision", "Precision"), ("recall", "Recall"), ("f1", "F1"))
AVERAGES = (("macro_avg", "Macro"), ("weighted_avg", "Weighted"))


# ---- what the run logged ---------------------------------------------------------------------------
def framework_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in FRAMEWORKS:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


History = list[tuple[int, float]]


def _artifact_text(client: MlflowClient, run_id: str, path: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        return Path(client.download_artifacts(run_id, path, tmp)).read_text(encoding="utf-8")


def value_at(history: History, step: int, exact: bool = True) -> float | None:
    """The last value logged at ``step`` (or, with ``exact=False``, at the latest step up to it)."""
    found = [value for s, value in history if (s == step if exact else s <= step)]
    return found[-1] if found else None


@dataclass
class RunRecord:
    run: Run
    config: dict[str, Any]
    histories: dict[str, History]
    client: MlflowClient

    @classmethod
    def load(cls, client: MlflowClient, run_id: str) -> RunRecord:
        run = client.get_run(run_id)
        try:
            config = yaml.safe_load(_artifact_text(client, run_id, "config/config.yaml")) or {}
        except (OSError, MlflowException) as err:
            raise FileNotFoundError(f"run {run_id} has no readable config/config.yaml artifact: {err}") from None
        histories = {}
        for key in run.data.metrics:
            points = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
            histories[key] = [(m.step, m.value) for m in points]
        return cls(run, config, histories, client)

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    @property
    def name(self) -> str:
        return self.run.info.run_name or self.run_id

    def validation_steps(self) -> list[int]:
        return sorted({step for step, _ in self.histories.get("val/accuracy", [])})

    def artifact_json(self, path: str) -> dict[str, Any] | None:
        try:
            return json.loads(_artifact_text(self.client, self.run_id, path))
        except (OSError, MlflowException):  # not logged (a run stopped before its first validation)
            return None

    def best_validation_step(self) -> int | None:
        """The step ModelCheckpoint kept: the first best value of the monitored metric."""
        monitor = self.config.get("monitor") or {}
        history = self.histories.get(monitor.get("metric", ""), [])
        if not history:
            steps = self.validation_steps()
            return steps[-1] if steps else None
        sign = -1.0 if monitor.get("mode", "max") == "min" else 1.0
        best = max(history, key=lambda point: (sign * point[1], -point[0]))
        return best[0]

    def test_report(self) -> tuple[str, dict[str, Any]] | None:
        folders = [a.path for a in self.client.list_artifacts(self.run_id, "test") if a.is_dir]
        for folder in sorted(folders, reverse=True):
            report = self.artifact_json(f"{folder}/report.json")
            if report is not None:
                return folder, report
        return None

    def versions(self) -> tuple[dict[str, str], bool]:
        """Versions recorded with the run (True), else those of this environment (False)."""
        tags = self.run.data.tags
        recorded = {k[len(VERSION_TAG) :]: v for k, v in tags.items() if k.startswith(VERSION_TAG)}
        return (recorded, True) if recorded else (framework_versions(), False)


# ---- Markdown pieces --------------------------------------------------------------------------------
def results_table(record: RunRecord, names: Sequence[str], rules: Sequence[str]) -> str:
    """One row per validation, as the HF Trainer's "Training results" table, plus the full report."""
    header = ["Training Loss", "Epoch", "Step", "Validation Loss"]
    keys: list[tuple[str, int]] = []  # (metric name, digits)
    for name, key in zip(names, category_keys(names), strict=True):
        header += [f"{name} {label}" for _, label in FIELDS] + [f"{name} Support"]
        keys += [(f"val/{key}/{field}", 4) for field, _ in FIELDS] + [(f"val/{key}/support", 0)]
    header.append("Accuracy")
    keys.append(("val/accuracy", 4))
    for average, label in AVERAGES:
        header += [f"{label} {field_label}" for _, field_label in FIELDS]
        keys += [(f"val/{average}/{field}", 4) for field, _ in FIELDS]
    header += ["Wer", "Ter", *(f"Accuracy ({rule})" for rule in rules)]
    keys += [("val/wer", 4), ("val/ter", 4), *((f"val/rule/{rule}/accuracy", 4) for rule in rules)]

    h = record.histories
    rows = []
    for step in record.validation_steps():
        train_loss = value_at(h.get("train/loss", []), step, exact=False)
        epoch = value_at(h.get("epoch", []), step, exact=False)
        row: list[object] = [
            "No log" if train_loss is None else number(train_loss),
            "—" if epoch is None else int(epoch),
            step,
            number(value_at(h.get("val/loss", []), step)),
        ]
        row += [number(value_at(h.get(key, []), step), digits) for key, digits in keys]
        rows.append(row)
    return markdown_table(header, rows)


def _description(record: RunRecord) -> str:
    cfg = record.config
    model, data = cfg.get("model", {}), cfg.get("data", {})
    classes = (data.get("labels") or cfg.get("labels") or {}).get("classes", {})
    categories = data.get("categories", [])
    if model.get("pretrained"):
        origin = f"a fine-tuned version of `{model['pretrained']}` with a new CTC head"
    else:
        net = model.get("config") or {}
        origin = (
            f"a {net.get('model_type', 'wav2vec2')} CTC model trained from scratch (hidden size "
            f"{net.get('hidden_size', '?')}, {net.get('num_hidden_layers', '?')} layers)"
        )
    lines = [
        "## Model description",
        "",
        f"This model is {origin}. "
        + transcription_sentence({name: spec.get("tag") for name, spec in classes.items()}, categories)
        + f" The utterance's category is decided from the CTC output by the primary decision rule "
        f"`{model.get('primary_rule', '?')}`.",
        "",
        "## Training and evaluation data",
        "",
    ]
    for split, key in (("Training", "train_manifest"), ("Validation", "val_manifest"), ("Test", "test_manifest")):
        if data.get(key):
            lines.append(f"- {split} manifest: `{data[key]}`")
    manifests_from = data.get("manifests_from")
    if isinstance(manifests_from, Mapping):
        options = ", ".join(f"{k}={v}" for k, v in manifests_from.items() if not k.startswith("_") and k != "root")
        lines.append(f"- Built by `{manifests_from.get('_target_')}` ({options})")
    if not data.get("test_manifest"):
        lines.append("- No test manifest: the test evaluation ran on the validation set.")
    return "\n".join(lines) + "\n"


def _hyperparameters(record: RunRecord) -> str:
    cfg = record.config
    model, data, trainer = cfg.get("model", {}), cfg.get("data", {}), cfg.get("trainer", {})
    accumulate = trainer.get("accumulate_grad_batches", 1)
    devices = trainer.get("devices", 1)
    # Batches by seconds of audio (data.batch_seconds) replace the row count: the card names what was used.
    batching = [
        (f"{stage}_batch_seconds", data[f"{key}batch_seconds"])
        if data.get(f"{key}batch_seconds")
        else (f"{stage}_batch_size", data.get(f"{key}batch_size"))
        for stage, key in (("train", ""), ("eval", "eval_"))
    ]
    items: list[tuple[str, object]] = [
        ("learning_rate", model.get("lr")),
        *batching,
        ("seed", cfg.get("seed")),
        ("gradient_accumulation_steps", accumulate),
    ]
    if data.get("batch_seconds") and data.get("batch_quadratic_duration"):
        items.append(("batch_quadratic_duration", data["batch_quadratic_duration"]))
    if isinstance(devices, int) and isinstance(data.get("batch_size"), int) and not data.get("batch_seconds"):
        items += [("num_devices", devices), ("total_train_batch_size", data["batch_size"] * accumulate * devices)]
    else:
        items.append(("num_devices", devices))
    betas = model.get("betas", [0.9, 0.999])
    items += [
        (
            "optimizer",
            f"AdamW (torch) with betas=({betas[0]},{betas[1]}), epsilon={model.get('eps')} and "
            f"weight_decay={model.get('weight_decay')}",
        ),
        ("lr_scheduler_type", "linear"),
        ("lr_scheduler_warmup_steps", model.get("warmup_steps")),
    ]
    if (trainer.get("max_steps") or -1) > 0:
        items.append(("training_steps", trainer["max_steps"]))
    if (trainer.get("max_epochs") or -1) > 0:
        items.append(("num_epochs", trainer["max_epochs"]))
    items += [
        ("mixed_precision_training", trainer.get("precision")),
        ("gradient_clip_val", trainer.get("gradient_clip_val")),
        ("freeze_feature_encoder", model.get("freeze_feature_encoder")),
        ("eval_steps", f"{cfg.get('val_every_n_optimizer_steps')} optimizer steps"),
        ("primary_rule", model.get("primary_rule")),
    ]
    if (model.get("category_head_weight") or 0) > 0:
        items.append(("category_head_weight", model["category_head_weight"]))
    monitor = cfg.get("monitor") or {}
    items.append(("best_checkpoint_by", f"{monitor.get('metric')} ({monitor.get('mode')})"))
    lines = ["### Training hyperparameters", "", "The following hyperparameters were used during training:"]
    lines += [f"- {name}: {value}" for name, value in items]
    return "\n".join(lines) + "\n"


def _versions(record: RunRecord) -> str:
    versions, recorded = record.versions()
    lines = ["### Framework versions", ""]
    if not recorded:
        lines += ["Not recorded with the run; those of the environment that wrote this card:", ""]
    lines += [f"- {name} {value}" for name, value in versions.items()]
    return "\n".join(lines) + "\n"


def _rules(record: RunRecord) -> list[str]:
    prefix, suffix = "val/rule/", "/accuracy"
    found = {k[len(prefix) : -len(suffix)] for k in record.histories if k.startswith(prefix) and k.endswith(suffix)}
    order = ["vote", "posterior", "head"]
    return sorted(found, key=lambda rule: (order.index(rule) if rule in order else len(order), rule))


SUMMARY = (
    ("Loss", "loss"),
    ("Accuracy", "accuracy"),
    ("Macro F1", "macro_avg/f1"),
    ("Weighted F1", "weighted_avg/f1"),
    ("Wer", "wer"),
    ("Ter", "ter"),
)


def evaluations_of(record: RunRecord) -> list[tuple[str, str, dict[str, Any]]]:
    """(title, artifact folder, report.json) of the best validation and of the test, where logged."""
    evaluations: list[tuple[str, str, dict[str, Any]]] = []
    best_step = record.best_validation_step()
    if best_step is not None:
        folder = f"val/step_{best_step:06d}"
        best = record.artifact_json(f"{folder}/report.json")
        if best is not None:
            evaluations.append((f"Best validation (step {best_step}, by the monitored metric)", folder, best))
    test = record.test_report()
    if test is not None:
        best_note = f", step {best_step}" if best_step is not None else ""
        evaluations.append((f"Test (best checkpoint{best_note})", *test))
    return evaluations


def evaluation_predictions(record: RunRecord, folder: str) -> list[dict[str, Any]] | None:
    """The per-utterance records of an evaluation folder; None where they were not logged."""
    try:
        return parse_predictions(_artifact_text(record.client, record.run_id, f"{folder}/predictions.jsonl"))
    except (OSError, MlflowException):
        return None


def error_analysis_section(record: RunRecord, folder: str, report: Mapping[str, Any]) -> str:
    predictions = evaluation_predictions(record, folder)
    if not predictions:
        return "No per-utterance predictions were logged with this evaluation.\n"
    return error_analysis_markdown(report, predictions)


def build_card(client: MlflowClient, run_id: str) -> str:
    """The model card of run ``run_id`` as Markdown."""
    # The card downloads a few small JSON artifacts: a progress bar for each would clutter the training log.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    record = RunRecord.load(client, run_id)
    evaluations = evaluations_of(record)
    intro = f"MLflow run `{record.run_id}` (experiment `{record.config.get('experiment_name', '?')}`)."
    if evaluations:
        _, _, final = evaluations[-1]
        stage, metrics = final["stage"], final.get("metrics", {})
        evaluated = "test" if stage == "test" else "best validation"
        intro += f" It achieves the following results on the {evaluated} evaluation:\n"
        intro += "\n".join(f"- {label}: {number(metrics.get(f'{stage}/{key}'))}" for label, key in SUMMARY)
    parts = [
        front_matter(record.name, record.config.get("model", {}).get("pretrained")),
        f"# {record.name}\n",
        intro + "\n",
        _description(record),
    ]
    parts += ["## Training procedure\n", _hyperparameters(record), "### Training results\n"]
    if evaluations and record.validation_steps():
        _, _, report = evaluations[0]
        parts.append(
            "One row per validation. Per-category columns and the averages are the report of the decision rule "
            f"`{report['rule']}`; the last columns give each rule's accuracy. Training loss is the last one logged "
            "at or before the step.\n"
        )
        parts.append(results_table(record, report["categories"], _rules(record)))
    else:
        parts.append("No validation was logged.\n")
    if evaluations:
        parts.append("## Evaluation\n")
        for title, folder, report in evaluations:
            parts += [evaluation_section(title, report, folder), error_analysis_section(record, folder, report)]
    parts.append(_versions(record))
    return "\n".join(parts)


# ---- the callback -----------------------------------------------------------------------------------
class ModelCard(pl.Callback):
    """Records framework versions with the run, and logs ``model_card.md`` after fit and after test.

    Run after ``ValidationReport`` (listed after it in the callbacks config), so the test's
    ``report.json`` is already logged when the card is written at the end of the test.
    """

    def _mlflow(self, trainer: pl.Trainer) -> tuple[MlflowClient, str] | None:
        logger = mlflow_logger(trainer.loggers)
        if logger is None or not trainer.is_global_zero:
            return None
        return logger.experiment, logger.run_id

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        target = self._mlflow(trainer)
        if target is not None:
            client, run_id = target
            for name, value in framework_versions().items():
                client.set_tag(run_id, f"{VERSION_TAG}{name}", value)

    def _write(self, trainer: pl.Trainer) -> None:
        target = self._mlflow(trainer)
        if target is not None:
            client, run_id = target
            client.log_text(run_id, build_card(client, run_id), CARD_ARTIFACT)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer)
