"""Skip optimizer steps whose loss or gradient is not finite; stop the run after too many in a row.

One NaN batch (a corrupt file the data check could not see, an fp16 overflow, a loss spike) would
otherwise write NaN into every weight and into AdamW's moments, and the rest of an overnight run
would train nothing. The step's gradients are dropped instead (set to ``None``): AdamW leaves a
parameter without a gradient untouched, moments and step count included, so the weights are exactly
those before the step. The learning-rate schedule and ``global_step`` still advance.

With gradient accumulation the check runs once per optimizer step, on the accumulated gradients and
on every micro-batch's loss; under DDP the gradients are already all-reduced and the decision is
reduced across processes, so every process skips the same steps.
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)


class NonFiniteTrainingError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient."""


class SkipNonFiniteSteps(pl.Callback):
    """Counts skipped steps as ``train/skipped_steps``; raises after ``max_consecutive`` in a row."""

    def __init__(self, max_consecutive: int = 10):
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be at least 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.skipped = 0
        self.consecutive = 0
        self._losses_finite: torch.Tensor | None = None

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        # Kept on the device: one host sync per optimizer step, in on_before_optimizer_step.
        finite = torch.isfinite(loss.detach()).all()
        self._losses_finite = finite if self._losses_finite is None else self._losses_finite & finite

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        finite = torch.isfinite(torch.nn.utils.get_total_norm(grads)) if grads else torch.tensor(True)
        if self._losses_finite is not None:
            finite = finite & self._losses_finite.to(finite.device)
        self._losses_finite = None
        if trainer.strategy.reduce_boolean_decision(bool(finite), all=True):
            self.consecutive = 0
        else:
            optimizer.zero_grad(set_to_none=True)
            self.skipped += 1
            self.consecutive += 1
            log.warning(
                "step %d: non-finite loss or gradient, optimizer step skipped (%d in a row, %d in all)",
                trainer.global_step,
                self.consecutive,
                self.skipped,
            )
        pl_module.log("train/skipped_steps", float(self.skipped), on_step=True, on_epoch=False)
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteTrainingError(
                f"training stopped at step {trainer.global_step}: {self.consecutive} optimizer steps in a row had a "
                f"non-finite loss or gradient ({self.skipped} skipped in all). The run has diverged or the data "
                "has bad samples: lower model.lr, check the data (python -m broadclass.data.check), or resume from "
                f"an earlier checkpoint. The limit is callbacks.skip_nonfinite.max_consecutive={self.max_consecutive}."
            )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = state_dict["skipped"]
        self.consecutive = state_dict["consecutive"]
