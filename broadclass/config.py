"""OmegaConf resolvers, the typed checks run on a composed config before anything is built, and the
``key=value`` command line of every entry point but train (:func:`parse_arguments`).

The foundation every layer may import (the package imports it first, registering the resolvers): it imports
nothing of broadclass. The one resolver that needs a layer, ``bc.run_dir``, is registered by that layer
(``broadclass.training.resume``), which the training entry point imports before Hydra resolves its run dir.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import os
import re
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
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

T = TypeVar("T")


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


# ---- the command line of every entry point but train (Hydra) -------------------------------------------------
# One style: ``key=value`` arguments checked against a dataclass schema (the fields built with ``argument``).
# The ``--key-name value`` forms the entry points took before (argparse) mean the same and keep working;
# a positional field may also be given by position.

KEY_VALUE = re.compile(r"([+~]{0,2}[A-Za-z_][\w.\-/@]*)=(.*)", re.DOTALL)


def argument(default: Any = MISSING, help: str = "", *, positional: bool = False, choices: Sequence[str] = ()) -> Any:
    """A field of an entry point's argument schema: its default (MISSING: required) and its ``--help`` line.

    ``positional``: may also be given without its key, in field order (a list field takes every such value).
    ``choices``: the only values allowed."""
    metadata = {"help": help, "positional": positional, "choices": tuple(choices)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def extra_overrides(help: str) -> Any:
    """The schema field (a list) that takes every ``key=value`` whose key is no field: Hydra overrides."""
    return field(default_factory=list, metadata={"help": help, "positional": False, "choices": (), "extra": True})


def parse_arguments(schema: type[T], argv: Sequence[str] | None, prog: str, about: str) -> T:
    """``argv`` (default: the command line) as an instance of the dataclass ``schema``.

    ``-h``/``--help`` prints ``about`` and every key with its default; a mistake (an unknown key, a bad
    value, a missing required one) ends the program with one line naming it, status 2, no traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(arguments_help(schema, prog, about))
        raise SystemExit(0)
    values, problems = _collect_arguments(schema, argv)
    instance = None
    if not problems:
        try:
            instance = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), values))
        except OmegaConfBaseException as err:
            problems.append(f"bad value for {err.full_key}: {str(err).splitlines()[0]}")
    if instance is not None:
        problems += _check_choices(schema, instance)
    if problems:
        print(f"{prog}: error: {'; '.join(problems)} (see --help)", file=sys.stderr)
        raise SystemExit(2)
    return instance


def _collect_arguments(schema: type, argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    extra = next((name for name, f in fields.items() if f.metadata.get("extra")), None)
    positional = [name for name, f in fields.items() if f.metadata.get("positional")]
    values: dict[str, Any] = {}
    problems: list[str] = []

    def put(name: str, text: str) -> None:
        value = _typed(hints[name], text)
        if typing.get_origin(hints[name]) is list:
            values.setdefault(name, []).extend(value if isinstance(value, list) else [value])
        else:
            values[name] = value

    tokens = list(argv)
    while tokens:
        token = tokens.pop(0)
        key_value = KEY_VALUE.fullmatch(token)
        if token.startswith("--") and len(token) > 2:  # the argparse form: --key-name value, --key-name=value, --flag
            option, has_value, text = token[2:].partition("=")
            name = option.replace("-", "_")
            takes_value = not has_value and (name not in hints or hints[name] is not bool)
            if takes_value and tokens and not tokens[0].startswith("--"):
                text, has_value = tokens.pop(0), True
            if name not in fields or name == extra:
                problems.append(f"unknown option --{option} (keys: {', '.join(_keys(fields, extra))})")
            elif has_value:
                put(name, text)
            elif hints[name] is bool:
                values[name] = True
            else:
                problems.append(f"--{option} needs a value")
        elif key_value:
            name = key_value.group(1)
            if name in fields and name != extra:
                put(name, key_value.group(2))
            elif extra is not None:
                values.setdefault(extra, []).append(token)
            else:
                problems.append(f"unknown key {name!r} (keys: {', '.join(_keys(fields, extra))})")
        else:
            open_slots = [n for n in positional if n not in values or typing.get_origin(hints[n]) is list]
            if open_slots:
                put(open_slots[0], token)
            else:
                problems.append(f"unexpected argument {token!r} (arguments are key=value)")
    missing = [f"{name}=..." for name, f in fields.items() if f.default == MISSING and name not in values]
    if missing and not problems:
        problems.append(f"required: {' '.join(missing)}")
    return values, problems


def _typed(hint: Any, text: str) -> Any:
    """A text as the value for a field of type ``hint``: strings and paths stay as typed (``null``: None where
    allowed); numbers, booleans and ``[a, b]`` lists are read as YAML (``1e-3``, ``true``), OmegaConf checks them."""
    kinds = set(typing.get_args(hint)) or {hint}
    if kinds & {str, Path}:
        return None if text == "null" and type(None) in kinds else text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _check_choices(schema: type, instance: Any) -> list[str]:
    problems = []
    for f in dataclasses.fields(schema):
        allowed = f.metadata.get("choices")
        value = getattr(instance, f.name)
        if allowed and value not in allowed:
            problems.append(f"{f.name}={value} is not one of {', '.join(allowed)}")
    return problems


def _keys(fields: dict[str, dataclasses.Field], extra: str | None) -> list[str]:
    return [name for name in fields if name != extra]


def _shown(value: Any) -> str:
    """A default as it would be typed: ``null``, ``true``, ``[a, b]``, a path as it is."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, list):
        return f"[{', '.join(map(str, value))}]"
    return str(value)


def arguments_help(schema: type, prog: str, about: str) -> str:
    """``about``, then one line per key: ``key=<default>`` (or ``(required)``) and what it is."""
    fields = dataclasses.fields(schema)
    positional = [f.name.upper() for f in fields if f.metadata.get("positional")]
    lines = [f"usage: {prog} {' '.join(positional + ['[key=value ...]']).strip()}", "", about.strip(), ""]
    lines.append("arguments (key=value; --key-name value is the same):")
    for f in fields:
        if f.metadata.get("extra"):
            default = "key=value ..."
        elif f.default == MISSING:
            default = f"{f.name}=... (required)"
        else:
            value = f.default_factory() if f.default is dataclasses.MISSING else f.default
            default = f"{f.name}={_shown(value)}"
        where = " (also by position)" if f.metadata.get("positional") else ""
        choices = f" [{', '.join(f.metadata['choices'])}]" if f.metadata.get("choices") else ""
        lines.append(f"  {default:<28} {f.metadata.get('help', '')}{choices}{where}")
    return "\n".join(lines)
