"""``python -m broadclass.ui`` (make ui): the printed links are the store's experiments' runs pages."""

from __future__ import annotations

import re
import shutil
import time

from mlflow import MlflowClient

from broadclass import ui


def test_the_printed_links_are_the_runs_pages_of_the_experiments_with_runs(tmp_path, empty_mlflow_db, capsys):
    shutil.copy(empty_mlflow_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    artifacts = (tmp_path / "mlruns").as_uri()
    older = client.create_experiment("older", artifact_location=f"{artifacts}/older")
    client.create_experiment("empty", artifact_location=f"{artifacts}/empty")  # no runs: nothing to show
    newer = client.create_experiment("newer", artifact_location=f"{artifacts}/newer")
    client.create_run(older)
    time.sleep(0.01)
    client.create_run(newer)

    assert ui.main([uri, "http://127.0.0.1:5000/"]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Training runs, per experiment:"
    pages = [re.fullmatch(r"  (\S+): http://127\.0\.0\.1:5000/#/experiments/(\d+)/runs", line) for line in lines[1:]]
    assert all(pages), lines
    listed = [(page[1], page[2]) for page in pages]
    # Each link's id is the named experiment's in the store, each has runs, the most recently active first.
    assert listed == [("newer", newer), ("older", older)]
    for name, experiment_id in listed:
        assert client.get_experiment(experiment_id).name == name
        assert client.search_runs([experiment_id])


def test_an_empty_store_says_so(tmp_path, empty_mlflow_db, capsys):
    shutil.copy(empty_mlflow_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert ui.main([uri, "http://127.0.0.1:5000"]) == 0
    assert capsys.readouterr().out.strip() == f"No runs yet in {uri}."
