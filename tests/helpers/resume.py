"""Runs that crash and resume: their steps, a crash between checkpoints, what the store logged."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import mlflow
import pytorch_lightning as pl

STEPS = [
    "trainer.max_steps=16",
    "val_every_n_optimizer_steps=8",
    "checkpoint_every_n_optimizer_steps=5",
    "trainer.log_every_n_steps=1",
    # Bit-for-bit on CPU: deterministic kernels, fp32.
    "trainer.deterministic=true",
    "trainer.precision=32-true",
    "test_after_fit=false",
    "~callbacks.export_model",
    "~callbacks.model_card",
]


def last_logged_step(db: Path) -> int:
    """The highest train/loss step in a live SQLite store (read-only; -1 while there is none)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            row = con.execute("SELECT max(step) FROM metrics WHERE key = 'train/loss'").fetchone()
    except sqlite3.Error:  # not made yet, or locked by the writer
        return -1
    return -1 if row[0] is None else int(row[0])


def histories(root: Path, experiment: str = "demo") -> tuple[list, dict[str, list[tuple[int, float]]]]:
    client = mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    run_id = runs[0].info.run_id
    return runs, {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) for key in runs[0].data.metrics
    }


class CrashAt(pl.Callback):
    """Raises at the start of an optimizer step: a crash between two checkpoints."""

    def __init__(self, at_step: int):
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            raise RuntimeError(f"crash at step {self.at_step}")
