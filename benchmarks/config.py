"""The training config as the benchmarks compose it: ``train.yaml`` with Hydra overrides, as ``python -m
broadclass.train`` would, without running Hydra's app (no output folder, no logging set-up)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from broadclass.config import register_resolvers

CONF_DIR = Path(__file__).resolve().parents[1] / "broadclass" / "conf"


def compose_config(overrides: Sequence[str]) -> DictConfig:
    register_resolvers()  # the config's own resolvers (${bc.root:}, ...), which a fresh interpreter lacks
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))
