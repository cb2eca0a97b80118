"""LightningModule: wav2vec2 encoder + CTC head, optional utterance-category head, the report; and the trained
model's own loading (:meth:`BroadClassModule.restore_from`) and inference (:meth:`BroadClassModule.transcribe`)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric

from broadclass.data.labels import LabelMap
from broadclass.metrics import CategoryConfusion, RecognitionErrors, flatten_report
from broadclass.metrics.alignment import ClassConfusion, class_rate_metrics
from broadclass.metrics.durations import ClassDurations
from broadclass.model.decoding import RULES, category_posteriors, frame_seconds, greedy_segments, vote_share
from broadclass.model.encoder import build_network, enable_activation_checkpointing
from broadclass.model.evaluation import EvaluationResult
from broadclass.model.format import (
    METADATA_KEY,
    ModelLoadError,
    check_vocabulary,
    checkpoint_metadata,
    labels_from_metadata,
    read_checkpoint,
    read_exported,
    saved_tokens,
)
from broadclass.model.optimization import ScheduledAdamW
from broadclass.model.padding import padding_ignored
from broadclass.model.windows import infer_windows, plan_windows

# What a loaded model's training settings become for inference: the head-less exported network decides by the
# CTC posteriors, nothing is trained, and no hub or pretrained folder is read again.
INFERENCE_SETTINGS = {"pretrained": None, "freeze_feature_encoder": False, "gradient_checkpointing": False}


@dataclass
class TrainedModel:
    """A model ready for inference (eval mode, on the CPU) with the metadata it was saved with."""

    module: BroadClassModule
    metadata: dict[str, Any]
    source: str
    card: str | None = None  # an exported folder's README.md, kept when it is exported again

    @property
    def labels(self) -> LabelMap:
        return self.module.labels


class BroadClassModule(ScheduledAdamW):
    """Every argument but ``labels`` comes from the ``model`` config (conf/model/), where each is explained;
    ``sample_rate`` is the data's (``data.sample_rate``)."""

    def __init__(
        self,
        labels: LabelMap,
        pretrained: str | None,
        config: Mapping[str, Any] | None,
        sample_rate: int,
        freeze_feature_encoder: bool,
        lr: float,
        betas: Sequence[float],
        eps: float,
        weight_decay: float,
        warmup_steps: int,
        primary_rule: str,
        category_head_weight: float,
        ctc_loss_reduction: str,
        ctc_zero_infinity: bool,
        gradient_checkpointing: bool,
    ):
        super().__init__()
        if primary_rule not in RULES:
            raise ValueError(f"model.primary_rule must be one of {RULES}, got {primary_rule!r}")
        if primary_rule == "head" and category_head_weight <= 0:
            raise ValueError("model.primary_rule=head needs model.category_head_weight > 0")
        # Not logged as run params: the run logs its whole config (tracking/mlflow_run.py), once.
        self.save_hyperparameters(ignore=["labels"], logger=False)
        self.save_hyperparameters({"tokens": labels.tokens, "categories": labels.category_names}, logger=False)
        self.labels = labels
        self.sample_rate = sample_rate
        self.num_categories = len(labels.categories)
        # The network's own config records the reduction training uses (an export's config.json says so).
        self.net = build_network(
            len(labels.tokens),
            pretrained,
            {**(config or {}), "ctc_loss_reduction": ctc_loss_reduction, "ctc_zero_infinity": ctc_zero_infinity},
        )
        if freeze_feature_encoder:
            self.net.freeze_feature_encoder()
        if gradient_checkpointing:
            enable_activation_checkpointing(self.net)
        self.category_head = (
            nn.Linear(self.net.config.hidden_size, self.num_categories) if category_head_weight > 0 else None
        )
        self.register_buffer("token_category", torch.tensor(labels.token_category()), persistent=False)
        self.rules = [r for r in RULES if r != "head" or self.category_head is not None]
        self.confusion = nn.ModuleDict({r: CategoryConfusion(self.num_categories) for r in self.rules})
        self.errors = RecognitionErrors()
        class_names = list(labels.classes)
        class_tags = [spec["tag"] for spec in labels.classes.values()]
        self.class_confusion = ClassConfusion(
            class_names, class_tags, labels.category_names, [c.tag for c in labels.categories]
        )
        # The broad class (its number in the label config) of each token id; -1 for blank and word boundary.
        self.token_class_number = [class_tags.index(t) if t in class_tags else -1 for t in labels.token_class()]
        self.durations = ClassDurations(class_names, labels.category_names, self.frame_seconds)
        # Summed over utterances and across processes, so under DDP it is the single-process number.
        self.eval_loss = MeanMetric()
        self.predictions: list[dict[str, Any]] = []
        self.last_evaluation: EvaluationResult | None = None

    @property
    def frame_seconds(self) -> float:
        """Seconds of audio per encoder frame (20 ms for wav2vec2 at 16 kHz)."""
        return frame_seconds(self.net.config, self.sample_rate)

    # ---- loading -----------------------------------------------------------------------------------
    @classmethod
    def restore_from(cls, path: str | Path) -> TrainedModel:
        """A checkpoint file or an exported folder (an MLflow run or ``models:/`` URI:
        ``broadclass.tracking.run_model.load_model``), ready for inference."""
        path = Path(path)
        if path.is_file():
            return cls.from_checkpoint(path)
        if path.is_dir():
            return cls.from_exported(path)
        raise ModelLoadError(f"{path}: no such checkpoint file or exported folder")

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> TrainedModel:
        """A Lightning checkpoint, read without unpickling, rebuilt from its own network config."""
        checkpoint, metadata = read_checkpoint(path)
        labels = labels_from_metadata(metadata, f"checkpoint {path}")
        settings = {**checkpoint["hyper_parameters"], "config": metadata["network"], **INFERENCE_SETTINGS}
        module = cls._with_settings(labels, {**settings, "sample_rate": metadata["sample_rate"]})
        module.load_state_dict(checkpoint["state_dict"], strict=True)
        return TrainedModel(module.eval(), metadata, str(path))

    @classmethod
    def from_exported(cls, folder: str | Path) -> TrainedModel:
        """A folder written by ``broadclass.model.exported_folder`` (or a run's logged model): its network is a
        HuggingFace CTC model without the category head, loaded from its safetensors."""
        metadata, card = read_exported(folder)
        labels = labels_from_metadata(metadata, f"exported model {folder}")
        settings = {**metadata["hparams"], **INFERENCE_SETTINGS, "config": None, "category_head_weight": 0.0}
        if settings["primary_rule"] == "head":
            settings["primary_rule"] = "posterior"
        module = cls._with_settings(
            labels, {**settings, "pretrained": str(folder), "sample_rate": metadata["sample_rate"]}
        )
        return TrainedModel(module.eval(), metadata, str(folder), card)

    @classmethod
    def _setting_names(cls) -> list[str]:
        """The constructor's arguments but the labels: what the ``model`` config gives."""
        return [name for name in inspect.signature(cls.__init__).parameters if name not in ("self", "labels")]

    @classmethod
    def _with_settings(cls, labels: LabelMap, settings: Mapping[str, Any]) -> BroadClassModule:
        return cls(labels, **{name: settings[name] for name in cls._setting_names()})

    def training_settings(self) -> dict[str, Any]:
        """The constructor's arguments but the labels, as plain types (an export keeps them)."""
        return {name: self.hparams[name] for name in self._setting_names()}

    # ---- forward and loss ------------------------------------------------------------------------
    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        # The mask for every layout, and the layers that would still read padding made not to: an utterance
        # gets the same output alone and in any batch (broadclass.model.padding).
        with padding_ignored(self.net, attention_mask):
            hidden = self.net.base_model(input_values, attention_mask=attention_mask).last_hidden_state
        logits = self.net.lm_head(self.net.dropout(hidden))
        output_lengths = self.net._get_feat_extract_output_lengths(attention_mask.sum(-1)).long()
        out = {"logits": logits, "output_lengths": output_lengths}
        if self.category_head is not None:
            valid = (torch.arange(hidden.shape[1], device=hidden.device)[None, :] < output_lengths[:, None]).unsqueeze(
                -1
            )
            pooled = (hidden * valid).sum(1) / valid.sum(1).clamp_min(1)
            out["category_logits"] = self.category_head(pooled)
        return out

    def infer(self, input_values: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """The forward of every evaluation (validation, test, predict): in fp32 whatever the training precision.

        Under ``bf16-mixed`` or ``16-mixed`` autocast, 16-bit matmuls round differently with the batch's shape
        and with the CPU's or GPU's kernels (oneDNN with or without native bf16, cuBLAS), and a frame near a
        tie between two tokens can flip: an utterance's transcription would depend on its batch and on the
        machine. In fp32 the padding rules of :mod:`broadclass.model.padding` make it exactly the same alone
        and in any batch. Training keeps the configured precision."""
        with torch.autocast(input_values.device.type, enabled=False):
            return self(input_values, attention_mask)

    def _loss(self, out: dict[str, torch.Tensor], batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        log_probs = out["logits"].float().log_softmax(-1).transpose(0, 1)
        labels = batch["labels"]
        ctc = nn.functional.ctc_loss(
            log_probs,
            labels.masked_fill(labels < 0, 0),
            out["output_lengths"],
            batch["label_lengths"],
            blank=self.labels.blank_id,
            reduction=self.hparams.ctc_loss_reduction,
            zero_infinity=self.hparams.ctc_zero_infinity,
        )
        loss = ctc
        if self.category_head is not None:
            ce = nn.functional.cross_entropy(out["category_logits"].float(), batch["categories"])
            loss = ctc + self.hparams.category_head_weight * ce
        return loss, ctc

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self(batch["input_values"], batch["attention_mask"])
        loss, ctc = self._loss(out, batch)
        batch_size = len(batch["ids"])
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=batch_size)
        if self.category_head is not None:
            self.log("train/ctc_loss", ctc, on_step=True, on_epoch=False, batch_size=batch_size)
        return loss

    # ---- evaluation --------------------------------------------------------------------------------
    def category_scores(self, out: dict[str, torch.Tensor], decoded: list[list[int]]) -> dict[str, torch.Tensor]:
        """Per rule, each utterance's score of each category on the host, rows summing to 1 (0 for a vote
        without tokens): ``vote`` its share of the decoded tokens, ``posterior`` its share of the CTC posterior
        mass, ``head`` the head's probability. A rule decides the category of highest score."""
        scores = {
            "vote": vote_share(decoded, self.token_category.tolist(), self.num_categories),
            "posterior": category_posteriors(
                out["logits"], out["output_lengths"], self.token_category, self.num_categories
            ).cpu(),
        }
        if self.category_head is not None and "category_logits" in out:
            scores["head"] = out["category_logits"].float().softmax(dim=1).cpu()
        return scores

    def decode_outputs(self, out: dict[str, torch.Tensor]) -> tuple[list[list[tuple[int, int, int]]], dict]:
        """Each utterance's greedy CTC segments (token id, first frame, end frame), and each rule's category
        scores (:meth:`category_scores`)."""
        segments = greedy_segments(out["logits"], out["output_lengths"], self.labels.blank_id)
        decoded = [[token for token, _, _ in utterance] for utterance in segments]
        return segments, self.category_scores(out, decoded)

    def evaluate_batch(self, batch: dict) -> tuple[dict[str, torch.Tensor], list[list[tuple[int, int, int]]], dict]:
        """Score one batch with references (``labels``, ``categories``): the loss and every evaluation metric
        are updated and each utterance's prediction kept, until :meth:`evaluation_result`. Returns the
        network's outputs and their :meth:`decode_outputs`, for a caller that reports them too (predict)."""
        out = self.infer(batch["input_values"], batch["attention_mask"])
        loss, _ = self._loss(out, batch)
        self.eval_loss.update(loss.detach().float(), weight=len(batch["ids"]))
        segments, scores = self.decode_outputs(out)
        preds = {rule: score.argmax(dim=1) for rule, score in scores.items()}
        for rule, pred in preds.items():
            self.confusion[rule].update(pred.to(batch["categories"].device), batch["categories"])
        refs = [self.labels.decode(row[row >= 0].tolist()) for row in batch["labels"].cpu()]
        hyps = [self.labels.decode([token for token, _, _ in utterance]) for utterance in segments]
        self.errors.update(refs, hyps)
        categories = batch["categories"].tolist()
        self.class_confusion.update(refs, hyps, categories)
        self.durations.update(self.class_segments(segments), categories)
        # Kept per utterance for error analysis (and so the logged report can be recomputed); the segments and
        # posteriors are what the error browser (broadclass.tracking.error_browser) draws.
        host_preds = {rule: pred.tolist() for rule, pred in preds.items()}
        posteriors = scores["posterior"].tolist()
        seconds = self.frame_seconds
        for i, utt_id in enumerate(batch["ids"]):
            self.predictions.append(
                {
                    "id": utt_id,
                    "category": int(batch["categories"][i]),
                    "predicted": {rule: values[i] for rule, values in host_preds.items()},
                    "reference": " ".join(refs[i]),
                    "hypothesis": " ".join(hyps[i]),
                    "speaker": batch["speakers"][i] if "speakers" in batch else None,
                    "segments": [[round(a * seconds, 4), round(b * seconds, 4)] for _, a, b in segments[i]],
                    "posteriors": [round(p, 4) for p in posteriors[i]],
                }
            )
        return out, segments, scores

    def class_segments(self, segments: list[list[tuple[int, int, int]]]) -> list[list[tuple[int, int]]]:
        """(class number, frames) of each decoded class token (word boundaries left out)."""
        classes = self.token_class_number
        return [[(classes[t], end - start) for t, start, end in utterance if classes[t] >= 0] for utterance in segments]

    def evaluation_result(self, stage: str, step: int, epoch: int) -> EvaluationResult:
        """What the batches scored since the last call (:meth:`evaluate_batch`) add up to; the metrics restart."""
        rule = self.hparams.primary_rule
        rule_reports = {other: self.confusion[other].report() for other in self.rules}
        confusion = self.confusion[rule].compute()
        errors = {k: float(v) for k, v in self.errors.compute().items()}
        metrics = flatten_report(rule_reports[rule], self.labels.category_names, prefix=stage)
        metrics.update({f"{stage}/{name}": value for name, value in errors.items()})
        metrics[f"{stage}/loss"] = float(self.eval_loss.compute())
        for other, other_report in rule_reports.items():
            metrics[f"{stage}/rule/{other}/accuracy"] = other_report["accuracy"]
        class_confusion = self.class_confusion.compute()
        metrics.update(class_rate_metrics(class_confusion, stage))
        result = EvaluationResult(
            stage=stage,
            step=step,
            epoch=epoch,
            rule=rule,
            categories=self.labels.category_names,
            report=rule_reports[rule],
            rule_reports=rule_reports,
            confusion=confusion.tolist(),
            errors=errors,
            metrics=metrics,
            class_confusion=class_confusion,
            durations=self.durations.compute(),
            predictions=self._all_predictions(),
        )
        self.predictions = []
        for metric in (*self.confusion.values(), self.errors, self.eval_loss, self.class_confusion, self.durations):
            metric.reset()
        return result

    def _evaluation_epoch_end(self, stage: str) -> None:
        self.last_evaluation = self.evaluation_result(stage, int(self.global_step), int(self.current_epoch))
        # Logged at the optimizer step: Lightning's default logger step during validation is one less (it
        # counts the step after validation has run); a logged "step" is the step loggers use instead.
        position = {"step": float(self.global_step), "epoch": float(self.current_epoch)}
        self.log_dict({**self.last_evaluation.metrics, **position}, on_step=False, on_epoch=True)

    def _all_predictions(self) -> list[dict[str, Any]]:
        """Every process's per-utterance predictions (each process evaluates its share of the batches)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return self.predictions
        gathered: list[list[dict[str, Any]] | None] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, self.predictions)
        return [prediction for part in gathered for prediction in part]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluate_batch(batch)

    def on_validation_epoch_end(self) -> None:
        self._evaluation_epoch_end("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluate_batch(batch)

    def on_test_epoch_end(self) -> None:
        self._evaluation_epoch_end("test")

    # ---- inference ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def transcribe(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Each utterance of a padded batch (the datamodule's or predict's collate) transcribed and decided:
        its ``duration``, ``tokens``, ``text``, ``classes``, timed ``segments``, each rule's ``category`` with
        its confidence, and the ``posteriors``. A batch with references (``labels``, ``categories``) is scored
        as validation scores it: the evaluation metrics are updated (:meth:`evaluation_result` reads them)."""
        on_device = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        if "labels" in batch:
            out, segments, scores = self.evaluate_batch(on_device)
        else:
            out = self.infer(on_device["input_values"], on_device["attention_mask"])
            segments, scores = self.decode_outputs(out)
        return self._records(segments, scores, batch["attention_mask"].sum(dim=1).tolist())

    @torch.inference_mode()
    def transcribe_recording(
        self,
        read: Callable[[int, int], Any],
        total: int,
        window_seconds: float,
        context_seconds: float,
        batches: Callable[[list[float]], list[list[int]]],
    ) -> dict[str, Any]:
        """The record of one recording of ``total`` samples transcribed in overlapping windows
        (:mod:`broadclass.model.windows`: ``read(start, stop)`` gives its samples), their outputs stitched,
        decoded and decided as one utterance, plus ``windows``: each window's span of the timeline with the
        categories decided over it. ``batches`` groups the windows (their seconds) into batches."""
        stride = round(self.frame_seconds * self.sample_rate)
        windows = plan_windows(
            total,
            round(window_seconds * self.sample_rate / stride) * stride,
            round(context_seconds * self.sample_rate / stride) * stride,
            stride,
            lambda n: int(self.net._get_feat_extract_output_lengths(torch.tensor(n))),
        )
        stitched = infer_windows(self, read, windows, batches([(w.stop - w.start) / self.sample_rate for w in windows]))
        out = stitched.as_forward_output()
        segments, scores = self.decode_outputs(out)
        (record,) = self._records(segments, scores, [total])
        spans = []
        for n, window in enumerate(windows):
            part = {"logits": out["logits"][:, window.keep_start : window.keep_stop]}
            part["output_lengths"] = torch.tensor([window.keep_stop - window.keep_start])
            if stitched.head_probabilities is not None:
                part["category_logits"] = stitched.head_probabilities[n].log()[None]
            decoded = [[token for token, start, _ in segments[0] if window.keep_start <= start < window.keep_stop]]
            spans.append(
                {
                    "start": round(window.keep_start * self.frame_seconds, 4),
                    "end": round(window.keep_stop * self.frame_seconds, 4),
                    "category": self._decisions(self.category_scores(part, decoded))[0],
                }
            )
        record["windows"] = spans
        return record

    def _decisions(self, scores: dict[str, torch.Tensor]) -> list[dict[str, dict[str, Any]]]:
        """Per utterance, each rule's category (its highest score) with that score as its confidence."""
        names = self.labels.category_names
        decisions = []
        for row in range(len(scores["posterior"])):
            picked = {rule: int(score[row].argmax()) for rule, score in scores.items()}
            decisions.append(
                {
                    rule: {"name": names[k], "confidence": round(float(scores[rule][row, k]), 4)}
                    for rule, k in picked.items()
                }
            )
        return decisions

    def _records(
        self, segments: list[list[tuple[int, int, int]]], scores: dict[str, torch.Tensor], samples: list[int]
    ) -> list[dict[str, Any]]:
        labels, seconds = self.labels, self.frame_seconds
        token_class = labels.token_class()
        records = []
        for row, decisions in enumerate(self._decisions(scores)):
            ids = [token for token, _, _ in segments[row]]
            tokens = labels.decode(ids)
            records.append(
                {
                    "duration": round(samples[row] / self.sample_rate, 4),
                    "tokens": tokens,
                    "text": " ".join(tokens),
                    "classes": [token_class[i] for i in ids],
                    "segments": [
                        {"token": tokens[n], "start": round(start * seconds, 4), "end": round(end * seconds, 4)}
                        for n, (_, start, end) in enumerate(segments[row])
                    ],
                    "category": decisions,
                    "posteriors": {
                        name: round(float(v), 4)
                        for name, v in zip(labels.category_names, scores["posterior"][row], strict=True)
                    },
                }
            )
        return records

    # ---- checkpoints -------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # What inference needs without the training config (see broadclass.model.format).
        checkpoint[METADATA_KEY] = checkpoint_metadata(
            self.labels,
            self.net.config,
            self.sample_rate,
            self.last_evaluation.summary() if self.last_evaluation else None,
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Weights trained for other tokens (categories reordered, another label config) would load
        # without a size error when the vocabulary has the same length, and mislabel every output.
        check_vocabulary(self.labels.tokens, saved_tokens(checkpoint), "the checkpoint being restored")
