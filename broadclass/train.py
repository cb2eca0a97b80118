"""Entry point: ``python -m broadclass.train +experiment=demo``.

Compose the config, build everything from it, fit, evaluate the best checkpoint, and return the
monitored metric (which a Hydra sweeper optimises).
"""

from __future__ import annotations

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from broadclass.config import check_config
from broadclass.tracking.mlflow_run import describe_run, log_run_setup, mlflow_logger


def run_tags() -> dict[str, str]:
    hydra_cfg = HydraConfig.get()
    tags = {"hydra/output_dir": hydra_cfg.runtime.output_dir, "hydra/overrides": " ".join(hydra_cfg.overrides.task)}
    if hydra_cfg.mode.name == "MULTIRUN":
        tags.update({"sweep/dir": hydra_cfg.sweep.dir, "sweep/job": str(hydra_cfg.job.num)})
    return tags


def train(cfg: DictConfig) -> float | None:
    check_config(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    # Built as a partial: Hydra would turn a LabelMap argument into a config node.
    model = instantiate(cfg.model, _partial_=True)(labels=datamodule.label_map)
    loggers = [instantiate(c) for c in cfg.logger.values()]
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    trainer = instantiate(cfg.trainer, logger=loggers, callbacks=callbacks)
    tracker = mlflow_logger(loggers)
    if tracker is not None:
        log_run_setup(tracker, cfg, datamodule.label_map, run_tags())
    trainer.fit(model, datamodule=datamodule)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if cfg.test_after_fit:
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    if tracker is not None:
        print(describe_run(tracker))
    score = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
    return float(score) if score is not None else None


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


if __name__ == "__main__":
    main()
