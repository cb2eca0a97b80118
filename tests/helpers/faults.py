"""Faults put into a run (NaN batches) and what to compare after."""

from __future__ import annotations

from typing import ClassVar

import mlflow
import pytorch_lightning as pl
import torch


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


def run_of(cfg):
    client = mlflow.MlflowClient(cfg.logger.mlflow.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(cfg.experiment_name).experiment_id])
    return client, run


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[name], b[name]) for name in a)
