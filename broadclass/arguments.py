"""The ``key=value`` command line of every command but train and pretrain (Hydra): :func:`parse_arguments`.

Each command states its arguments as a dataclass whose fields are built with :func:`argument` (and
:func:`extra_overrides` for Hydra overrides); the values are checked against the fields' types by OmegaConf.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import typing
from collections.abc import Sequence
from dataclasses import field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")

# A key=value argument; the key may be a Hydra override's (``+experiment``, ``~callbacks.x``, ``data.labels``).
KEY_VALUE = re.compile(r"([+~]{0,2}[A-Za-z_][\w.\-/@]*)=(.*)", re.DOTALL)


def argument(default: Any = MISSING, help: str = "", *, positional: bool = False, choices: Sequence[str] = ()) -> Any:
    """A field of a command's argument schema: its default (MISSING: required) and its ``--help`` line.

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

    for token in argv:
        key_value = KEY_VALUE.fullmatch(token)
        open_slots = [n for n in positional if n not in values or typing.get_origin(hints[n]) is list]
        if key_value:
            name = key_value.group(1)
            if name in fields and name != extra:
                put(name, key_value.group(2))
            elif extra is not None:
                values.setdefault(extra, []).append(token)
            else:
                problems.append(f"unknown key {name!r} (keys: {', '.join(_keys(fields, extra))})")
        elif token.startswith("-"):
            problems.append(
                f"unknown option {token} (arguments are key=value; keys: {', '.join(_keys(fields, extra))})"
            )
        elif open_slots:
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
    lines.append("arguments (key=value):")
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
