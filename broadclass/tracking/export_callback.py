"""At the end of training, log the best checkpoint's HuggingFace export as the run's MLflow logged model.

It is listed under the experiment's "Logged models" and the run's outputs, named after the experiment,
and can be registered: ``mlflow.register_model("models:/<model id>", "<name>")``. Then the tracking
server alone serves the model: ``python -m broadclass.predict model=<run id>`` (or
``model=models:/<name>/<version>``) and ``python -m broadclass.export <run id> <dir>`` download it.
"""

from __future__ import annotations

import tempfile

import pytorch_lightning as pl
from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput, LoggedModelStatus
from mlflow.exceptions import MlflowException
from pytorch_lightning.utilities import rank_zero_warn

from broadclass.model.exported_folder import export_model
from broadclass.model.format import MODEL_TYPE
from broadclass.model.module import BroadClassModule
from broadclass.tracking.mlflow_run import mlflow_logger
from broadclass.tracking.run_card import build_card
from broadclass.training.resumable_state import kept_checkpoint


class ExportBestModel(pl.Callback):
    """Exports the best checkpoint (the last one when nothing was monitored) once fit has finished."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = mlflow_logger(trainer.loggers)
        if not self.enabled or logger is None or not trainer.is_global_zero:
            return
        path = kept_checkpoint(trainer)
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
        trained = BroadClassModule.from_checkpoint(path)
        step = (trained.metadata.get("report") or {}).get("step", trainer.global_step)
        with tempfile.TemporaryDirectory(prefix="broadclass-export-") as folder:
            export_model(trained, folder, overwrite=True, card=card)
            model_id = log_model_folder(client, logger.experiment_id, run_id, folder, logger._experiment_name, step)
        print(
            f"Model from {path} logged to MLflow run {run_id} as models:/{model_id}: "
            f"python -m broadclass.predict model={run_id} input=<audio>"
        )


def log_model_folder(
    client: MlflowClient,
    experiment_id: str,
    run_id: str,
    folder: str,
    name: str,
    step: int,
    model_type: str = MODEL_TYPE,
) -> str:
    """``folder`` as a logged model of the run, output at ``step``; returns its id."""
    model = client.create_logged_model(
        experiment_id, name=name, source_run_id=run_id, model_type=model_type, tags={"step": str(step)}
    )
    try:
        client.log_model_artifacts(model.model_id, folder)
    except Exception:
        client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step)])
    return model.model_id
