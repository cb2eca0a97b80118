"""The MLflow store: the default tracking URI, probing a tracking server, opening the store, finding a run.

One home for what the entry points (train, predict, export, report, report compare=) and the tracking
modules need to reach the store the project logs to. Light to import: MLflow is imported when a store is
opened, requests when a server is probed.

:func:`check_tracking_server` probes a server URI (``http://…``) once, without retries; ``train`` calls it
before anything else, so an unreachable server stops a run in seconds. A server with logins (``mlflow server
--app-name basic-auth``) that refuses the user (``MLFLOW_TRACKING_USERNAME``/``PASSWORD``) stops it with
:class:`TrackingServerRefused` as soon as the experiment is looked up or the run created: before training.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from broadclass.config import ConfigError, project_root

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run


def default_tracking_uri(near: str | Path | None = None) -> str:
    """What training logs to by default (conf/logger/mlflow.yaml): ``$MLFLOW_TRACKING_URI``, else the
    ``mlflow.db`` nearest above the folder ``near`` (a sweep's output folder), else the project's."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if near is not None and Path(near).is_dir():
        for parent in (Path(near).resolve(), *Path(near).resolve().parents):
            if (parent / "mlflow.db").is_file():
                return f"sqlite:///{parent / 'mlflow.db'}"
    return f"sqlite:///{project_root().resolve() / 'mlflow.db'}"


def open_store(uri: str) -> MlflowClient:
    """A client for ``uri``; a SQLite file that does not exist is an error (MLflow would create an empty one)."""
    from mlflow import MlflowClient

    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        if not path.is_file():
            raise RunLookupError(f"no MLflow store at {path} (tracking URI {uri}); pass tracking_uri=<uri>")
    return MlflowClient(uri)


PROBE_TIMEOUT_S = 5.0


class TrackingServerUnreachable(RuntimeError):
    pass


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def server_reachable(uri: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when ``uri``'s ``/health`` answers, otherwise why not (one try, no retries)."""
    import requests

    try:
        response = requests.get(f"{uri.rstrip('/')}/health", timeout=timeout)
    except requests.RequestException as err:
        return f"{type(err).__name__}: {err}"
    return None if response.ok else f"HTTP {response.status_code} from {uri}/health"


def check_tracking_server(uri: str) -> None:
    """Raise a clear error within seconds when ``uri`` is a tracking server that does not answer."""
    if not is_server(uri):
        return
    why = server_reachable(uri)
    if why is not None:
        raise TrackingServerUnreachable(
            f"MLflow tracking server {uri} is not reachable ({why}).\n"
            "Start it (mlflow server …), or log to a local store instead: unset MLFLOW_TRACKING_URI "
            "(the default is sqlite:///<project>/mlflow.db)."
        )


# MLflow's error codes for a server's HTTP 401 and 403 (its basic-auth app answers them in plain text).
REFUSALS = {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403}


class TrackingServerRefused(ConfigError):
    """The tracking server refused this user: wrong or missing credentials, or no permission."""


def refusal(err: Exception) -> int | None:
    """The HTTP status (401, 403) when ``err`` is a tracking server refusing the user; otherwise None."""
    return REFUSALS.get(getattr(err, "error_code", None))


@contextmanager
def server_access(uri: str, action: str) -> Iterator[None]:
    """Turns the server's refusal of what the block does (``action``: "create runs in experiment 'demo'") into
    :class:`TrackingServerRefused` saying what to change; the credentials are named by user, never shown."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as err:
        status = refusal(err)
        if status is None:
            raise
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        if status == 401:
            given = f"user {user!r}" if user else "no MLFLOW_TRACKING_USERNAME"
            raise TrackingServerRefused(
                f"MLflow tracking server {uri} refused the credentials ({given}; HTTP 401) when asked to {action}.\n"
                "Set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to your account on that server."
            ) from None
        raise TrackingServerRefused(
            f"MLflow tracking server {uri}: user {user!r} has no permission to {action} (HTTP 403). Nothing was "
            "written. Ask the server's admin for EDIT permission, or log to an experiment of your own "
            "(experiment_name=<name>)."
        ) from None


RUN_ID = re.compile(r"[0-9a-f]{32}")


class RunLookupError(LookupError):
    pass


def _describe(client: MlflowClient, run: Run) -> str:
    started = datetime.fromtimestamp(run.info.start_time / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    experiment = client.get_experiment(run.info.experiment_id).name
    return f"  {run.info.run_id}  experiment {experiment!r}, started {started}, {run.info.status}"


def find_run(client: MlflowClient, ref: str) -> Run:
    """The run whose id or name is ``ref``; a name shared by several runs is an error listing their ids."""
    if RUN_ID.fullmatch(ref):
        from mlflow.exceptions import MlflowException

        try:
            return client.get_run(ref)
        except MlflowException:
            pass  # a 32-hex-digit run *name* is possible
    quote = next((q for q in ("'", '"') if q not in ref), None)
    if quote is None:
        raise RunLookupError(f"run name {ref!r} contains both quote characters: give the run id instead")
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string=f"attributes.run_name = {quote}{ref}{quote}")
    if not runs:
        raise RunLookupError(f"no run with id or name {ref!r} in {client.tracking_uri}")
    if len(runs) > 1:
        listing = "\n".join(_describe(client, run) for run in runs)
        raise RunLookupError(f"{len(runs)} runs are named {ref!r}; give one of their ids:\n{listing}")
    return runs[0]
