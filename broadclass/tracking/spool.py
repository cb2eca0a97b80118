"""MLflow writes kept on disk, in order, while a tracking server cannot be reached, and sent when it answers.

:class:`SpoolingClient` is the ``MlflowClient`` the logger (:mod:`broadclass.tracking.logger`) hands to
Lightning: every write (metrics, params, tags, artifacts, the final status) goes to the server;
when one fails because the server cannot be reached, or refuses the user (HTTP 401/403: a password changed or
a permission revoked mid-run), it and every later write are kept in a :class:`Spool` (``journal.jsonl`` and
``files/`` in the run's ``mlflow_spool`` folder), each record with the reason it was kept, and training goes on.
The spool is sent whenever the server answers again (tried at most every ``retry_interval_s``) and at the end
of training. What is still left then is sent by the next run of the same command, or by :func:`upload`'s command::

    python -m broadclass.send_spool <spool_dir> [tracking_uri=<uri>] [timeout=60]

Writes to a SQLite store are never spooled: a failure there is an error, raised at once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import requests
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException, RestException
from mlflow.tracking import MlflowClient

from broadclass.tracking.store import is_server, refusal

log = logging.getLogger(__name__)

JOURNAL = "journal.jsonl"
SENT = "sent"  # the highest journal sequence number known to be in MLflow
RUN_FILE = "run.json"
IMAGE_FILE = "image.png"  # a spooled MLflow image (log_image with a key and step)


class Spool:
    """Writes waiting for the server, in order, on disk; ``send`` is the function that performs one."""

    def __init__(self, folder: str | Path, send: Callable[[dict], None], retry_interval_s: float = 30.0, **about: str):
        self.folder = Path(folder)
        self.send = send
        self.retry_interval_s = retry_interval_s
        self.about = about  # written beside the journal (run.json): where the records go
        self.pending: list[dict] = []
        self._next_retry = 0.0
        self._seq = 0
        journal = self.folder / JOURNAL
        if journal.is_file():
            sent = int((self.folder / SENT).read_text()) if (self.folder / SENT).is_file() else 0
            records = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
            self.pending = [r for r in records if r["seq"] > sent]
            self._seq = max((r["seq"] for r in records), default=0)

    def keep(self, record: dict, files: Callable[[Path], None] | None = None, reason: str | None = None) -> None:
        """Keep ``record`` on disk after those waiting; ``files`` writes its artifact files into a folder;
        ``reason``: why its send failed (a record kept behind others waiting has none of its own)."""
        just_failed = not self.pending
        self._seq += 1
        record = {"seq": self._seq, **record, **({"reason": reason} if reason else {})}
        if files is not None:
            folder = self.folder / "files" / str(self._seq)
            folder.mkdir(parents=True, exist_ok=True)
            files(folder)
            record["local"] = str(folder.relative_to(self.folder))
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.about and not (self.folder / RUN_FILE).is_file():
            (self.folder / RUN_FILE).write_text(json.dumps(self.about))
        with (self.folder / JOURNAL).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        self.pending.append(record)
        if just_failed:  # its first send failed a moment ago
            self._next_retry = time.monotonic() + self.retry_interval_s
        else:
            self.drain()

    def drain(self, force: bool = False) -> bool:
        """Send what is pending, in order, until a send fails; True when nothing is left."""
        if not self.pending:
            return True
        if not force and time.monotonic() < self._next_retry:
            return False
        sent = 0
        try:
            while self.pending:
                self.send(self._resolved(self.pending[0]))
                (self.folder / SENT).write_text(str(self.pending.pop(0)["seq"]))
                sent += 1
        except ConnectionError as err:
            self._next_retry = time.monotonic() + self.retry_interval_s
            log.warning("MLflow: %d record(s) still waiting in %s: %s", len(self.pending), self.folder, err)
            return False
        finally:
            if sent:
                log.warning("MLflow: %d spooled record(s) sent, %d still waiting", sent, len(self.pending))
        shutil.rmtree(self.folder / "files", ignore_errors=True)
        (self.folder / JOURNAL).unlink(missing_ok=True)
        (self.folder / SENT).unlink(missing_ok=True)
        return True

    def _resolved(self, record: dict) -> dict:
        if "local" in record:
            return {**record, "local": str(self.folder / record["local"])}
        return record

    def flush(self, timeout_s: float) -> bool:
        """Try until everything is sent or ``timeout_s`` has passed; True when nothing is left."""
        deadline = time.monotonic() + timeout_s
        while not self.drain(force=True):
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        return True


def send_record(client: MlflowClient, record: dict) -> None:
    """Perform one write with ``client``."""
    run_id, op = record["run_id"], record["op"]
    if op == "batch":
        client.log_batch(
            run_id,
            metrics=[Metric(k, v, ts, step) for k, v, ts, step in record.get("metrics", [])],
            params=[Param(k, v) for k, v in record.get("params", [])],
            tags=[RunTag(k, v) for k, v in record.get("tags", [])],
        )
    elif op == "artifacts":
        client.log_artifacts(run_id, record["local"], record.get("artifact_path"))
    elif op == "image":
        from PIL import Image

        with Image.open(Path(record["local"]) / IMAGE_FILE) as image:
            client.log_image(run_id, image, key=record["key"], step=record["step"], timestamp=record["timestamp"])
    elif op == "terminated":
        client.set_terminated(run_id, record["status"], record["end_time"])
    else:
        raise ValueError(f"unknown spooled operation {op!r}")


def deferred(err: Exception, uri: str) -> str | None:
    """Why a failed write to the server ``uri`` is kept to be sent again later; None when it is an error.

    Kept: writes that never reached the server, and writes the server refused for the user (HTTP 401/403),
    which wait for credentials it accepts. Not kept: a server's own answer to a bad write (RestException: it
    parsed the request and refused it), and any failure of a store that is not a server (SQLite).
    """
    if not is_server(uri):
        return None
    status = refusal(err)
    if status is not None:
        return f"refused by the server for this user (HTTP {status} {err.error_code})"
    if isinstance(err, MlflowException | requests.RequestException) and not isinstance(err, RestException):
        return f"server unreachable ({type(err).__name__})"
    return None


def sender(client: MlflowClient, uri: str) -> Callable[[dict], None]:
    """``send_record`` raising ConnectionError, with the reason, when the write is to be kept for later."""

    def send(record: dict) -> None:
        try:
            send_record(client, record)
        except Exception as err:
            reason = deferred(err, uri)
            if reason is not None:
                raise ConnectionError(reason) from err
            raise

    return send


class SpoolingClient:
    """An ``MlflowClient`` whose writes go through a :class:`Spool` once the server is unreachable.

    Reads (``get_run``, ``search_runs`` …) go straight to the client. Metrics whose (key, step) was
    logged before are dropped (``logged``).
    """

    def __init__(self, client: MlflowClient, uri: str, spool_dir: Path, retry_interval_s: float, logged: set):
        self._client = client
        self._uri = uri
        self.logged = logged
        self.spool = Spool(spool_dir, sender(client, uri), retry_interval_s, tracking_uri=uri)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def _write(self, record: dict, send: Callable[[], Any], files: Callable[[Path], None] | None = None) -> None:
        """``send`` it now when nothing waits before it; keep ``record`` (and ``files``) if it cannot be."""
        if not self.spool.pending:
            try:
                send()
                return
            except Exception as err:
                reason = deferred(err, self._uri)
                if reason is None:
                    raise
                log.warning(
                    "MLflow server %s: %s; training goes on, logs are kept in %s and sent when it accepts them",
                    self._uri,
                    reason,
                    self.spool.folder,
                )
                self.spool.keep(record, files, reason)
                return
        self.spool.keep(record, files)

    # ---- writes --------------------------------------------------------------------------------
    def log_batch(self, run_id: str, metrics=(), params=(), tags=(), synchronous: bool | None = None) -> None:
        fresh = [m for m in metrics if (m.key, m.step) not in self.logged]
        self.logged.update((m.key, m.step) for m in fresh)
        if fresh or params or tags:
            record = {
                "run_id": run_id,
                "op": "batch",
                "metrics": [[m.key, m.value, m.timestamp, m.step] for m in fresh],
                "params": [[p.key, p.value] for p in params],
                "tags": [[t.key, t.value] for t in tags],
            }
            self._write(record, lambda: self._client.log_batch(run_id, metrics=fresh, params=params, tags=tags))

    def log_metric(self, run_id: str, key: str, value: float, timestamp=None, step=None, **_: Any) -> None:
        self.log_batch(run_id, metrics=[Metric(key, value, timestamp or int(time.time() * 1000), step or 0)])

    def log_param(self, run_id: str, key: str, value: Any, synchronous: bool | None = None) -> None:
        self.log_batch(run_id, params=[Param(key, str(value))])

    def set_tag(self, run_id: str, key: str, value: Any, synchronous: bool | None = None) -> None:
        self.log_batch(run_id, tags=[RunTag(key, str(value))])

    def log_artifacts(self, run_id: str, local_dir: str, artifact_path: str | None = None) -> None:
        self._write(
            {"run_id": run_id, "op": "artifacts", "artifact_path": artifact_path},
            lambda: self._client.log_artifacts(run_id, local_dir, artifact_path),
            lambda folder: shutil.copytree(local_dir, folder, dirs_exist_ok=True),
        )

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        self._write(
            {"run_id": run_id, "op": "artifacts", "artifact_path": artifact_path},
            lambda: self._client.log_artifact(run_id, local_path, artifact_path),
            lambda folder: shutil.copy(local_path, folder),
        )

    def _log_file(self, run_id: str, artifact_file: str, send: Callable[[], Any], write: Callable[[Path], Any]) -> None:
        record = {"run_id": run_id, "op": "artifacts", "artifact_path": os.path.dirname(artifact_file) or None}
        self._write(record, send, lambda folder: write(folder / os.path.basename(artifact_file)))

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self._log_file(
            run_id,
            artifact_file,
            lambda: self._client.log_text(run_id, text, artifact_file),
            lambda path: path.write_text(text, encoding="utf-8"),
        )

    def log_image(
        self,
        run_id: str,
        image: Any,
        artifact_file: str | None = None,
        *,
        key: str | None = None,
        step: int = 0,
        timestamp: int | None = None,
    ) -> None:
        """A ``PIL.Image``, as MLflow's ``log_image`` takes it: either a file among the artifacts
        (``artifact_file``), or an image with a key and step (the chart view's image with a step slider)."""
        if artifact_file is not None:
            self._log_file(
                run_id,
                artifact_file,
                lambda: self._client.log_image(run_id, image, artifact_file=artifact_file),
                lambda path: image.save(path),
            )
            return
        timestamp = timestamp or int(time.time() * 1000)
        self._write(
            {"run_id": run_id, "op": "image", "key": key, "step": step, "timestamp": timestamp},
            lambda: self._client.log_image(run_id, image, key=key, step=step, timestamp=timestamp),
            lambda folder: image.save(folder / IMAGE_FILE),
        )

    def set_terminated(self, run_id: str, status: str | None = None, end_time: int | None = None) -> None:
        end = end_time or int(time.time() * 1000)
        self._write(
            {"run_id": run_id, "op": "terminated", "status": status or "FINISHED", "end_time": end},
            lambda: self._client.set_terminated(run_id, status or "FINISHED", end),
        )


def upload(spool_dir: str | Path, tracking_uri: str | None = None, timeout_s: float = 0.0) -> int:
    """Send a spool left by a run; returns how many records are still waiting."""
    folder = Path(spool_dir)
    meta: Mapping[str, str] = json.loads((folder / RUN_FILE).read_text()) if (folder / RUN_FILE).is_file() else {}
    uri = tracking_uri or meta.get("tracking_uri")
    if not uri:
        raise ValueError(f"{folder}: no {RUN_FILE} with the tracking URI; pass tracking_uri=<uri>")
    spool = Spool(folder, sender(MlflowClient(uri), uri))
    spool.flush(timeout_s)
    return len(spool.pending)
