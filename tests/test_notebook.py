"""notebooks/compare_runs.ipynb executed headless (nbclient, the venv's python3 kernel) on a real MLflow store."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

from tests.test_sweep import set_sweep  # noqa: F401  (the store of two real runs the sweep test makes)

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
