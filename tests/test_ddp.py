"""DDP on CPU (gloo): two real processes launched by Lightning from the Hydra command report what one process does."""

from __future__ import annotations

import shutil
import subprocess

import mlflow
import numpy as np
import pytest

from tests.helpers.config import SMALL_XLSR, TEST_MODEL
from tests.helpers.ddp import SHARED, assert_single_process_report, ddp_command
from tests.helpers.processes import REPO, environment


@pytest.mark.slow
@pytest.mark.timeout(1200)  # a limit for hangs, several times its duration on a loaded 2-core machine
def test_two_cpu_processes_report_what_one_process_reports(tmp_path, demo_corpus, empty_mlflow_db, train_config):
    root = tmp_path / "ddp"
    root.mkdir()
    shutil.copy(empty_mlflow_db, root / "mlflow.db")
    done = subprocess.run(
        ddp_command(root, demo_corpus, *TEST_MODEL, *SHARED),
        cwd=REPO,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in done.stderr + done.stdout

    client = mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    (folder,) = (root / "outputs" / "demo" / "runs").iterdir()
    assert_single_process_report(client, run, folder, train_config, tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(1200)  # a limit for hangs, several times its duration on a loaded 2-core machine
def test_activation_checkpointing_with_layerdrop_trains_under_ddp(tmp_path, demo_corpus, empty_mlflow_db):
    # The recipe's layout (XLSR: layer-norm feature encoder, stable layer norm) at a small width, with
    # checkpointing and a LayerDrop that skips a layer in about half the steps: DDP must expect unused weights.
    shutil.copy(empty_mlflow_db, tmp_path / "mlflow.db")
    overrides = [*SMALL_XLSR, "model.gradient_checkpointing=true", "model.freeze_feature_encoder=true"]
    command = ddp_command(
        tmp_path, demo_corpus, *overrides, *SHARED, "trainer.max_steps=6", "trainer.precision=bf16-mixed"
    )
    done = subprocess.run(command, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["model/gradient_checkpointing"] == "True"
    assert np.isfinite(run.data.metrics["val/loss"])
