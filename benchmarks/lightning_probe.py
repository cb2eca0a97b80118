"""The probe in our pipeline: a Lightning callback added to the real ``broadclass.train`` run by a Hydra
override (``+callbacks.throughput_probe._target_=benchmarks.lightning_probe.ThroughputProbe``)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

from benchmarks.probe import Record
from broadclass.model.optimization import loss_scaler


class ThroughputProbe(pl.Callback):
    """Records step ends, audio seconds per step (from the manifest durations of the batch's utterance
    ids: no device sync), validation spans and peak memory into ``out`` when the fit ends."""

    def __init__(self, out: str, warmup_steps: int, steps: int):
        self.out = out
        self.record = Record("ours", warmup_steps, steps)
        self.durations: dict[str, float] = {}
        self.last_step = 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dataset = trainer.datamodule.datasets["train"]
        self.durations = {row["id"]: row["duration"] for row in dataset.rows}
        self.last_step = trainer.global_step
        self.record.start_fit(loss_scaler(trainer))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.record.add_audio(sum(self.durations[utt] for utt in batch["ids"]))
        if trainer.global_step > self.last_step:
            self.last_step = trainer.global_step
            self.record.end_step()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.record.start_validation()

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.record.add_validation_utterances(len(batch["ids"]))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.record.end_validation()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.record.end_fit(self.out, loss_scaler(trainer))


class PhaseProfile(pl.Callback):
    """Adds our own phases to the Lightning profiler's table (``trainer.profiler=simple``), which times
    data loading, training/validation steps, backward, optimizer step and callback hooks itself: the forward
    pass, the loss, greedy decoding, the category decisions, the metric updates (the error analysis's class
    confusion and durations included), the metric computation and the loggers' calls (MLflow), each split by
    stage (train/validate)."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        import broadclass.model.module as module

        def timed(name: str, fn):
            def wrapper(*args, **kwargs):
                with trainer.profiler.profile(f"[phase] {name} ({trainer.state.stage})"):
                    return fn(*args, **kwargs)

            return wrapper

        pl_module.forward = timed("forward", pl_module.forward)
        pl_module._loss = timed("loss", pl_module._loss)
        pl_module.category_scores = timed("category decisions", pl_module.category_scores)
        module.greedy_segments = timed("greedy decode", module.greedy_segments)
        pl_module.errors.update = timed("WER/TER update", pl_module.errors.update)
        pl_module.class_confusion.update = timed("class confusion update", pl_module.class_confusion.update)
        pl_module.durations.update = timed("durations update", pl_module.durations.update)
        pl_module.evaluation_result = timed("evaluation result (metric compute)", pl_module.evaluation_result)
        for metric in pl_module.confusion.values():
            metric.update = timed("confusion update", metric.update)
        for logger in trainer.loggers:
            logger.log_metrics = timed(f"{type(logger).__name__}.log_metrics", logger.log_metrics)
