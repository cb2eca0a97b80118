"""A real `mlflow server` as a subprocess, and the overrides of a short run that logs to one."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from broadclass.tracking.store import server_reachable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """`mlflow server` as a subprocess: SQLite backend, local artifact root, loopback, one worker; with
    ``admin_password``, MLflow's basic-auth app (logins and permissions; its users in ``folder/auth.db``)."""

    def __init__(self, folder: Path, database: Path, admin_password: str | None = None):
        self.folder = folder
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.command = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{database}",
            "--default-artifact-root",
            str(folder / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        self.env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        if admin_password is not None:
            # The lab set-up of experiments/reliability/README.md: users read every experiment, write their own.
            config = folder / "basic_auth.ini"
            config.write_text(
                f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{folder / 'auth.db'}\n"
                "admin_username = admin\nauthorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            )
            self.command += ["--app-name", "basic-auth"]
            self.env |= {
                "MLFLOW_AUTH_CONFIG_PATH": str(config),
                "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
                "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
            }
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> None:
        env = self.env
        log = (self.folder / "server.log").open("a")
        self.process = subprocess.Popen(self.command, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while server_reachable(self.uri, timeout=1) is not None:
            assert self.process.poll() is None, (self.folder / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)  # stops its workers too
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        assert server_reachable(self.uri, timeout=1) is not None


# A short run logging to the server: every step's metrics, no test pass, no export, no card.
SHORT = ["test_after_fit=false", "trainer.log_every_n_steps=1", "~callbacks.export_model", "~callbacks.model_card"]
