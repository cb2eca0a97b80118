"""What a run is called: its MLflow run name and the key of its run folder.

* :func:`run_name`: ``run_name`` when the config sets it; in a sweep, the job's swept values
  (``lr=0.001,warmup_steps=100``, :func:`sweep_run_name`); else the experiment's name and a short random id
  (``demo-3f9a2c``, :func:`single_run_name`, also what the MLflow logger takes when given no name).
* :func:`run_key`: the run folder's key, ``run_name`` or a hash of the command's overrides: the same command
  finds the same folder again (``broadclass.training.resume``).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf


def single_run_name(experiment_name: str) -> str:
    """``demo-3f9a2c``: the experiment's name and a short random id (not Python's seeded ``random``)."""
    return f"{experiment_name}-{secrets.token_hex(3)}"


def sweep_run_name(job_overrides: Mapping[str, str], swept: Iterable[str]) -> str:
    """``lr=0.001,warmup_steps=100``: a sweep job's values of the swept keys, as its run name.

    A key is shown by its last part (``model.lr`` → ``lr``), in full where two swept keys share it.
    """
    keys = [key for key in job_overrides if key in set(swept)]
    short = [key.rsplit(".", 1)[-1] for key in keys]
    shown = [name if short.count(name) == 1 else key for key, name in zip(keys, short, strict=True)]
    return ",".join(f"{name}={job_overrides[key]}" for name, key in zip(shown, keys, strict=True))


def overrides_by_key(texts: list[str]) -> dict[str, str]:
    """``["+experiment=demo", "model.lr=0.001"]`` → ``{"experiment": "demo", "model.lr": "0.001"}``."""
    parsed = OverridesParser.create().parse_overrides(list(texts))
    return {override.key_or_group: text.split("=", 1)[1] for override, text in zip(parsed, texts, strict=True)}


def swept_keys() -> set[str]:
    """The keys a Hydra sweep varies: the sweeper's ``params`` and the command line's sweeps (``a=1,2``).

    A job sees only its own overrides; the command line's sweeps are read from the ``multirun.yaml`` that
    Hydra's basic sweeper writes into the sweep folder before it launches a job (any launcher).
    """
    hydra_cfg = HydraConfig.get()
    texts = [f"{key}={value}" for key, value in (hydra_cfg.sweeper.get("params") or {}).items()]
    record = Path(hydra_cfg.sweep.dir) / "multirun.yaml"
    if record.is_file():
        texts += list(OmegaConf.load(record).hydra.overrides.task)
    return {o.key_or_group for o in OverridesParser.create().parse_overrides(texts) if o.is_sweep_override()}


def run_name(cfg: DictConfig) -> str:
    """``run_name`` when set; in a sweep, the job's swept values (``lr=0.001,warmup_steps=100``); else
    the experiment's name and a short id."""
    if cfg.run_name:
        return cfg.run_name
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        name = sweep_run_name(overrides_by_key(list(hydra_cfg.overrides.task)), swept_keys())
        if name:
            return name
    return single_run_name(cfg.experiment_name)


def run_key(overrides: str, run_name: str | None) -> str:
    """``run_name``, or a short hash of the command line's overrides (``hydra.job.override_dirname``)."""
    return run_name or hashlib.sha1(overrides.encode()).hexdigest()[:8]
