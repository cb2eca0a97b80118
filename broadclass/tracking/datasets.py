"""The run's manifests as MLflow dataset inputs: the UI's Datasets column and the run's Datasets section.

Each manifest is one dataset, named ``<folder>/<file>`` (``voice/train``), with the manifest's path as
its source, the SHA-256 of the file (first 12 hex digits) as its digest, and a profile of the rows the
run used (after the data check): their number, hours of audio and count per category. Its context tag
says how the run used it: ``training``, ``validation`` or ``test``.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytorch_lightning as pl

from broadclass.tracking.mlflow_run import mlflow_logger

if TYPE_CHECKING:
    from mlflow.entities import Dataset

# The datamodule's split names, and the context MLflow shows for each.
CONTEXTS = {"train": "training", "validation": "validation", "test": "test"}
DIGEST_LENGTH = 12


def file_digest(path: str | Path) -> str:
    sha = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()[:DIGEST_LENGTH]


def manifest_dataset(path: str | Path, rows: Sequence[Mapping], categories: Sequence[str]) -> Dataset:
    """The MLflow dataset entity of one manifest and the rows of it that a run used."""
    from mlflow.entities import Dataset

    path = Path(path).resolve()
    counts = Counter(row["category"] for row in rows)
    profile = {
        "rows": len(rows),
        "hours": round(sum(float(row["duration"]) for row in rows) / 3600, 4),
        "categories": {name: counts.get(name, 0) for name in categories},
    }
    return Dataset(
        name=f"{path.parent.name}/{path.stem}",
        digest=file_digest(path),
        source_type="local",  # MLflow's source type of a local file (LocalArtifactDatasetSource)
        source=json.dumps({"uri": str(path)}),
        profile=json.dumps(profile, ensure_ascii=False),
    )


class LogDatasets(pl.Callback):
    """Logs the train and validation manifests when fit starts, the test manifest when a test starts.

    Does nothing without an MLflow logger (MLflow is imported only then: ``logger=csv`` runs without it).
    """

    def _log(self, trainer: pl.Trainer, splits: Sequence[str]) -> None:
        logger = mlflow_logger(trainer.loggers)
        datamodule = trainer.datamodule
        if logger is None or not trainer.is_global_zero or datamodule is None:
            return
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        names = datamodule.label_map.category_names
        inputs = [
            DatasetInput(
                manifest_dataset(datamodule.manifests[split], datamodule.datasets[split].rows, names),
                tags=[InputTag(MLFLOW_DATASET_CONTEXT, CONTEXTS[split])],
            )
            for split in splits
            if datamodule.manifests.get(split) and split in datamodule.datasets
        ]
        if inputs:
            logger.experiment.log_inputs(logger.run_id, datasets=inputs)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, ("train", "validation"))

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, ("test",))
