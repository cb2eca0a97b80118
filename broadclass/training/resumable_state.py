"""What a run keeps so that it resumes where it stopped (``training/resume.py`` decides where it resumes).

* :class:`BestAndLastCheckpoint`: the best checkpoint, and ``last.ckpt`` after every validation.
* :class:`RestoreRandomState`: the random generators in every checkpoint, restored for the first resumed step.

Both are built from ``conf/callbacks/run.yaml``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch


class RestoreRandomState(pl.Callback):
    """Random generator states in every checkpoint, restored right before the first resumed step.

    Restored at that point rather than on load: between loading and the first step Lightning builds
    loaders and the model, which an uninterrupted run did not do at that point of its random streams.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        kind, keys, position, has_gauss, gauss = np.random.get_state()
        return {
            "python": random.getstate(),
            # Plain types, not the ndarray get_state() gives: checkpoints must load with weights_only=True.
            "numpy": (kind, keys.tolist(), position, has_gauss, gauss),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class BestAndLastCheckpoint(pl.callbacks.ModelCheckpoint):
    """The best checkpoint(s), and ``last.ckpt`` rewritten after every validation.

    Lightning rewrites ``last.ckpt`` only at a validation that also saved a top-k checkpoint: once the
    monitored metric stops improving, ``last`` would stay at the best step, and a crash would send the
    run back there.
    """

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def kept_checkpoint(trainer: pl.Trainer) -> str:
    """The checkpoint a finished fit stands for: the best one, else the last; "" when none was saved."""
    checkpoints = trainer.checkpoint_callback
    return (checkpoints.best_model_path or checkpoints.last_model_path) if checkpoints is not None else ""
