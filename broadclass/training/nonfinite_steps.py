"""Skip optimizer steps whose loss or gradient is not finite, count them, and stop the run after too many in a
row (:class:`SkipNonFiniteSteps`, built from ``conf/callbacks/run.yaml``).

Two kinds of bad step, told apart and counted apart:

- **Overflow** (``train/overflow_steps``): under ``16-mixed`` the loss is multiplied by the loss scaler's
  scale before backward, and a finite loss can still give ``inf`` scaled gradients. That is the scaler's
  normal working: it skips the optimizer step and halves its scale (``train/loss_scale``). Overflows are
  routine at the start of fine-tuning (the scale starts at 2^16), so they never stop the run.
- **Non-finite** (``train/skipped_steps``): the loss itself is not finite, or, without a scaler, the
  gradient is not. One such batch (a corrupt file the data check could not see, a loss spike) would write
  NaN into every weight and into AdamW's moments. The step's gradients are dropped instead (set to
  ``None``): AdamW leaves a parameter without a gradient untouched, moments and step count included.
  ``max_consecutive`` of these in a row stop the run with a clear error.

Either way the weights are exactly those before the step, ``global_step`` advances, and the learning-rate
schedule does not (``BroadClassModule.lr_scheduler_step``, as the HF Trainer does on skipped steps).

The check runs in ``on_before_optimizer_step``, after Lightning has unscaled the gradients (it does so for
every optimizer that does not unscale inside its own ``step``; the module never builds a fused optimizer
together with a scaler), so the gradients are in true units. With gradient accumulation it runs once per
optimizer step, on the accumulated gradients and on every micro-batch's loss; under DDP the gradients are
already all-reduced and the decision is reduced across processes, so every process skips the same steps.
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch

from broadclass.model.optimization import loss_scaler

log = logging.getLogger(__name__)


class NonFiniteTrainingError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss (or, without a loss scaler, gradient)."""


class SkipNonFiniteSteps(pl.Callback):
    """Logs ``train/skipped_steps``, ``train/overflow_steps`` and (under a scaler) ``train/loss_scale``."""

    def __init__(self, max_consecutive: int = 10):
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be at least 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.skipped = 0
        self.overflows = 0
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
        grads_finite = torch.isfinite(torch.nn.utils.get_total_norm(grads)) if grads else torch.tensor(True)
        losses_finite = self._losses_finite if self._losses_finite is not None else torch.tensor(True)
        self._losses_finite = None
        scaler = loss_scaler(trainer)
        losses_ok = trainer.strategy.reduce_boolean_decision(bool(losses_finite), all=True)
        grads_ok = trainer.strategy.reduce_boolean_decision(bool(grads_finite), all=True)
        if scaler is not None:
            pl_module.log("train/loss_scale", float(scaler.get_scale()), on_step=True, on_epoch=False)
        if losses_ok and (grads_ok or scaler is not None):
            self.consecutive = 0
            if not grads_ok:  # the scaler skips this step and lowers its scale: its job, not a failure
                self.overflows += 1
                log.info("step %d: fp16 gradient overflow, the loss scaler skips it", trainer.global_step)
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
        pl_module.log("train/overflow_steps", float(self.overflows), on_step=True, on_epoch=False)
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteTrainingError(
                f"training stopped at step {trainer.global_step}: {self.consecutive} optimizer steps in a row had a "
                f"non-finite loss or gradient ({self.skipped} skipped in all). The run has diverged or the data "
                "has bad samples: lower model.lr, check the data (python -m broadclass.check), or resume from "
                f"an earlier checkpoint. The limit is callbacks.skip_nonfinite.max_consecutive={self.max_consecutive}."
            )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "overflows": self.overflows, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = state_dict["skipped"]
        self.overflows = state_dict["overflows"]
        self.consecutive = state_dict["consecutive"]
