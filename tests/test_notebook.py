"""notebooks/compare_runs.ipynb and error_analysis.ipynb executed headless (nbclient, the venv's python3 kernel)
on real MLflow stores."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from broadclass.train import train
from tests.helpers.config import compose_config, demo_overrides
from tests.helpers.runs import TrainedRun

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "compare_runs.ipynb"


def test_compare_notebook_plots_curves_and_confusion_matrices_without_errors(set_sweep, monkeypatch):  # noqa: F811
    root, _ = set_sweep
    # The kernel inherits this process's environment: that is how the notebook is parameterised.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    monkeypatch.setenv("BROADCLASS_EXPERIMENT", "seed-recipe")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    figures = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(figures) == 3  # the learning curves, F1 per category, then the confusion matrices
    table = next(out for out in outputs if out.output_type == "execute_result")["data"]["text/plain"]
    assert "model_broadclass_onSet1" in table and "model_broadclass_onSet2" in table


ERROR_ANALYSIS = NOTEBOOK.with_name("error_analysis.ipynb")


@pytest.fixture(scope="module")
def two_runs_on_the_same_utterances(trained_run: TrainedRun, tmp_path_factory, demo_corpus) -> str:
    """The session's trained run and a second seed of it, validated on the same utterances, in one store."""
    root = tmp_path_factory.mktemp("second-seed")
    steps = ["trainer.max_steps=10", "val_every_n_optimizer_steps=10", "test_after_fit=false", "data.batch_size=4"]
    store = [f"logger.mlflow.tracking_uri={trained_run.tracking_uri}", "seed=1"]
    train(compose_config(root, [*demo_overrides(demo_corpus), *steps, *store]))
    return trained_run.tracking_uri


def test_error_analysis_notebook_shows_confusions_rates_durations_and_the_paired_tests(
    two_runs_on_the_same_utterances, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", two_runs_on_the_same_utterances)
    monkeypatch.setenv("BROADCLASS_EXPERIMENT", "demo")
    notebook = nbformat.read(ERROR_ANALYSIS, as_version=4)
    client = NotebookClient(
        notebook, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    figures = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(figures) == 3  # the class confusion, the durations, the intervals
    tables = [out["data"]["text/plain"] for out in outputs if out.output_type == "execute_result"]
    assert any("sub_rate" in table and "del_rate" in table for table in tables)
    markdown = [out["data"]["text/markdown"] for out in outputs if "text/markdown" in out.get("data", {})]
    assert len(markdown) == 1 and "McNemar exact test" in markdown[0] and "paired bootstrap" in markdown[0]
