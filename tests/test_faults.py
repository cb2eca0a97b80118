"""Training faults: a NaN batch skips its optimizer step without touching the weights; many in a row stop the run."""

from __future__ import annotations

from typing import ClassVar

import mlflow
import pytest
import pytorch_lightning as pl
import torch

from broadclass.train import train
from broadclass.training.callbacks import NonFiniteTrainingError


class PoisonBatches(pl.Callback):
    """Fills the audio of the listed training batches with NaN; keeps the weights before every batch."""

    weights: ClassVar[dict[int, dict[str, torch.Tensor]]] = {}

    def __init__(self, batches: list[int]):
        self.batches = set(batches)
        PoisonBatches.weights = {}

    @staticmethod
    def _snapshot(pl_module: pl.LightningModule) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in pl_module.named_parameters()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        PoisonBatches.weights[batch_idx] = self._snapshot(pl_module)
        if batch_idx in self.batches:
            batch["input_values"].fill_(float("nan"))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        PoisonBatches.weights[-1] = self._snapshot(pl_module)


def poisoned(train_config, batches: list[int], *overrides: str):
    return train_config(
        "+callbacks.poison._target_=tests.test_faults.PoisonBatches",
        f"+callbacks.poison.batches={batches}",
        "trainer.log_every_n_steps=1",
        "model.warmup_steps=0",  # the first step at full learning rate: it must move the weights
        "test_after_fit=false",
        *overrides,
    )


def run_of(cfg):
    client = mlflow.MlflowClient(cfg.logger.mlflow.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(cfg.experiment_name).experiment_id])
    return client, run


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[name], b[name]) for name in a)


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
