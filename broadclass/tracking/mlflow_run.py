"""MLflow helpers: find the run behind a Lightning logger, log config/vocabulary, say where the run is."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger, MLFlowLogger

from broadclass.data.labels import LabelMap
from broadclass.metrics import category_keys
from broadclass.tracking.store import refusal, server_access

# The experiment tag that makes the UI open an experiment in its "Model training" view, not the GenAI one.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
# Folders of the `paths` group whose contents a run writes: a value inside one is where, not how, it ran.
RUN_LOCATION_FOLDERS = ("output_dir", "log_dir", "cache_dir")


def mlflow_logger(loggers: Iterable[Logger] | Logger | None) -> MLFlowLogger | None:
    if loggers is None:
        return None
    if isinstance(loggers, Logger):
        loggers = [loggers]
    return next((lg for lg in loggers if isinstance(lg, MLFlowLogger)), None)


def ensure_experiment(logger_cfg: Mapping[str, Any]) -> str:
    """The experiment's id, created first where it does not exist and marked as a model-training one where
    nothing marked it yet; call before building the loggers.

    The jobs of a parallel sweep (joblib, submitit, SLURM) start together and would race to create it:

    * on a new SQLite store each would also run MLflow's schema migrations at once, which fails and can leave
      the store half-migrated: a lock file beside the database lets one job create it, the others find it;
    * on a tracking server, the jobs that lose the race get ``RESOURCE_ALREADY_EXISTS`` and read it instead.
      The mark is written with the experiment, in the same request: written afterwards, two jobs that both
      saw it missing would both insert it, and the second insert fails (a UNIQUE constraint of the store).
      An experiment made elsewhere without the mark gets it from the first job; a job that loses that race
      reads the mark the winner wrote. A user who may only read the experiment leaves it unmarked.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException, RestException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    uri, name = logger_cfg["tracking_uri"], logger_cfg["experiment_name"]

    def get_or_create() -> str:
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return client.create_experiment(
                    name,
                    artifact_location=logger_cfg.get("artifact_location"),
                    tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING},
                )
            except RestException as err:
                if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                    raise
                experiment = client.get_experiment_by_name(name)
        if EXPERIMENT_KIND_TAG not in experiment.tags:
            try:
                client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
            except MlflowException as err:
                # Refused: a user who may not edit the experiment may not create runs in it either, and creating
                # the run says so in those words. Otherwise another job marked it first, or the error stands.
                if (
                    refusal(err) is None
                    and EXPERIMENT_KIND_TAG not in client.get_experiment(experiment.experiment_id).tags
                ):
                    raise
        return experiment.experiment_id

    if not uri.startswith("sqlite:///"):
        with server_access(uri, f"use experiment {name!r}"):
            return get_or_create()
    from filelock import FileLock

    database = Path(uri[len("sqlite:///") :])
    database.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{database}.lock"):
        return get_or_create()


def split_locations(flat: Mapping[str, Any], paths: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The flattened config split into (params, locations).

    Locations are the ``paths/`` group and every value that is a path inside the run's output folder, the
    outputs folder or the cache (checkpoint folders, the spool, ``trainer/default_root_dir`` …): they differ
    from run to run without changing what is trained, so they are tags, and the runs of a sweep differ in
    params by exactly the swept values.
    """
    folders = [Path(str(paths[name])) for name in RUN_LOCATION_FOLDERS if paths.get(name)]

    def is_location(key: str, value: Any) -> bool:
        if key.startswith("paths/"):
            return True
        path = Path(value) if isinstance(value, str) else None
        return path is not None and path.is_absolute() and any(path.is_relative_to(folder) for folder in folders)

    params = {k: v for k, v in flat.items() if not is_location(k, v)}
    return params, {k: v for k, v in flat.items() if k not in params}


def flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a/b": 1}``; lists are kept as their JSON text."""
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flatten(value, name))
        else:
            flat[name] = json.dumps(value, ensure_ascii=False) if isinstance(value, list) else value
    return flat


def log_run_setup(logger: MLFlowLogger, cfg: DictConfig, labels: LabelMap | None, tags: dict[str, str]) -> None:
    """Resolved config as flattened params (its locations as tags) and as YAML, the vocabulary (a run with
    labels), run tags.

    The param ``metrics/categories`` lists the categories' names in metric keys (``val/<name>/f1``) in id
    order.
    """
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.pop("hydra", None)
    flat = {k: v for k, v in flatten(resolved).items() if not k.endswith("/_target_") and k != "_target_"}
    params, locations = split_locations(flat, resolved.get("paths", {}))
    if labels is not None:
        params["metrics/categories"] = json.dumps(category_keys(labels.category_names), ensure_ascii=False)
    logger.log_hyperparams(params)
    client, run_id = logger.experiment, logger.run_id
    tags = {**{k: str(v) for k, v in locations.items()}, **tags}
    client.log_text(run_id, OmegaConf.to_yaml(resolved), "config/config.yaml")
    if labels is not None:
        client.log_text(run_id, json.dumps(labels.vocab, ensure_ascii=False, indent=2), "config/vocab.json")
    from mlflow.entities import RunTag  # here: this module is imported by runs without MLflow (logger=csv)

    client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])


def describe_run(logger: MLFlowLogger) -> str:
    from mlflow.exceptions import MlflowException

    try:
        artifacts = logger.experiment.get_run(logger.run_id).info.artifact_uri
    except MlflowException:  # the server went away at the end; the logs wait in the run's spool
        artifacts = "(tracking server unreachable)"
    uri = logger._tracking_uri
    lines = [
        f"MLflow run id: {logger.run_id}",
        f"  experiment: {logger.experiment_id} ({logger._experiment_name}), tracking URI: {uri}",
        f"  artifacts:  {artifacts}",
    ]
    if uri.startswith("sqlite:"):
        lines.append(f"  browse:     mlflow ui --backend-store-uri {uri}   (or: make ui)")
    else:
        lines.append(f"  browse:     {uri.rstrip('/')}/#/experiments/{logger.experiment_id}/runs/{logger.run_id}")
    return "\n".join(lines)
