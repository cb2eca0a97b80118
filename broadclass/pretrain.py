"""Entry point: ``python -m broadclass.pretrain +experiment=demo_pretrain``.

Self-supervised pretraining of an encoder on audio without transcriptions (broadclass.model.pretraining): compose
the config (conf/pretrain.yaml), build everything from it, fit, write the best checkpoint's network as a
HuggingFace folder and print that folder as the last line, for ``python -m broadclass.train ...
model.pretrained=<folder>``. Returns the monitored metric (a Hydra sweeper can optimise it).
"""

from __future__ import annotations

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

from broadclass.config import check_config
from broadclass.tracking.mlflow_run import describe_run, ensure_experiment, log_run_setup, mlflow_logger
from broadclass.train import run_tags
from broadclass.training.errors import reporting_configuration_errors
from broadclass.training.resume import find_resume_point, mark_finished, remember_run
from broadclass.training.run_naming import run_name


def pretrain(cfg: DictConfig) -> float | None:
    check_config(cfg, sections=("data", "monitor"))
    pl.seed_everything(cfg.seed, workers=True)
    resume = find_resume_point(cfg.paths.output_dir, cfg.resume)
    if "mlflow" in cfg.logger:
        from broadclass.tracking.store import check_tracking_server

        check_tracking_server(cfg.logger.mlflow.tracking_uri)
        ensure_experiment(cfg.logger.mlflow)
    resumed_run = {"mlflow": {"run_id": resume.mlflow_run_id, "run_name": run_name(cfg)}}
    loggers = [instantiate(c, **resumed_run.get(name, {})) for name, c in cfg.logger.items()]
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    trainer = instantiate(cfg.trainer, logger=loggers, callbacks=callbacks)
    tracker = mlflow_logger(loggers)
    if tracker is not None and trainer.is_global_zero:
        remember_run(cfg.paths.output_dir, tracker.run_id, tracker._tracking_uri)
        if resume.mlflow_run_id is None:
            log_run_setup(tracker, cfg, None, run_tags())
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume.checkpoint)
    if trainer.is_global_zero:
        mark_finished(cfg.paths.output_dir)
        if tracker is not None:
            print(describe_run(tracker))
        saved = next((c.saved for c in callbacks if getattr(c, "saved", None)), None)
        if saved:
            print(f"Pretrained encoder (fine-tune it with model.pretrained=<this folder>):\n{saved}")
    score = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
    return float(score) if score is not None else None


@hydra.main(version_base="1.3", config_path="conf", config_name="pretrain")
@reporting_configuration_errors
def main(cfg: DictConfig) -> float | None:
    return pretrain(cfg)


if __name__ == "__main__":
    main()
