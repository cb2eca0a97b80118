"""OmegaConf resolvers and the typed checks run on a composed config before anything is built.

The foundation every layer may import (the package imports it first, registering the resolvers): it imports
nothing of broadclass. The one resolver that needs a layer, ``bc.run_dir``, is registered by that layer
(``broadclass.training.resume``), which the training entry point imports before Hydra resolves its run dir.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


def project_root() -> Path:
    """The project folder: ``$BROADCLASS_ROOT``, else the working directory. The default MLflow store
    (``mlflow.db``, ``mlruns/``), the run folders and the data live under it (``${bc.root:}`` in the config)."""
    return Path(os.environ.get("BROADCLASS_ROOT") or Path.cwd())


def _mixed_precision() -> str:
    """fp16 autocast on CUDA (what the reference runs used); bf16 autocast on CPU, where fp16 is slow."""
    import torch

    return "16-mixed" if torch.cuda.is_available() else "bf16-mixed"


def register_resolvers() -> None:
    for name, fn in {
        "bc.root": lambda: str(project_root()),
        "bc.mul": lambda a, b: int(a) * int(b),
        "bc.positive": lambda value: float(value or 0) > 0,
        "bc.mixed_precision": _mixed_precision,
    }.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()


class ConfigError(ValueError):
    pass


@dataclass
class MonitorSchema:
    metric: str = "val/macro_avg/f1"
    mode: str = "max"


@dataclass
class ModelSchema:
    _target_: str = "broadclass.model.module.BroadClassModule"
    _convert_: str = "all"
    pretrained: Any = None
    config: Any = None
    freeze_feature_encoder: bool = True
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 200
    decision_rule: str = "posterior"
    category_head_weight: float = 0.0
    ctc_loss_reduction: str = "mean"
    gradient_checkpointing: bool = False


@dataclass
class DataSchema:
    _target_: str = "broadclass.data.datamodule.BroadClassDataModule"
    _convert_: str = "all"
    labels: Any = None
    categories: list[Any] = field(default_factory=list)
    train_manifest: Any = None
    val_manifest: Any = None
    test_manifest: Any = None
    prepare: Any = None
    batch_size: int = 8
    eval_batch_size: int = 8
    num_workers: int = 0
    sample_rate: int = 16000
    cache_dir: Any = None
    seed: int = 0
    bucket_jitter: float = 0.02
    padded_lengths_per_octave: int = 16
    on_error: str = "raise"
    allow_speaker_overlap: bool = False
    max_duration: float | None = 30.0
    speed_perturbation: list[float] | None = None


SCHEMAS = {"model": ModelSchema, "data": DataSchema, "monitor": MonitorSchema}


def check_config(cfg: DictConfig) -> None:
    """Check the typed sections and the values nothing else checks; raise one clear ConfigError."""
    for section, schema in SCHEMAS.items():
        if section not in cfg:
            raise ConfigError(f"config has no '{section}' section")
        try:
            OmegaConf.merge(OmegaConf.structured(schema), cfg[section])
        except OmegaConfBaseException as err:
            raise ConfigError(f"config section '{section}': {err.msg if hasattr(err, 'msg') else err}") from None
    # Hydra's own node (present when composed with return_hydra_config) has ??? fields Hydra fills itself.
    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra."))
    if missing:
        raise ConfigError(f"required config values are not set (???): {', '.join(missing)}")
    if cfg.monitor.mode not in ("min", "max"):
        raise ConfigError(f"monitor.mode must be 'min' or 'max', got {cfg.monitor.mode!r}")
    if not cfg.data.categories:
        raise ConfigError("data.categories is empty: list the utterance categories as {name, tag} pairs")
