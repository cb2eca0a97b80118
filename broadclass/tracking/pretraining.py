"""The end of a pretraining run: the best checkpoint's network as a HuggingFace folder, logged as the run's model."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_warn

from broadclass.model.pretraining import read_provenance, save_encoder
from broadclass.tracking.mlflow_run import mlflow_logger
from broadclass.training.resumable_state import kept_checkpoint

# The logged model's type in MLflow: an encoder to fine-tune, not a transcriber.
ENCODER_MODEL_TYPE = "broadclass-pretrained-encoder"


class SaveEncoder(pl.Callback):
    """Writes ``folder`` from the best checkpoint (the last when nothing was monitored) once fit has finished,
    with the run's provenance (MLflow run id, tracking URI, experiment, step) in it, and logs it to MLflow."""

    def __init__(self, folder: str):
        self.folder = folder
        self.saved: str | None = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        path = kept_checkpoint(trainer)
        if not path:
            rank_zero_warn("no checkpoint was saved (fast_dev_run, or no validation ran): no encoder written")
            return
        logger = mlflow_logger(trainer.loggers)
        provenance = {}
        if logger is not None:
            provenance = {
                "mlflow_run_id": logger.run_id,
                "mlflow_experiment_id": logger.experiment_id,
                "mlflow_tracking_uri": logger._tracking_uri,
            }
        folder = save_encoder(path, self.folder, provenance)
        self.saved = str(folder)
        if logger is not None:
            # Imported here: export_callback imports MLflow, which a run with logger=csv may not have.
            from broadclass.tracking.export_callback import log_model_folder

            step = int(trainer.global_step)
            model_id = log_model_folder(
                logger.experiment,
                logger.experiment_id,
                logger.run_id,
                str(folder),
                logger._experiment_name,
                step,
                model_type=ENCODER_MODEL_TYPE,
            )
            logger.experiment.set_tag(logger.run_id, "encoder/model_uri", f"models:/{model_id}")


def local_encoder(source: str | None, tracking_uri: str, cache_dir: str) -> str | None:
    """``model.pretrained`` as something transformers loads: a ``models:/<id>`` (or ``models:/<name>/<version>``)
    of the tracking store is downloaded into ``cache_dir/models/<id>`` once; a hub id or folder is returned as it
    is."""
    if not source or not str(source).startswith("models:/"):
        return source
    from mlflow.artifacts import download_artifacts

    from broadclass.tracking.run_model import model_location
    from broadclass.tracking.store import open_store

    destination = Path(cache_dir) / "models" / str(source)[len("models:/") :].replace("/", "_").replace("@", "_")
    if not (destination / "config.json").is_file():
        location = model_location(open_store(tracking_uri), str(source))
        downloaded = Path(
            download_artifacts(artifact_uri=location, dst_path=str(destination), tracking_uri=tracking_uri)
        )
        if downloaded != destination:  # MLflow puts the files under the artifact folder's own name
            for item in downloaded.iterdir():
                item.rename(destination / item.name)
    return str(destination)


def pretraining_tags(source: str | None) -> dict[str, str]:
    """Tags linking a fine-tuning run to the pretraining run its encoder came from (``pretrained/run_id``,
    ``pretrained/run_link`` …), read from the folder's provenance file; none for a hub id or another folder."""
    record = read_provenance(source) if source and Path(source).is_dir() else None
    if not record:
        return {}
    tags = {"pretrained/folder": str(Path(source).resolve()), "pretrained/step": str(record.get("step"))}
    run_id, experiment_id = record.get("mlflow_run_id"), record.get("mlflow_experiment_id")
    if run_id:
        uri = str(record.get("mlflow_tracking_uri", ""))
        page = f"#/experiments/{experiment_id}/runs/{run_id}"
        tags.update(
            {
                "pretrained/run_id": run_id,
                "pretrained/tracking_uri": uri,
                "pretrained/run_link": f"{uri.rstrip('/')}/{page}" if uri.startswith("http") else page,
            }
        )
    return tags
