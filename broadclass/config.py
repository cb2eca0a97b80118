"""OmegaConf resolvers and the typed checks run on a composed config before anything is built.

The foundation every layer may import (the package imports it first, registering the resolvers): it imports
nothing of broadclass. The one resolver that needs a layer, ``bc.run_dir``, is registered by that layer
(``broadclass.training.resume``), which the training entry point imports before Hydra resolves its run dir.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
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


# The types of the typed sections, not their values: every value is stated once, in the YAML (conf/model/,
# conf/data/, train.yaml's monitor), or where the YAML leaves a key out, in the constructor it is passed to.
@dataclass
class MonitorSchema:
    metric: str = MISSING
    mode: str = MISSING


@dataclass
class ModelSchema:
    _target_: str = MISSING
    _convert_: str = MISSING
    pretrained: Any = MISSING
    config: Any = MISSING
    freeze_feature_encoder: bool = MISSING
    lr: float = MISSING
    betas: list[float] = MISSING
    eps: float = MISSING
    weight_decay: float = MISSING
    warmup_steps: int = MISSING
    primary_rule: str = MISSING
    category_head_weight: float = MISSING
    ctc_loss_reduction: str = MISSING
    gradient_checkpointing: bool = MISSING


@dataclass
class DataSchema:
    _target_: str = MISSING
    _convert_: str = MISSING
    labels: Any = MISSING
    categories: list[Any] | None = MISSING  # null (with labels null): unlabeled audio
    train_manifest: Any = MISSING
    val_manifest: Any = MISSING
    test_manifest: Any = MISSING
    manifests_from: Any = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    batch_seconds: float | None = MISSING
    eval_batch_seconds: float | None = MISSING
    batch_quadratic_duration: float | None = MISSING
    num_workers: int = MISSING
    sample_rate: int = MISSING
    cache_dir: Any = MISSING
    seed: int = MISSING
    bucket_jitter: float = MISSING
    padded_lengths_per_octave: int = MISSING
    on_error: str = MISSING
    allow_speaker_overlap: bool = MISSING
    max_duration: float | None = MISSING
    speed_perturbation: list[float] | None = MISSING


SCHEMAS = {"model": ModelSchema, "data": DataSchema, "monitor": MonitorSchema}


def check_config(cfg: DictConfig, sections: Sequence[str] = tuple(SCHEMAS)) -> None:
    """Check the typed ``sections`` and the values nothing else checks; raise one clear ConfigError.
    (``pretrain`` checks ``data`` and ``monitor``: its ``model`` is another module's.)"""
    for section in sections:
        schema = SCHEMAS[section]
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
    if "model" in sections and cfg.data.categories is None:
        raise ConfigError(
            "data.categories is null (unlabeled audio): training needs the utterance categories as {name, tag} pairs"
        )
    if "model" in sections and not cfg.data.categories:
        raise ConfigError("data.categories is empty: list the utterance categories as {name, tag} pairs")
