"""What a run could not send is sent by the next run of the same command (broadclass/tracking/logger.py)."""

from __future__ import annotations

import time
from pathlib import Path

from hydra.utils import instantiate
from mlflow import MlflowClient

from broadclass.tracking.spool import JOURNAL, Spool


def refused(record: dict) -> None:
    raise ConnectionError("the tracking server is away")


def test_what_a_run_left_in_its_spool_is_sent_by_the_next_run_of_the_same_command(train_config):
    cfg = train_config()
    uri = cfg.logger.mlflow.tracking_uri
    client = MlflowClient(uri)
    experiment = client.create_experiment(cfg.experiment_name)
    run_id = client.create_run(experiment).info.run_id
    client.log_metric(run_id, "val/ter", 0.9, step=100)  # what reached the server before it went away
    # The interrupted session's writes, kept on disk in the run folder's spool while the server was away.
    spool_dir = Path(cfg.logger.mlflow.spool_dir)
    left = Spool(spool_dir, send=refused)
    now = int(time.time() * 1000)
    left.keep({"run_id": run_id, "op": "batch", "metrics": [["val/ter", 0.5, now, 200]], "params": [], "tags": []})
    left.keep({"run_id": run_id, "op": "batch", "metrics": [], "params": [], "tags": [["note", "from the spool"]]})
    assert (spool_dir / JOURNAL).is_file() and len(left.pending) == 2
    assert [m.step for m in client.get_metric_history(run_id, "val/ter")] == [100]

    # The next run of the same command resumes into that MLflow run: its logger sends what waited, in order.
    logger = instantiate(cfg.logger.mlflow, run_id=run_id)
    assert logger.experiment is not None  # opening the run's client drains the spool
    history = client.get_metric_history(run_id, "val/ter")
    assert [(m.step, m.value) for m in history] == [(100, 0.9), (200, 0.5)]
    assert client.get_run(run_id).data.tags["note"] == "from the spool"
    assert not (spool_dir / JOURNAL).exists()
    # A step the spool delivered counts as logged: the resumed run does not log it twice.
    logger.log_metrics({"val/ter": 0.4}, step=200)
    logger.log_metrics({"val/ter": 0.3}, step=300)
    assert [m.step for m in client.get_metric_history(run_id, "val/ter")] == [100, 200, 300]
