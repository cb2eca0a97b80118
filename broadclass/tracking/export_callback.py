"""At the end of training, log the best checkpoint's HuggingFace export to the MLflow run as ``model/``.

Then the tracking server alone serves the model: ``python -m broadclass.predict model=<run id>`` and
``python -m broadclass.export <run id> <dir>`` download it from there.
"""

from __future__ import annotations

import tempfile

import pytorch_lightning as pl
from mlflow.exceptions import MlflowException
from pytorch_lightning.utilities import rank_zero_warn

from broadclass.export import export_model
from broadclass.model.checkpoint import RUN_ARTIFACT, load_checkpoint
from broadclass.tracking.mlflow_run import mlflow_logger
from broadclass.tracking.model_card import build_card


class ExportBestModel(pl.Callback):
    """Exports the best checkpoint (the last one when nothing was monitored) once fit has finished."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = mlflow_logger(trainer.loggers)
        if not self.enabled or logger is None or not trainer.is_global_zero:
            return
        checkpoints = trainer.checkpoint_callback
        path = (checkpoints.best_model_path or checkpoints.last_model_path) if checkpoints is not None else ""
        if not path:
            rank_zero_warn("no checkpoint was saved (fast_dev_run, or no validation ran): no model logged to MLflow")
            return
        client, run_id = logger.experiment, logger.run_id
        try:
            card = build_card(client, run_id)
        except (OSError, MlflowException) as err:  # e.g. no config/config.yaml logged: the short card then
            rank_zero_warn(f"no model card from run {run_id} ({err}): the exported model gets a short one")
            card = None
        # Read back from the file, as a user of the run would, so the logged model is the checkpoint's.
        with tempfile.TemporaryDirectory(prefix="broadclass-export-") as folder:
            export_model(load_checkpoint(path), folder, overwrite=True, card=card)
            client.log_artifacts(run_id, folder, RUN_ARTIFACT)
        print(
            f"Model from {path} logged to MLflow run {run_id} as '{RUN_ARTIFACT}/': "
            f"python -m broadclass.predict model={run_id} input=<audio>"
        )
