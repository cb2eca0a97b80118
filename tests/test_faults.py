"""Training faults: a NaN batch skips its optimizer step without touching the weights; many in a row stop the run."""

from __future__ import annotations

from typing import ClassVar

import pytest
import pytorch_lightning as pl
import torch

from broadclass.train import train
from broadclass.training.nonfinite_steps import NonFiniteTrainingError
from tests.helpers.faults import PoisonBatches, run_of, same


def poisoned(train_config, batches: list[int], *overrides: str):
    return train_config(
        "+callbacks.poison._target_=tests.helpers.faults.PoisonBatches",
        f"+callbacks.poison.batches={batches}",
        "trainer.log_every_n_steps=1",
        "model.warmup_steps=0",  # the first step at full learning rate: it must move the weights
        "test_after_fit=false",
        *overrides,
    )


def test_a_nan_micro_batch_skips_its_accumulated_step_and_leaves_the_weights_untouched(train_config):
    # Accumulation 2: optimizer step 1 is batches 2 and 3; batch 3 is poisoned after batch 2's gradient
    # is already accumulated, so the whole step must go.
    cfg = poisoned(
        train_config, [3], "trainer.accumulate_grad_batches=2", "trainer.max_steps=3", "val_every_n_optimizer_steps=3"
    )
    train(cfg)
    weights = PoisonBatches.weights
    assert not same(weights[0], weights[2])  # a clean step moves the weights (the check can fail)
    assert same(weights[2], weights[4])  # the poisoned step did not, not even through AdamW's moments
    assert not same(weights[4], weights[-1])  # and training went on
    assert all(torch.isfinite(w).all() for w in weights[-1].values())
    client, run = run_of(cfg)
    skipped = client.get_metric_history(run.info.run_id, "train/skipped_steps")
    assert [(m.step, m.value) for m in skipped] == [(0, 0.0), (1, 1.0), (2, 1.0)]
    assert run.info.status == "FINISHED"


def test_too_many_non_finite_steps_in_a_row_stop_the_run_with_a_clear_message(train_config):
    cfg = poisoned(
        train_config,
        list(range(2, 6)),
        "callbacks.skip_nonfinite.max_consecutive=3",
        "trainer.max_steps=20",
        "val_every_n_optimizer_steps=20",
    )
    with pytest.raises(NonFiniteTrainingError, match=r"at step 4: 3 optimizer steps in a row .*max_consecutive=3"):
        train(cfg)
    client, run = run_of(cfg)
    assert run.info.status == "FAILED"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "train/skipped_steps")][-1] == 2.0


class PoisonGradients(pl.Callback):
    """After the backward of the listed training batches, one gradient entry becomes inf (the loss stays finite);
    keeps each batch's loss and, before every batch, the weights and AdamW's state (step count and moments)."""

    before: ClassVar[dict[int, tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]]] = {}
    losses: ClassVar[dict[int, float]] = {}

    def __init__(self, batches: list[int]):
        self.batches = set(batches)
        self.batch_idx = -1
        PoisonGradients.before, PoisonGradients.losses = {}, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batch_idx = batch_idx
        (optimizer,) = trainer.optimizers
        moments = [
            {key: value.detach().clone() for key, value in optimizer.state[p].items()}
            for group in optimizer.param_groups
            for p in group["params"]
        ]
        PoisonGradients.before[batch_idx] = ({n: p.detach().clone() for n, p in pl_module.named_parameters()}, moments)

    def on_after_backward(self, trainer, pl_module) -> None:
        if self.batch_idx in self.batches:
            weight = next(p for p in pl_module.parameters() if p.grad is not None)
            weight.grad.view(-1)[0] = float("inf")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        PoisonGradients.losses[batch_idx] = float(outputs["loss"])


def test_a_non_finite_gradient_with_a_finite_loss_and_no_scaler_skips_the_step(train_config):
    cfg = train_config(
        "+callbacks.poison._target_=tests.test_faults.PoisonGradients",
        "+callbacks.poison.batches=[1]",
        "trainer.log_every_n_steps=1",
        "model.warmup_steps=0",  # the first step at full learning rate: it must move the weights
        "test_after_fit=false",
        "trainer.max_steps=3",
        "val_every_n_optimizer_steps=3",
    )
    assert cfg.trainer.precision == "bf16-mixed"  # no loss scaler: the guard alone must catch the gradient
    train(cfg)
    before, losses = PoisonGradients.before, PoisonGradients.losses
    assert all(torch.isfinite(torch.tensor(loss)) for loss in losses.values())  # only the gradient was bad
    (weights_0, _), (weights_1, moments_1), (weights_2, moments_2) = before[0], before[1], before[2]
    assert not same(weights_0, weights_1)  # a clean step moves the weights (the check can fail)
    assert same(weights_1, weights_2)  # the poisoned step did not
    # … and left AdamW as it was: the same step count and moments for every parameter.
    assert len(moments_1) == len(moments_2) and all(m["step"] == 1 for m in moments_1 if m)
    assert all(a.keys() == b.keys() and same(a, b) for a, b in zip(moments_1, moments_2, strict=True))
    client, run = run_of(cfg)
    skipped = client.get_metric_history(run.info.run_id, "train/skipped_steps")
    assert [(m.step, m.value) for m in skipped] == [(0, 0.0), (1, 1.0), (2, 1.0)]
    # The schedule did not advance for the skipped step either: constant rate after no warm-up is (3 - s) / 3.
    rates = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "lr-AdamW")]
    assert [value for _, value in rates[:3]] == pytest.approx(
        [cfg.model.lr, cfg.model.lr * 2 / 3, cfg.model.lr * 2 / 3]
    )
