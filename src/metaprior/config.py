"""Configuration: one frozen dataclass per concern, overridden from a JSON file and the CLI.

Precedence: dataclass defaults < ``--config file.json`` (``{"model": {"depth": 20}, ...}``)
< command-line flags (one ``--field-name`` per field, generated from the dataclasses). The
resolved configuration is saved as JSON beside every result.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import typing
from pathlib import Path
from typing import Any


def _field_type(cls, f: dataclasses.Field):
    return typing.get_type_hints(cls)[f.name]


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _converter(tp):
    origin = typing.get_origin(tp)
    if tp is bool:
        return _parse_bool
    if origin is tuple:
        return lambda s: tuple(x.strip() for x in s.split(",") if x.strip())
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _converter(args[0])
    return tp


def field_comments(cls) -> dict[str, str]:
    """The trailing ``# comment`` of each field in the dataclass source (used as --help)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    found = re.findall(r"^\s+(\w+):[^#\n]*#\s*(.+)$", source, flags=re.M)
    return dict(found)


def add_dataclass_arguments(parser: argparse.ArgumentParser, sections: dict[str, type]) -> None:
    """One ``--field-name`` flag per field of each section's dataclass (default ``None`` =
    not given, so the file or the dataclass default applies)."""
    for section, cls in sections.items():
        group = parser.add_argument_group(f"{section} ({cls.__name__})")
        comments = field_comments(cls)
        for f in dataclasses.fields(cls):
            tp = _field_type(cls, f)
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            shown = ",".join(default) if isinstance(default, tuple) else default
            group.add_argument(f"--{f.name.replace('_', '-')}", dest=f"{section}.{f.name}",
                               type=_converter(tp), default=None, metavar=f.name.upper(),
                               help=f"{comments.get(f.name, '')} (default: {shown})")


def _coerce(cls, name: str, value: Any) -> Any:
    tp = _field_type(cls, next(f for f in dataclasses.fields(cls) if f.name == name))
    if typing.get_origin(tp) is tuple and isinstance(value, list):
        return tuple(value)
    return value


def build_config(cls, file_values: dict | None = None, cli: argparse.Namespace | None = None):
    """Instantiate the top-level dataclass ``cls`` (whose fields are section dataclasses)."""
    file_values = file_values or {}
    unknown = set(file_values) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"config file has unknown section(s) {sorted(unknown)}")
    sections = {}
    for f in dataclasses.fields(cls):
        sub = typing.get_type_hints(cls)[f.name]
        values = dict(file_values.get(f.name, {}))
        names = {g.name for g in dataclasses.fields(sub)}
        bad = set(values) - names
        if bad:
            raise ValueError(f"config file section {f.name!r} has unknown key(s) {sorted(bad)}")
        if cli is not None:
            for name in names:
                v = getattr(cli, f"{f.name}.{name}", None)
                if v is not None:
                    values[name] = v
        sections[f.name] = sub(**{k: _coerce(sub, k, v) for k, v in values.items()})
    return cls(**sections)


def load_config_file(path: str | Path | None) -> dict:
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist: check --config")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"config file {path} is not valid JSON ({e.msg} at line {e.lineno}): "
                         f"fix --config") from None


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def from_dict(cls, values: dict):
    return build_config(cls, values)
