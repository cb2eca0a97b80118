"""The run's data on MLflow: its manifests as dataset inputs (the UI's Datasets column and the run's Datasets
section), and the data check's report (:class:`DataCheckLog`).

Each manifest is one dataset, named ``<folder>/<file>`` (``voice/train``), with the manifest's path as
its source, the SHA-256 of the file (first 12 hex digits) as its digest, and a profile of the rows the
run used (after the data check): their number, hours of audio and count per category. Its context tag
says how the run used it: ``training``, ``validation`` or ``test``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytorch_lightning as pl

from broadclass.data.check import DataReport
from broadclass.tracking.mlflow_run import mlflow_logger

if TYPE_CHECKING:
    from mlflow.entities import Dataset

# The datamodule's split names, and the context MLflow shows for each.
CONTEXTS = {"train": "training", "validation": "validation", "test": "test"}
DIGEST_LENGTH = 12
# Tries of one log_inputs: MLflow's store looks a dataset up, then inserts it; two runs of a sweep that start
# together both miss it and the second insert breaks the store's unique key. The next try finds it.
LOG_INPUTS_TRIES = 4


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


def log_inputs(client, run_id: str, inputs: Sequence) -> None:
    """``client.log_inputs`` that tries again when another run registered the same dataset at the same moment.

    The store answers such a conflict with BAD_REQUEST (SQLite's or PostgreSQL's unique-key error, through a
    server or not); any other error, and a conflict still there after ``LOG_INPUTS_TRIES``, is raised.
    """
    from mlflow.exceptions import MlflowException

    for attempt in range(1, LOG_INPUTS_TRIES + 1):
        try:
            client.log_inputs(run_id, datasets=list(inputs))
            return
        except MlflowException as err:
            if attempt == LOG_INPUTS_TRIES or not is_unique_key_conflict(err):
                raise
            time.sleep(0.1 * attempt)


def is_unique_key_conflict(err: Exception) -> bool:
    message = str(err).lower()
    return "unique constraint" in message or "duplicate key" in message


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
            log_inputs(logger.experiment, logger.run_id, inputs)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, ("train", "validation"))

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, ("test",))


class DataCheckLog(pl.Callback):
    """The datamodule's data check on the MLflow run: ``data/check_report.json`` and the param
    ``data/check/rows_with_errors``. Logged after the datamodule's setup, and also when the check stops the run
    (``on_exception``), so the report of a refused corpus is on the run that refused it."""

    def __init__(self) -> None:
        self._logged: DataReport | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._log(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._log(trainer)

    def _log(self, trainer: pl.Trainer) -> None:
        report = getattr(trainer.datamodule, "check_report", None)
        tracker = mlflow_logger(trainer.loggers)
        if report is None or tracker is None or report is self._logged:
            return
        tracker.experiment.log_text(
            tracker.run_id, json.dumps(report.to_dict(), ensure_ascii=False, indent=2), "data/check_report.json"
        )
        tracker.log_hyperparams({"data/check/rows_with_errors": len(report.bad_sources())})
        self._logged = report
