"""A trained model from wherever it is: a checkpoint file, an exported folder, an MLflow run's logged model
(run id or name) or a ``models:/`` URI."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from broadclass.model.format import ModelLoadError
from broadclass.model.module import BroadClassModule, TrainedModel
from broadclass.tracking.store import RunLookupError, default_tracking_uri, find_run, open_store


def model_location(client: Any, uri: str) -> str:
    """Where the artifacts of ``models:/<model id>``, ``models:/<name>/<version>`` or ``models:/<name>@<alias>``
    are, read from ``client``'s store (MLflow's own resolution of ``models:/`` uses the process-wide store)."""
    ref = uri[len("models:/") :]
    if "@" in ref:
        version = client.get_model_version_by_alias(*ref.split("@", 1))
    elif "/" in ref:
        version = client.get_model_version(*ref.split("/", 1))
    else:
        return client.get_logged_model(ref).artifact_location
    if version.model_id:
        return client.get_logged_model(version.model_id).artifact_location
    return client.get_model_version_download_uri(version.name, version.version)


def download_run_model(run: str, destination: str | Path, tracking_uri: str | None = None) -> tuple[str, Path]:
    """The exported model of an MLflow run (given by id or name), or a ``models:/…`` URI: where it came
    from and its local folder. A run's model is its newest logged model."""
    # Imported here: MLflow is only needed for a run, and costs seconds to import.
    from mlflow.artifacts import download_artifacts
    from mlflow.entities import LoggedModelStatus
    from mlflow.exceptions import MlflowException

    uri = tracking_uri or default_tracking_uri()
    if run.startswith("models:/"):
        try:
            location = model_location(open_store(uri), run)
            return run, Path(download_artifacts(artifact_uri=location, dst_path=str(destination), tracking_uri=uri))
        except (MlflowException, OSError) as err:
            raise ModelLoadError(f"model={run}: not found in {uri}: {err}") from None
    try:
        client = open_store(uri)
        found = find_run(client, run)
    except RunLookupError as err:
        raise ModelLoadError(f"model={run}: not a checkpoint file or exported folder, and {err}") from None
    run_id = found.info.run_id
    models = client.search_logged_models([found.info.experiment_id], filter_string=f"source_run_id = '{run_id}'")
    ready = [m for m in models if m.status == LoggedModelStatus.READY]
    if not ready:
        raise ModelLoadError(
            f"MLflow run {run_id} ({uri}) has no logged model: it is logged at the end of training when "
            "callbacks.export_model.enabled=true. Export a checkpoint with `python -m broadclass.export "
            "<checkpoint> <dir>` instead."
        )
    newest = max(ready, key=lambda m: m.creation_timestamp)
    try:
        folder = download_artifacts(artifact_uri=newest.artifact_location, dst_path=str(destination), tracking_uri=uri)
    except (MlflowException, OSError) as err:
        raise ModelLoadError(
            f"MLflow run {run_id} ({uri}): its model {newest.model_uri} cannot be read: {err}"
        ) from None
    return f"MLflow run {run_id} ({newest.model_uri})", Path(folder)


def load_model(source: str | Path, tracking_uri: str | None = None) -> TrainedModel:
    """A checkpoint file, an exported folder, the model logged to an MLflow run (id or name), or a
    ``models:/<name>/<version>`` (``models:/<model id>``) URI."""
    if Path(source).exists():
        return BroadClassModule.restore_from(source)
    with tempfile.TemporaryDirectory(prefix="broadclass-run-model-") as tmp:
        origin, folder = download_run_model(str(source), tmp, tracking_uri)
        trained = BroadClassModule.from_exported(folder)
    trained.source = origin
    return trained
