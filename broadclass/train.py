"""Entry point: ``python -m broadclass.train +experiment=demo``.

Compose the config, build everything from it, fit, evaluate the best checkpoint, and return the
monitored metric (which a Hydra sweeper optimises).
"""

from __future__ import annotations

from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig

from broadclass.config import check_config
from broadclass.tracking.mlflow_run import describe_run, ensure_experiment, log_run_setup, mlflow_logger
from broadclass.tracking.pretraining import local_encoder, pretraining_tags
from broadclass.tracking.store import default_tracking_uri
from broadclass.training.errors import reporting_configuration_errors
from broadclass.training.resume import find_resume_point, mark_finished, remember_run
from broadclass.training.run_naming import run_name
from broadclass.training.slurm import slurm_job_id


def run_tags() -> dict[str, str]:
    hydra_cfg = HydraConfig.get()
    tags = {"hydra/output_dir": hydra_cfg.runtime.output_dir, "hydra/overrides": " ".join(hydra_cfg.overrides.task)}
    if hydra_cfg.mode == RunMode.MULTIRUN:  # None when composed (tests, notebooks) rather than run
        # sweep/id: the sweep folder's name (its start time by default), shared by every job of the sweep.
        sweep_dir = Path(hydra_cfg.sweep.dir).resolve()
        tags.update({"sweep/dir": str(sweep_dir), "sweep/id": sweep_dir.name, "sweep/job": str(hydra_cfg.job.num)})
    if slurm_job_id() is not None:  # the SLURM job that ran it (`<array job>_<task>` in an array)
        tags["slurm/job_id"] = slurm_job_id()
    return tags


def train(cfg: DictConfig) -> float | None:
    check_config(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    resume = find_resume_point(cfg.paths.output_dir, cfg.resume)
    if "mlflow" in cfg.logger:
        # Imported only for a run that logs to MLflow: `logger=none` runs where MLflow is not installed.
        from broadclass.tracking.store import check_tracking_server

        check_tracking_server(cfg.logger.mlflow.tracking_uri)  # an unreachable server stops the run here, in seconds
        ensure_experiment(cfg.logger.mlflow)  # before the loggers open the store: parallel sweep jobs would race
    tracking_uri = cfg.logger.mlflow.tracking_uri if "mlflow" in cfg.logger else default_tracking_uri()
    # models:/<id> of a pretraining run (or any logged model) is fetched into the cache; a folder or hub id stays.
    cfg.model.pretrained = local_encoder(cfg.model.get("pretrained"), tracking_uri, cfg.paths.cache_dir)
    # A resumed run logs into its MLflow run.
    resumed_run = {"mlflow": {"run_id": resume.mlflow_run_id, "run_name": run_name(cfg)}}
    loggers = [instantiate(c, **resumed_run.get(name, {})) for name, c in cfg.logger.items()]
    datamodule = instantiate(cfg.data)
    # Built as a partial: Hydra would turn a LabelMap argument into a config node.
    model = instantiate(cfg.model, _partial_=True)(labels=datamodule.label_map)
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    trainer = instantiate(cfg.trainer, logger=loggers, callbacks=callbacks)
    tracker = mlflow_logger(loggers)
    if tracker is not None and trainer.is_global_zero:
        remember_run(cfg.paths.output_dir, tracker.run_id, tracker._tracking_uri)
        if resume.mlflow_run_id is None:
            log_run_setup(tracker, cfg, datamodule.label_map, {**run_tags(), **pretraining_tags(cfg.model.pretrained)})
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume.checkpoint)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if cfg.test_after_fit:
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    if trainer.is_global_zero:
        mark_finished(cfg.paths.output_dir)
        if tracker is not None:
            print(describe_run(tracker))
    score = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
    return float(score) if score is not None else None


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@reporting_configuration_errors
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


if __name__ == "__main__":
    main()
