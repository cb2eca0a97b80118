"""Training as a SLURM job: which job this is, and requeueing it when SLURM warns of preemption or the time limit.

The requeued job runs the same command again; training/resume.py finds the checkpoint saved here and the MLflow
run, so the job goes on into the same run folder and MLflow run (experiments/reliability/README.md).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from typing import Any

import pytorch_lightning as pl

log = logging.getLogger(__name__)


def slurm_job_id() -> str | None:
    """This process's SLURM job (``<array job>_<task>`` for a job of an array, as scontrol names it); None
    outside SLURM."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array:
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


class RequeuedBySlurm(SystemExit):
    """The job checkpointed and put itself back in SLURM's queue: this process ends, the job resumes later."""


class RequeueWhenWarned(pl.Callback):
    """In a SLURM job: on the warning ``signal`` (``sbatch --signal=USR1@<seconds>``, sent before preemption or
    the time limit), save ``<dirpath>/<filename>`` at the end of the current optimizer step, ``scontrol requeue``
    the job and end this process. The requeued job runs the same command, which resumes from the newest
    checkpoint (training/resume.py) into the same run folder and MLflow run.

    The signal only sets a flag. The checkpoint is written at the end of the step, where Lightning's own step
    checkpoints are, never from inside the signal handler in the middle of a step (Lightning's SLURM
    auto-requeue does that); the process ends at the start of the next step, once the step's metrics (and a
    validation due at it) are logged: the resumed run goes on from the step after, so nothing is lost or
    logged twice. A warning during the last step lets the run finish. Under DDP every process saves (the
    checkpoint is collective) as soon as any of them was warned; rank 0 requeues. Outside SLURM (no job id)
    it does nothing.
    """

    def __init__(self, dirpath: str, signal_name: str, filename: str = "requeue.ckpt"):
        self.path = os.path.join(dirpath, filename)
        self.signal = signal.Signals[f"SIG{signal_name}"]
        self.warned = False
        self.checkpoint_saved = False
        self.in_slurm = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.in_slurm = stage == "fit" and slurm_job_id() is not None
        if self.in_slurm:
            # Before Lightning's signal connector (Trainer._run): seeing a handler, it adds no auto-requeue of its own.
            signal.signal(self.signal, self._warn)

    def _warn(self, signum: int, frame: Any) -> None:
        log.warning("SLURM warned this job (%s): checkpoint after this step, then requeue", signal.Signals(signum).name)
        self.warned = True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.in_slurm and trainer.strategy.reduce_boolean_decision(self.warned, all=False):
            trainer.save_checkpoint(self.path)
            self.checkpoint_saved = True

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if not self.checkpoint_saved:
            return
        if trainer.is_global_zero:
            job = slurm_job_id()
            subprocess.run(["scontrol", "requeue", job], check=True)
            log.warning("checkpoint %s saved at step %d; SLURM job %s requeued", self.path, trainer.global_step, job)
        raise RequeuedBySlurm(0)
