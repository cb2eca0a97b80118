"""Resume a crashed run: the same command continues from its newest checkpoint, into the same MLflow run.

* The run folder is stable (``hydra.run.dir`` from :func:`run_dir`): ``<time>_<key>``, the key being
  ``run_name`` or a hash of the command's overrides. With ``resume=auto`` the newest folder of that key
  is reused unless its run finished (a ``FINISHED`` file), so re-running the command finds it.
* :func:`find_resume_point` picks the newest checkpoint in ``<run>/checkpoints`` and the MLflow run id
  kept beside it (``mlflow_run.json``, written by :func:`remember_run` when the run is created).
* ``broadclass.training.resumable_state.RestoreRandomState`` keeps the random generators (dropout, SpecAugment)
  in the checkpoint and puts them back just before the first resumed step; the datamodule's train loader
  is stateful, so the epoch goes on from the batch after the checkpoint (see ``ResumableDataLoader``). On
  CPU with ``trainer.deterministic=true`` a resumed run's numbers equal an uninterrupted run's, bit for bit.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from broadclass.training.run_naming import run_key

log = logging.getLogger(__name__)

RESUME_MODES = ("auto", "never")
RUN_FILE = "mlflow_run.json"
FINISHED_FILE = "FINISHED"
CHECKPOINT_DIR = "checkpoints"
TIME_FORMAT = "%Y-%m-%d_%H-%M-%S"
TIME_LENGTH = len("2026-01-31_23-59-59")


def run_dir(parent: str, overrides: str, run_name: str | None, resume: str) -> str:
    """The newest unfinished ``<parent>/<time>_<key>`` with ``resume=auto``; otherwise a new one."""
    key = run_key(overrides, run_name)
    if resume == "auto":
        earlier = sorted(p for p in Path(parent).glob(f"*_{key}") if p.name[TIME_LENGTH + 1 :] == key)
        if earlier and not (earlier[-1] / FINISHED_FILE).exists():
            return str(earlier[-1])
    while Path(new := f"{parent}/{time.strftime(TIME_FORMAT)}_{key}").exists():
        time.sleep(0.1)  # names carry the time to the second; never reuse a folder
    return new


# `${bc.run_dir:...}` in conf/hydra/default.yaml. Cached: the folder is chosen once per process, however often
# Hydra resolves the run dir. Registered here, with the naming it calls (broadclass.config imports no layer).
if not OmegaConf.has_resolver("bc.run_dir"):
    OmegaConf.register_new_resolver("bc.run_dir", run_dir, use_cache=True)


@dataclass(frozen=True)
class ResumePoint:
    checkpoint: str | None = None
    mlflow_run_id: str | None = None


def find_resume_point(output_dir: str | Path, resume: str) -> ResumePoint:
    """Where to go on from in ``output_dir``: nothing for a new, finished or ``resume=never`` run."""
    if resume not in RESUME_MODES:
        raise ValueError(f"resume must be one of {RESUME_MODES}, got {resume!r}")
    folder = Path(output_dir)
    if resume == "never" or (folder / FINISHED_FILE).exists():
        return ResumePoint()
    # Lightning writes checkpoints atomically (temporary file, then rename): the newest is whole.
    checkpoints = sorted((folder / CHECKPOINT_DIR).glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns)
    if not checkpoints:
        return ResumePoint()
    run_file = folder / RUN_FILE
    run_id = json.loads(run_file.read_text())["run_id"] if run_file.is_file() else None
    log.warning("resuming from %s (MLflow run %s)", checkpoints[-1], run_id or "new")
    return ResumePoint(str(checkpoints[-1]), run_id)


def remember_run(output_dir: str | Path, run_id: str, tracking_uri: str) -> None:
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RUN_FILE).write_text(json.dumps({"run_id": run_id, "tracking_uri": tracking_uri}) + "\n")


def mark_finished(output_dir: str | Path) -> None:
    """A finished run is never resumed: the same command then starts a new run folder."""
    (Path(output_dir) / FINISHED_FILE).write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))
