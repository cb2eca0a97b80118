"""The MLflow UI pages of a store's experiments: ``python -m broadclass.ui <tracking URI> <UI URL>`` prints them.

``make ui`` prints them before it starts the UI: each experiment's training-runs page (runs table,
chart view and compare view start there).
"""

from __future__ import annotations

from mlflow import MlflowClient


def runs_page(ui_url: str, experiment_id: str) -> str:
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs"


def experiment_pages(tracking_uri: str, ui_url: str) -> list[str]:
    """``<name>: <runs page>`` for each experiment with runs, the most recently active first."""
    client = MlflowClient(tracking_uri)
    experiments = [e for e in client.search_experiments() if client.search_runs([e.experiment_id], max_results=1)]
    experiments.sort(key=lambda e: e.last_update_time or 0, reverse=True)
    return [f"{e.name}: {runs_page(ui_url, e.experiment_id)}" for e in experiments]
