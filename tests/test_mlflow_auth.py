"""A lab's shared tracking server with logins (`mlflow server --app-name basic-auth`): jobs authenticate from
the environment, the credentials are written nowhere, and a refused user is told so before training."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import mlflow
import pytest
import pytorch_lightning as pl
import requests

from broadclass import send_spool
from broadclass.tracking.store import TrackingServerRefused
from broadclass.train import train
from tests.helpers.config import demo_overrides
from tests.helpers.mlflow_server import SHORT, MlflowServer
from tests.helpers.processes import REPO, environment

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

ADMIN = ("admin", "admin-password-for-tests")
# Users read every experiment and write the ones they made (default_permission = READ).
ALICE = ("alice", "alice-password-4711")
BOB = ("bob", "bob-password-0815")
CAROL = ("carol", "carol-password-1234")


@pytest.fixture(scope="module")
def server(tmp_path_factory, empty_mlflow_db):
    folder = tmp_path_factory.mktemp("mlflow-auth")
    shutil.copy(empty_mlflow_db, folder / "mlflow.db")
    server = MlflowServer(folder, folder / "mlflow.db", admin_password=ADMIN[1])
    server.start()
    for name, password in (ALICE, BOB, CAROL):
        created = requests.post(
            f"{server.uri}/api/2.0/mlflow/users/create", json={"username": name, "password": password}, auth=ADMIN
        )
        assert created.ok, created.text
    yield server
    server.stop()


def as_user(monkeypatch, server: MlflowServer, user: tuple[str, str]) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", user[1])


def admin_client(server: MlflowServer, monkeypatch) -> mlflow.MlflowClient:
    as_user(monkeypatch, server, ADMIN)
    return mlflow.MlflowClient(server.uri)


def secrets_of(user: tuple[str, str]) -> list[str]:
    """The password, and the HTTP Basic header value that carries it."""
    return [user[1], base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()]


def test_a_users_run_logs_with_the_credentials_from_the_environment_and_writes_them_nowhere(
    server, train_config, monkeypatch, tmp_path
):
    as_user(monkeypatch, server, ALICE)
    cfg = train_config(*SHORT, "trainer.max_steps=2", "val_every_n_optimizer_steps=2", "experiment_name=alice-demo")
    train(cfg)
    run_id = json.loads((Path(cfg.paths.output_dir) / "mlflow_run.json").read_text())["run_id"]
    client = admin_client(server, monkeypatch)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.user_id == "alice"  # the server's user, from the login
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [0, 1]

    downloaded = Path(client.download_artifacts(run_id, "", str(tmp_path / "artifacts")))
    artifacts = [p for p in downloaded.rglob("*") if p.is_file()]
    assert any(p.name == "config.yaml" for p in artifacts)  # the run's composed config is among them
    local = [p for p in Path(cfg.paths.output_dir).rglob("*") if p.is_file()]  # logs, .hydra, checkpoints
    texts = {str(p): p.read_bytes().decode("utf-8", "replace") for p in artifacts + local}
    texts["params and tags"] = json.dumps({**run.data.params, **run.data.tags})
    for secret in secrets_of(ALICE):
        assert [where for where, text in texts.items() if secret in text] == []


def test_a_user_without_permission_is_told_before_training_and_writes_nothing(server, train_config, monkeypatch):
    # Alice's experiment: Bob may read it, not log to it.
    as_user(monkeypatch, server, ALICE)
    experiment = mlflow.MlflowClient(server.uri).create_experiment("alice-only")
    as_user(monkeypatch, server, BOB)
    cfg = train_config(*SHORT, "experiment_name=alice-only")
    with pytest.raises(
        TrackingServerRefused,
        match=r"user 'bob' has no permission to create runs in experiment 'alice-only' \(HTTP 403\)\. Nothing was",
    ):
        train(cfg)
    assert admin_client(server, monkeypatch).search_runs([experiment]) == []
    folder = Path(cfg.paths.output_dir)
    assert [name for name in ("checkpoints", "mlflow_run.json", "mlflow_spool") if (folder / name).exists()] == []


def test_wrong_credentials_stop_the_command_with_one_clear_error_before_training(server, demo_corpus, tmp_path):
    wrong = (ALICE[0], "not-alices-password")
    env = {
        **environment(),
        "MLFLOW_TRACKING_URI": server.uri,
        "MLFLOW_TRACKING_USERNAME": wrong[0],
        "MLFLOW_TRACKING_PASSWORD": wrong[1],
    }
    command = [sys.executable, "-m", "broadclass.train", f"paths.root_dir={tmp_path}", *demo_overrides(demo_corpus)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-2:] == [
        f"error: MLflow tracking server {server.uri} refused the credentials (user 'alice'; HTTP 401) when asked "
        "to use experiment 'demo'.",
        "Set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to your account on that server.",
    ]
    assert "Traceback" not in done.stderr and wrong[1] not in done.stderr + done.stdout
    assert list(tmp_path.glob("outputs/demo/runs/*/checkpoints")) == []


class PasswordChange(pl.Callback):
    """The admin changes the training user's password after an optimizer step: every later write is refused."""

    server: ClassVar[MlflowServer]
    new_password: ClassVar[str] = "carols-new-password-99"

    def __init__(self, at_step: int):
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            changed = requests.patch(
                f"{self.server.uri}/api/2.0/mlflow/users/update-password",
                json={"username": CAROL[0], "password": self.new_password},
                auth=ADMIN,
            )
            assert changed.ok, changed.text


def test_writes_the_server_refuses_mid_run_are_kept_in_the_spool_with_the_reason(server, train_config, monkeypatch):
    PasswordChange.server = server
    as_user(monkeypatch, server, CAROL)
    cfg = train_config(
        *SHORT,
        "trainer.max_steps=6",
        "val_every_n_optimizer_steps=3",
        "experiment_name=carol-demo",
        "logger.mlflow.retry_interval_s=0",
        "logger.mlflow.flush_timeout_s=1",
        "+callbacks.password._target_=tests.test_mlflow_auth.PasswordChange",
        "+callbacks.password.at_step=2",
    )
    train(cfg)  # training goes on while the server refuses it
    spool = Path(cfg.paths.output_dir) / "mlflow_spool"
    records = [json.loads(line) for line in (spool / "journal.jsonl").read_text().splitlines()]
    assert records[0]["reason"] == "refused by the server for this user (HTTP 401 UNAUTHENTICATED)"
    assert records[-1]["op"] == "terminated"  # every write from the refusal on, the final status last
    assert not any(secret in (spool / "journal.jsonl").read_text() for secret in secrets_of(CAROL))

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PasswordChange.new_password)
    assert send_spool.main([str(spool)]) == 0  # sent with the credentials the server accepts now
    run_id = json.loads((Path(cfg.paths.output_dir) / "mlflow_run.json").read_text())["run_id"]
    client = mlflow.MlflowClient(server.uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == list(range(6))
    assert [m.step for m in client.get_metric_history(run_id, "val/accuracy")] == [3, 6]
