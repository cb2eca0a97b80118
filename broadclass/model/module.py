"""LightningModule: wav2vec2 encoder + CTC head, optional utterance-category head, the report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric

from broadclass.data.labels import LabelMap
from broadclass.metrics import CategoryConfusion, RecognitionErrors, flatten_report
from broadclass.metrics.alignment import ClassConfusion, class_rate_metrics
from broadclass.metrics.durations import ClassDurations
from broadclass.model.checkpoint import METADATA_KEY, check_vocabulary, checkpoint_metadata, saved_tokens
from broadclass.model.decoding import RULES, category_posteriors, frame_seconds, greedy_segments, vote
from broadclass.model.encoder import build_network, enable_activation_checkpointing
from broadclass.model.evaluation import EvaluationResult
from broadclass.model.optimization import ScheduledAdamW
from broadclass.model.padding import padding_ignored

# wav2vec2 encoders take 16 kHz audio (the data module resamples to it): frame times are counted at this rate.
SAMPLE_RATE = 16_000


class BroadClassModule(ScheduledAdamW):
    def __init__(
        self,
        labels: LabelMap,
        pretrained: str | None = None,
        config: Mapping[str, Any] | None = None,
        freeze_feature_encoder: bool = True,
        lr: float = 3e-4,
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        warmup_steps: int = 200,
        primary_rule: str = "posterior",
        category_head_weight: float = 0.0,
        ctc_loss_reduction: str = "mean",
        gradient_checkpointing: bool = False,
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
        self.num_categories = len(labels.categories)
        # The network's own config records the reduction training uses (an export's config.json says so).
        self.net = build_network(
            len(labels.tokens), pretrained, {**(config or {}), "ctc_loss_reduction": ctc_loss_reduction}
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
        self.durations = ClassDurations(class_names, labels.category_names, frame_seconds(self.net.config, SAMPLE_RATE))
        # Summed over utterances and across processes, so under DDP it is the single-process number.
        self.eval_loss = MeanMetric()
        self.predictions: list[dict[str, Any]] = []
        self.last_evaluation: EvaluationResult | None = None

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
            zero_infinity=True,
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
    def predict_categories(self, out: dict[str, torch.Tensor], decoded: list[list[int]]) -> dict[str, torch.Tensor]:
        """Category decisions under every available rule, with the posterior share behind each."""
        posterior = category_posteriors(out["logits"], out["output_lengths"], self.token_category, self.num_categories)
        preds = {
            "vote": vote(decoded, self.token_category.tolist(), self.num_categories).to(posterior.device),
            "posterior": posterior.argmax(dim=1),
        }
        if self.category_head is not None:
            preds["head"] = out["category_logits"].argmax(dim=1)
        return preds

    def decode_outputs(self, out: dict[str, torch.Tensor]) -> tuple[list[list[tuple[int, int, int]]], dict]:
        """Each utterance's greedy CTC segments (token id, first frame, end frame), and the category decisions
        under every rule (:meth:`predict_categories`)."""
        segments = greedy_segments(out["logits"], out["output_lengths"], self.labels.blank_id)
        decoded = [[token for token, _, _ in utterance] for utterance in segments]
        return segments, self.predict_categories(out, decoded)

    def evaluate_batch(self, batch: dict) -> tuple[dict[str, torch.Tensor], list[list[tuple[int, int, int]]], dict]:
        """Score one batch with references (``labels``, ``categories``): the loss and every evaluation metric
        are updated and each utterance's prediction kept, until :meth:`evaluation_result`. Returns the
        network's outputs and their :meth:`decode_outputs`, for a caller that reports them too (predict)."""
        out = self.infer(batch["input_values"], batch["attention_mask"])
        loss, _ = self._loss(out, batch)
        self.eval_loss.update(loss.detach().float(), weight=len(batch["ids"]))
        segments, preds = self.decode_outputs(out)
        for rule, pred in preds.items():
            self.confusion[rule].update(pred, batch["categories"])
        refs = [self.labels.decode(row[row >= 0].tolist()) for row in batch["labels"].cpu()]
        hyps = [self.labels.decode([token for token, _, _ in utterance]) for utterance in segments]
        self.errors.update(refs, hyps)
        categories = batch["categories"].tolist()
        self.class_confusion.update(refs, hyps, categories)
        self.durations.update(self.class_segments(segments), categories)
        # Kept per utterance for error analysis (and so the logged report can be recomputed); the segments and
        # posteriors are what the error browser (broadclass.tracking.error_browser) draws.
        host_preds = {rule: pred.tolist() for rule, pred in preds.items()}
        posteriors = category_posteriors(
            out["logits"], out["output_lengths"], self.token_category, self.num_categories
        ).tolist()
        seconds = frame_seconds(self.net.config, SAMPLE_RATE)
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
        return out, segments, preds

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

    # ---- checkpoints -------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # What inference needs without the training config (see broadclass.model.checkpoint).
        checkpoint[METADATA_KEY] = checkpoint_metadata(
            self.labels, self.net.config, self.last_evaluation.summary() if self.last_evaluation else None
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Weights trained for other tokens (categories reordered, another label config) would load
        # without a size error when the vocabulary has the same length, and mislabel every output.
        check_vocabulary(self.labels.tokens, saved_tokens(checkpoint), "the checkpoint being restored")
