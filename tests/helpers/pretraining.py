"""Pretraining runs on the tests' corpus: their data overrides and their CSV metrics."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def data_overrides(corpus: dict[str, Path]) -> list[str]:
    return [
        f"data.train_manifest={corpus['train']}",
        f"data.val_manifest={corpus['validation']}",
        "data.manifests_from=null",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
    ]


def csv_metrics(cfg) -> pd.DataFrame:
    (path,) = Path(cfg.paths.output_dir).glob("csv/version_*/metrics.csv")
    return pd.read_csv(path)
