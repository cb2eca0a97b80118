"""What a training run left: the session's trained run, and a callback that records a run that logs nothing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytorch_lightning as pl
from omegaconf import DictConfig


@dataclass
class TrainedRun:
    config: DictConfig
    checkpoint: Path  # the best (and only validated) checkpoint
    run_id: str
    tracking_uri: str


class FitRecorder(pl.Callback):
    """A Lightning callback (``+callbacks.recorder._target_=tests.helpers.runs.FitRecorder``) that keeps what a
    run did, for tests of runs that log nothing (``fast_dev_run``): the network's weights when training
    started and ended, each training batch's loss, the optimizer steps taken and the last evaluation."""

    last: ClassVar[FitRecorder | None] = None

    def __init__(self) -> None:
        self.before: dict | None = None
        self.after: dict | None = None
        self.losses: list[float] = []
        self.steps = 0
        self.evaluations: list = []
        FitRecorder.last = self

    @staticmethod
    def _weights(module) -> dict:
        return {key: value.detach().clone() for key, value in module.net.state_dict().items()}

    def on_train_start(self, trainer, module) -> None:
        self.before = self._weights(module)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))

    def on_validation_end(self, trainer, module) -> None:
        self.evaluations.append(module.last_evaluation)

    def on_train_end(self, trainer, module) -> None:
        self.after = self._weights(module)
        self.steps = trainer.global_step
