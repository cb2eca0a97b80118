"""OmegaConf resolvers and the typed checks run on a composed config before anything is built.

The foundation every layer may import (the package imports it first, registering the resolvers): it imports
nothing of broadclass. The one resolver that needs a layer, ``bc.run_dir``, is registered by that layer
(``broadclass.training.resume``), which the training entry point imports before Hydra resolves its run dir.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
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


# The typed sections and the arguments their constructor gets from its caller instead (train passes the labels the
# data module built). A section's schema is its constructor's signature (:func:`constructor_schema`): every value
# is stated once, in the YAML, and the keys are those the code takes, so a new argument needs only its YAML key.
SECTIONS = {"model": ("labels",), "data": ()}


@dataclass
class MonitorSchema:
    metric: str = MISSING
    mode: str = MISSING


def _structured_type(hint: Any) -> Any:
    """The OmegaConf type that checks values of the annotation ``hint`` (Any where OmegaConf cannot)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in (int, float, bool, str):
        return hint
    if origin in (types.UnionType, typing.Union):
        others = [arg for arg in args if arg is not type(None)]
        if len(others) == 1 and len(others) < len(args):
            inner = _structured_type(others[0])
            return Any if inner is Any else typing.Optional[inner]  # noqa: UP045 (OmegaConf reads typing.Optional)
        return Any
    if origin in (list, tuple, collections.abc.Sequence) and len(args) == 1 and args[0] in (int, float, bool, str):
        return list[args[0]]
    return Any


def constructor_schema(target: str, given: Sequence[str] = ()) -> type:
    """A dataclass of the arguments the class or function ``target`` takes from config (all but ``given``), each
    typed as its annotation says and required (no defaults: the YAML states every value)."""
    import hydra.utils

    built = hydra.utils.get_object(target)
    function = built.__init__ if isinstance(built, type) else built
    hints = typing.get_type_hints(function)
    fields = [(key, str, field(default=MISSING)) for key in ("_target_", "_convert_")]
    for name, parameter in inspect.signature(function).parameters.items():
        if name == "self" or name in given or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        fields.append((name, _structured_type(hints.get(name, Any)), field(default=MISSING)))
    return dataclasses.make_dataclass(target.rsplit(".", 1)[-1] + "Config", fields)


def _checked(section: str, node: DictConfig, schema: type) -> None:
    try:
        # Resolved here, in the whole config: a key may point outside its section (model.sample_rate).
        merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.to_container(node, resolve=True))
    except OmegaConfBaseException as err:
        raise ConfigError(f"config section '{section}': {err.msg if hasattr(err, 'msg') else err}") from None
    stated = set(node.keys())
    absent = sorted(key for key in OmegaConf.missing_keys(merged) if key not in stated and not key.startswith("_"))
    if absent:
        raise ConfigError(
            f"config section '{section}' lacks {', '.join(absent)}: {node._target_} takes them (state each in the YAML)"
        )


def check_config(cfg: DictConfig, sections: Sequence[str] = (*SECTIONS, "monitor")) -> None:
    """Check the typed ``sections`` (each against its constructor, ``monitor`` against its schema) and the
    values nothing else checks; raise one clear ConfigError. (``pretrain`` checks ``data`` and ``monitor``: its
    ``model`` is another module's.)"""
    for section in sections:
        if section not in cfg:
            raise ConfigError(f"config has no '{section}' section")
        node = cfg[section]
        if section == "monitor":
            _checked(section, node, MonitorSchema)
            continue
        target = node.get("_target_")
        if not target:
            raise ConfigError(f"config section '{section}' names no _target_ (the class it builds)")
        try:
            schema = constructor_schema(target, SECTIONS[section])
        except (ImportError, AttributeError, ValueError) as err:
            raise ConfigError(f"config section '{section}': _target_ {target} cannot be found: {err}") from None
        _checked(section, node, schema)
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
