"""The optimisation every module of ours shares (fine-tuning and pretraining): AdamW, fused only where that is
valid, the HF Trainer's linear warm-up and decay, clipping after unscaling, and a schedule that advances only
with the steps the optimizer really took.

A module gets it by deriving from :class:`ScheduledAdamW` and saving ``lr``, ``betas``, ``eps``,
``weight_decay`` and ``warmup_steps`` among its hyperparameters.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn


def loss_scaler(trainer: pl.Trainer) -> torch.amp.GradScaler | None:
    """The ``16-mixed`` loss scaler Lightning steps the optimizer through, or None (fp32, bf16)."""
    return getattr(trainer.precision_plugin, "scaler", None)


def linear_warmup_decay(warmup: int, total: int):
    """The HF Trainer's linear schedule as a LambdaLR factor: 0 → 1 over ``warmup`` steps, then 1 → 0 at
    ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(warmup, 1)
        return max(0.0, (total - step) / max(total - warmup, 1))

    return factor


class ScheduledAdamW(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self._optimizer_stepped = False

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params,
            lr=self.hparams.lr,
            betas=tuple(self.hparams.betas),
            eps=self.hparams.eps,
            weight_decay=self.hparams.weight_decay,
            fused=self._fused_optimizer_is_valid(params),
        )
        optimizer.register_step_post_hook(self._remember_optimizer_step)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        # The HF Trainer's linear schedule, so the reference recipe's learning-rate curve is kept.
        schedule = linear_warmup_decay(min(self.hparams.warmup_steps, total), total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _fused_optimizer_is_valid(self, params: list[nn.Parameter]) -> bool:
        """One fused AdamW kernel (4x cheaper on CPU, the HF Trainer's default) wherever no loss scaler runs.

        A fused optimizer unscales fp16 gradients inside its own ``step``: Lightning then skips unscaling
        before ``on_before_optimizer_step``, so the non-finite guard and gradient clipping would see scaled
        gradients. Without a scaler (fp32, bf16) nothing is scaled, and :meth:`configure_gradient_clipping`
        clips before the fused step."""
        return loss_scaler(self.trainer) is None and all(p.device.type in ("cpu", "cuda") for p in params)

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm=None
    ) -> None:
        # Lightning's mixed-precision plugin refuses to clip for any fused optimizer, as if its gradients were
        # still scaled; without a loss scaler they are not, so the norm is clipped here (the HF Trainer's way).
        if gradient_clip_val and loss_scaler(self.trainer) is None and gradient_clip_algorithm in (None, "norm"):
            with_grads = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(with_grads, gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def _remember_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        # Called only when AdamW.step ran: the fp16 loss scaler skips the call on overflow. The non-finite
        # guard drops every gradient instead, which leaves AdamW nothing to update.
        self._optimizer_stepped = any(p.grad is not None for group in optimizer.param_groups for p in group["params"])

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        # The schedule advances with the steps the optimizer took, as in the HF Trainer: a step skipped for an
        # fp16 overflow or a non-finite loss does not move the warm-up on.
        if self._optimizer_stepped:
            scheduler.step()
        self._optimizer_stepped = False
