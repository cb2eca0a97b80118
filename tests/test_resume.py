"""Resume after a crash: SIGKILL a real training process, run the same command again, get the same run."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from subprocess import STDOUT

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.demos.boring_classes import BoringModel

from broadclass.data.datamodule import LengthBucketBatchSampler
from broadclass.train import train
from broadclass.training.resumable_state import BestAndLastCheckpoint
from broadclass.training.resume import FINISHED_FILE, find_resume_point, run_dir
from tests.helpers.config import TEST_MODEL
from tests.helpers.processes import REPO, environment
from tests.helpers.resume import STEPS, histories, last_logged_step


def command(root: Path, corpus: dict[str, Path]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "broadclass.train",
        "+experiment=demo",
        f"paths.root_dir={root}",
        f"data.train_manifest={corpus['train']}",
        f"data.val_manifest={corpus['validation']}",
        "data.manifests_from=null",
        f"data.cache_dir={root.parent / 'audio-cache'}",
        "trainer.enable_progress_bar=false",
        *TEST_MODEL,
        *STEPS,
    ]


@pytest.fixture
def roots(tmp_path, empty_mlflow_db) -> tuple[Path, Path]:
    roots = tmp_path / "killed", tmp_path / "reference"
    for root in roots:
        root.mkdir()
        shutil.copy(empty_mlflow_db, root / "mlflow.db")
    return roots


@pytest.mark.slow
@pytest.mark.timeout(1200)  # a limit for hangs, several times its duration on a loaded 2-core machine
def test_a_killed_run_resumes_into_the_same_mlflow_run_with_the_same_numbers(roots, demo_corpus):
    killed, reference = roots
    cmd = command(killed, demo_corpus)
    logs = {name: (killed.parent / f"{name}.log").open("w+") for name in ("uninterrupted", "killed")}
    # The uninterrupted run, alongside (its own store and folder, the same data and seed).
    uninterrupted = subprocess.Popen(
        command(reference, demo_corpus), cwd=REPO, env=environment(), stdout=logs["uninterrupted"], stderr=STDOUT
    )
    process = subprocess.Popen(cmd, cwd=REPO, env=environment(), stdout=logs["killed"], stderr=STDOUT)
    deadline = time.monotonic() + 300
    # Killed between checkpoints (every 5 steps, and at the validation at 8): steps 11-12 are logged
    # again after the resume from step 10, and must not appear twice.
    while last_logged_step(killed / "mlflow.db") < 12:
        assert process.poll() is None, Path(logs["killed"].name).read_text()[-3000:]
        assert time.monotonic() < deadline, "training did not reach step 12"
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    (folder,) = (killed / "outputs" / "demo" / "runs").iterdir()
    assert not (folder / FINISHED_FILE).exists()

    resumed = subprocess.run(cmd, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # (a) the same folder, from a checkpoint: not a new run from step 0
    assert [p.name for p in (killed / "outputs" / "demo" / "runs").iterdir()] == [folder.name]
    assert f"Restoring states from the checkpoint path at {folder}/checkpoints/" in resumed.stderr + resumed.stdout
    assert (folder / FINISHED_FILE).exists()

    assert uninterrupted.wait(timeout=300) == 0, Path(logs["uninterrupted"].name).read_text()[-3000:]

    runs, resumed_metrics = histories(killed)
    # (b) one MLflow run, finished, every metric at the same steps as the uninterrupted run, none twice
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    _, reference_metrics = histories(reference)
    for key, points in resumed_metrics.items():
        steps = [step for step, _ in points]
        assert len(steps) == len(set(steps)), f"{key}: steps logged twice"
    assert {k: [s for s, _ in v] for k, v in resumed_metrics.items()} == {
        k: [s for s, _ in v] for k, v in reference_metrics.items()
    }
    assert [s for s, _ in resumed_metrics["train/loss"]] == list(range(16))
    # (c) the same numbers, bit for bit: training losses at every step and the final validation report
    assert resumed_metrics == reference_metrics


@pytest.mark.parametrize("batching", [[], ["data.batch_seconds=9"]], ids=["rows", "seconds"])
def test_a_run_resumed_in_process_continues_where_it_stopped(train_config, tmp_path, batching):
    """Fast variant: the same command after an exception at step 7 resumes from the step-5 checkpoint; with
    batches by seconds too (9 s: 11 batches an epoch of the small corpus against 6 of 8 rows)."""
    steps = [s for s in STEPS if not s.startswith(("trainer.max_steps", "val_every"))]
    overrides = [*steps, *batching, "trainer.max_steps=9", "val_every_n_optimizer_steps=9"]
    crash = ["+callbacks.crash._target_=tests.helpers.resume.CrashAt"]
    cfg = train_config(*overrides, *crash, "+callbacks.crash.at_step=7")
    with pytest.raises(RuntimeError, match="crash at step 7"):
        train(cfg)
    point = find_resume_point(cfg.paths.output_dir, "auto")
    assert Path(point.checkpoint).name == "latest.ckpt" and point.mlflow_run_id is not None
    train(train_config(*overrides, *crash, "+callbacks.crash.at_step=99"))
    runs, metrics = histories(tmp_path)
    assert len(runs) == 1 and runs[0].info.run_id == point.mlflow_run_id
    assert [s for s, _ in metrics["train/loss"]] == list(range(9))
    assert find_resume_point(cfg.paths.output_dir, "auto").checkpoint is None  # finished: not resumed again


def test_the_same_command_finds_its_unfinished_run_folder_and_a_finished_one_starts_anew(tmp_path):
    first = run_dir(str(tmp_path), "+experiment=demo,model.lr=0.1", None, "auto")
    Path(first).mkdir()
    assert run_dir(str(tmp_path), "+experiment=demo,model.lr=0.1", None, "auto") == first
    assert run_dir(str(tmp_path), "+experiment=demo,model.lr=0.2", None, "auto") != first
    assert run_dir(str(tmp_path), "+experiment=demo,model.lr=0.1", None, "never") != first
    named = run_dir(str(tmp_path), "", "run", "auto")
    assert named.endswith("_run")
    Path(named).mkdir()
    (tmp_path / "2099-01-01_00-00-00_long_run").mkdir()  # newer, and also ending in _run: not this run's
    assert run_dir(str(tmp_path), "", "run", "auto") == named
    (Path(first) / FINISHED_FILE).write_text("")
    assert run_dir(str(tmp_path), "+experiment=demo,model.lr=0.1", None, "auto") != first


@pytest.mark.parametrize("batch_seconds", [None, 12.0], ids=["rows", "seconds"])
def test_the_train_sampler_goes_on_after_the_batches_already_trained(batch_seconds):
    durations = [1.0 + (i * 7) % 11 for i in range(40)]

    def sampler() -> LengthBucketBatchSampler:
        return LengthBucketBatchSampler(durations, 4, seed=1, jitter=0.02, batch_seconds=batch_seconds)

    uninterrupted = sampler()
    uninterrupted.set_epoch(2)
    epoch_2 = list(uninterrupted)
    resumed = sampler()
    resumed.resume(2, 3)  # a checkpoint after 3 batches of epoch 2
    resumed.set_epoch(2)  # Lightning sets the epoch again before iterating
    assert list(resumed) == epoch_2[3:]
    assert list(resumed) == epoch_2  # only the first pass of the epoch skips
    finished = sampler()
    finished.resume(2, len(epoch_2))  # saved after the epoch's last batch: the next epoch, whole
    uninterrupted.set_epoch(3)
    assert finished.epoch == 3 and list(finished) == list(uninterrupted)


def test_last_checkpoint_follows_every_validation_after_the_metric_stops_improving(tmp_path):
    # A monitored metric that only falls: Lightning alone would leave last.ckpt at the first step.
    class Worsening(BoringModel):
        def validation_step(self, batch, batch_idx):
            self.log("score", -float(self.global_step))

    checkpoint = BestAndLastCheckpoint(dirpath=tmp_path, monitor="score", mode="max", save_top_k=1, save_last=True)
    trainer = pl.Trainer(
        max_steps=12,
        val_check_interval=4,
        limit_val_batches=1,
        callbacks=[checkpoint],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Worsening())
    assert Path(checkpoint.best_model_path).name == "epoch=0-step=4.ckpt"
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 12
