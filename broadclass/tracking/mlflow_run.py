"""MLflow helpers: find the run behind a Lightning logger, log config/vocabulary, say where the run is."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger, MLFlowLogger

from broadclass.data.labels import LabelMap


def mlflow_logger(loggers: Iterable[Logger] | Logger | None) -> MLFlowLogger | None:
    if loggers is None:
        return None
    if isinstance(loggers, Logger):
        loggers = [loggers]
    return next((lg for lg in loggers if isinstance(lg, MLFlowLogger)), None)


def ensure_experiment(logger_cfg: Mapping[str, Any]) -> str | None:
    """Create a SQLite store's tables and the experiment, one process at a time; returns the experiment id.

    The jobs of a parallel sweep (joblib, submitit) start together: on a new SQLite store each would run
    MLflow's schema migrations at once, which fails and can leave the store half-migrated. A lock file
    beside the database lets one job create it; the others then find it. Call before building the
    loggers (Lightning's MLflow logger opens the store, migrating it, when built). A tracking server
    creates its own tables: other URIs are left to the logger (None).
    """
    uri = logger_cfg["tracking_uri"]
    if not uri.startswith("sqlite:///"):
        return None
    from filelock import FileLock
    from mlflow import MlflowClient

    database = Path(uri[len("sqlite:///") :])
    database.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{database}.lock"):
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(logger_cfg["experiment_name"])
        if experiment is not None:
            return experiment.experiment_id
        return client.create_experiment(
            logger_cfg["experiment_name"], artifact_location=logger_cfg.get("artifact_location")
        )


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


def log_run_setup(logger: MLFlowLogger, cfg: DictConfig, labels: LabelMap, tags: dict[str, str]) -> None:
    """Resolved config as flattened params and as YAML, the vocabulary, and run tags."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.pop("hydra", None)
    params = {k: v for k, v in flatten(resolved).items() if not k.endswith("/_target_") and k != "_target_"}
    logger.log_hyperparams(params)
    client, run_id = logger.experiment, logger.run_id
    client.log_text(run_id, OmegaConf.to_yaml(resolved), "config/config.yaml")
    client.log_text(run_id, json.dumps(labels.vocab, ensure_ascii=False, indent=2), "config/vocab.json")
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


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
