"""The MLflow logger of every run: Lightning's ``MLFlowLogger`` that outlives a stopped tracking server and a
resumed run's repeated steps.

:class:`BufferedMLFlowLogger` (``conf/logger/mlflow.yaml``) adds to ``MLFlowLogger``:

* **Keep going when the server goes away.** Its client is a :class:`~broadclass.tracking.spool.SpoolingClient`:
  writes the server cannot take are kept on disk in ``spool_dir`` and sent when it answers again, and at
  the end of training (waiting up to ``flush_timeout_s``). What is still left then is sent by the next run
  of the same command, or by ``python -m broadclass.send_spool <spool_dir>``.
* **No step twice.** A resumed run recomputes the steps between its checkpoint and the crash; a
  metric already logged at that step (in MLflow, or waiting in the spool) is not logged again.
* **A run name** when none is given: the experiment's name and a short random id
  (:func:`~broadclass.training.run_naming.single_run_name`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only

from broadclass.tracking.spool import SpoolingClient
from broadclass.tracking.store import is_server, server_access
from broadclass.training.run_naming import single_run_name

log = logging.getLogger(__name__)


class BufferedMLFlowLogger(MLFlowLogger):
    """``MLFlowLogger`` that spools while the server is away and never logs a step twice."""

    def __init__(
        self,
        *args: Any,
        spool_dir: str = "mlflow_spool",
        retry_interval_s: float = 30.0,
        flush_timeout_s: float = 60.0,
        **kwargs: Any,
    ):
        if kwargs.get("run_name") is None and kwargs.get("run_id") is None:
            kwargs["run_name"] = single_run_name(kwargs.get("experiment_name", "lightning_logs"))
        super().__init__(*args, **kwargs)
        self.spool_dir = Path(spool_dir)
        self.retry_interval_s = retry_interval_s
        self.flush_timeout_s = flush_timeout_s
        if is_server(self._tracking_uri):
            # One quick try per request: the spool is the retry. MLflow's defaults (7 retries with
            # back-off, 120 s timeout) would stall training for minutes at each write.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

    @property
    @rank_zero_experiment
    def experiment(self) -> MlflowClient:
        if self._initialized:
            return self._mlflow_client
        resuming = self._run_id is not None
        exported = os.environ.get("MLFLOW_TRACKING_URI")
        try:
            with server_access(self._tracking_uri, f"create runs in experiment {self._experiment_name!r}"):
                client = super().experiment
                logged = self._logged_steps(client) if resuming else set()
        finally:
            # Lightning calls mlflow.set_tracking_uri, which exports MLFLOW_TRACKING_URI to the whole process:
            # a config composed later in it (a notebook, the next test) would log into this store.
            if exported is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = exported
        spooling = SpoolingClient(client, self._tracking_uri, self.spool_dir, self.retry_interval_s, logged)
        # What an interrupted session left in the spool goes first, and counts as logged.
        for record in spooling.spool.pending:
            logged.update((m[0], m[3]) for m in record.get("metrics", []))
        if resuming:
            client.update_run(self._run_id, status="RUNNING")
        spooling.spool.drain(force=True)
        self._mlflow_client = spooling
        return spooling

    def _logged_steps(self, client: MlflowClient) -> set[tuple[str, int]]:
        run = client.get_run(self._run_id)
        return {(key, m.step) for key in run.data.metrics for m in client.get_metric_history(self._run_id, key)}

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        if not self._initialized:
            return
        status = {"success": "FINISHED", "finished": "FINISHED", "failed": "FAILED"}.get(status, status)
        if self._checkpoint_callback:
            self._scan_and_log_checkpoints(self._checkpoint_callback)
        client: SpoolingClient = self.experiment
        client.set_terminated(self.run_id, status)
        if not client.spool.flush(self.flush_timeout_s):
            log.warning(
                "MLflow server %s still unreachable: %d record(s) kept in %s. They are sent by the next run of "
                "the same command, or at once with: python -m broadclass.send_spool %s",
                self._tracking_uri,
                len(client.spool.pending),
                self.spool_dir,
                self.spool_dir,
            )
