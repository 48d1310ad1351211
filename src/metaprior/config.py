"""Configuration: one frozen dataclass per concern, overridden from a JSON file and the CLI.

Precedence: dataclass defaults < ``--config file.json`` (``{"model": {"depth": 20}, ...}``)
< command-line flags (one ``--field-name`` per field, generated from the dataclasses). The
resolved configuration is saved as JSON beside every result.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import json
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any


def _field_type(cls, f: dataclasses.Field):
    return typing.get_type_hints(cls)[f.name]


def _converter(tp):
    origin = typing.get_origin(tp)
    if origin is tuple:
        item = _converter(typing.get_args(tp)[0])
        return lambda s: _items(s, item)
    if origin in (typing.Union, types.UnionType):
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


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def add_dataclass_arguments(parser: argparse.ArgumentParser, sections: dict[str, type],
                            exclude: dict[str, tuple[str, ...]] | None = None,
                            defaults_text: dict[str, str] | None = None) -> None:
    """One ``--field-name`` flag per field of each section's dataclass (default ``None`` =
    not given, so the file or the dataclass default applies).

    Args:
        exclude: fields of a section that get no flag (still settable in the config file).
        defaults_text: the ``(default: ...)`` shown for ``"section.field"`` keys, where the
            value comes from elsewhere (e.g. the model being adapted).

    A ``bool`` field is a switch: ``--resume`` sets it, ``--no-resume`` clears it (a field
    named ``no_*`` has the one switch ``--no-*``); the config file takes ``true``/``false``. A
    field without a default is required: from the flag or the config file.
    """
    exclude, defaults_text = exclude or {}, defaults_text or {}
    for section, cls in sections.items():
        group = parser.add_argument_group(f"{section} ({cls.__name__})")
        comments = field_comments(cls)
        for f in dataclasses.fields(cls):
            if f.name in exclude.get(section, ()):
                continue
            tp = _field_type(cls, f)
            default = _default(f)
            shown = defaults_text.get(f"{section}.{f.name}", (
                "required" if default is dataclasses.MISSING else
                ",".join(map(str, default)) or '""' if isinstance(default, tuple) else
                f"{default:.6g}" if isinstance(default, float) else
                '""' if default == "" else default))
            flag = f"--{f.name.replace('_', '-')}"
            comment = comments.get(f.name, "")  # a comment may say its default in its own words
            said = "(default" in comment or "default:" in comment
            text = comment if said else f"{comment} (default: {shown})"
            if tp is bool:  # a field named no_* is already a negation: one switch
                switch = ({"action": "store_const", "const": True} if f.name.startswith("no_")
                          else {"action": argparse.BooleanOptionalAction})
                group.add_argument(flag, dest=f"{section}.{f.name}", default=None, help=text,
                                   **switch)
                continue
            group.add_argument(flag, dest=f"{section}.{f.name}", type=_converter(tp),
                               default=None, metavar=f.name.upper(), help=text)


def section_values(section: str, cls, file_values: dict | None,
                   cli: argparse.Namespace | None = None) -> dict:
    """The fields of one section given explicitly, in the config file's ``section`` object or
    as flags (flags win), type-checked; an unknown key is a one-line error."""
    values = (file_values or {}).get(section, {})
    if not isinstance(values, dict):
        raise ValueError(f"config section {section!r} must be an object of fields")
    values = current_names(cls, values)
    names = {f.name for f in dataclasses.fields(cls)}
    bad = set(values) - names
    if bad:
        raise ValueError(f"config file section {section!r} has unknown key(s) {sorted(bad)}; "
                         f"fields: {sorted(names)}")
    flags = set()
    if cli is not None:
        for name in names:
            v = getattr(cli, f"{section}.{name}", None)
            if v is not None:
                values[name] = v
                flags.add(name)
    return {k: _coerce(cls, k, v, f"config {section}.",
                       label="--" + k.replace("_", "-") if k in flags else None)
            for k, v in values.items()}


def current_names(cls, values: dict) -> dict:
    """``values`` keyed by ``cls``'s field names: a key an older file spells otherwise
    (``cls.renamed``, e.g. ``{"colour": "color"}``) takes the field's current name."""
    renamed = getattr(cls, "renamed", {})
    return {renamed.get(k, k): v for k, v in values.items()}


def build_section(section: str, cls, file_values: dict | None,
                  cli: argparse.Namespace | None = None, base=None):
    """``cls`` (or ``base``, an instance) with the section's explicit values; a required field
    missing from both the flags and the file is a one-line error naming its flag."""
    values = section_values(section, cls, file_values, cli)
    if base is not None:
        return dataclasses.replace(base, **values)
    for f in dataclasses.fields(cls):
        if f.name not in values and _default(f) is dataclasses.MISSING:
            raise ValueError(f"--{f.name.replace('_', '-')} is required (a flag, "
                             f"or {f.name!r} in the config file's {section!r} section)")
    return cls(**values)


def check_sections(file_values: dict | None, sections: typing.Iterable[str]) -> None:
    """A config file must be an object of known sections."""
    if file_values is None:
        return
    if not isinstance(file_values, dict):
        raise ValueError("config must be a JSON object of sections, e.g. {\"adapt\": {...}}")
    unknown = set(file_values) - set(sections)
    if unknown:
        raise ValueError(f"config file has unknown section(s) {sorted(unknown)}; sections: "
                         f"{sorted(sections)}")


def _coerce(cls, name: str, value: Any, where: str = "config ", label: str | None = None
            ) -> Any:
    """``value`` checked against the field's type (a JSON ``"false"`` is not a bool, ``true``
    is not an int) and converted where lossless (int -> float, list -> tuple); errors name
    ``label`` (default ``where`` + ``name``)."""
    tp = _field_type(cls, next(f for f in dataclasses.fields(cls) if f.name == name))
    label = label or f"{where}{name}"
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None:
            return None
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is tuple:
        item = typing.get_args(tp)[0]
        if isinstance(value, (list, tuple)):
            try:
                return tuple(_scalar(item, v) for v in value)
            except TypeError:
                pass
        kind = "names" if item is str else item.__name__
        raise ValueError(f"{label} must be a list of {kind}, got {value!r}")
    try:
        return _scalar(tp, value)
    except OverflowError:
        raise ValueError(f"{label} must be an integer in [-2^63, 2^63), got {value}") from None
    except TypeError:
        raise ValueError(f"{label} must be of type {tp.__name__}, got {value!r}") from None


def _scalar(tp, value: Any) -> Any:
    """``value`` as a ``tp`` (bool, int, float, str; int -> float only), else TypeError."""
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not -2**63 <= value < 2**63:
                raise OverflowError(value)
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise TypeError(tp)


def build_config(cls, file_values: dict | None = None, cli: argparse.Namespace | None = None):
    """Instantiate the top-level dataclass ``cls`` (whose fields are section dataclasses)."""
    file_values = file_values or {}
    hints = typing.get_type_hints(cls)
    check_sections(file_values, hints)
    return cls(**{f.name: build_section(f.name, hints[f.name], file_values, cli)
                  for f in dataclasses.fields(cls)})


def load_config_file(path: str | Path | None) -> dict:
    if path is None:
        return {}
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"config file {path} is a folder: pass a JSON file to --config")
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist: check --config")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"config file {path} is not UTF-8 text: pass a JSON file to "
                         f"--config") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"config file {path} is not valid JSON ({e.msg} at line {e.lineno}): "
                         f"fix --config") from None


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def from_dict(cls, values: dict):
    return build_config(cls, values)


def explicit_values(cls, file_values: dict | None = None,
                    cli: argparse.Namespace | None = None) -> dict[str, Any]:
    """The ``"section.field"`` values given explicitly (in the file or as flags), resolved
    with the same precedence and checks as :func:`build_config`."""
    config = build_config(cls, file_values, cli)
    hints = typing.get_type_hints(cls)
    given = {f"{section}.{name}" for section, values in (file_values or {}).items()
             for name in current_names(hints[section], values)}
    if cli is not None:
        given |= {k for k, v in vars(cli).items() if "." in k and v is not None}
    return {key: getattr(getattr(config, key.split(".")[0]), key.split(".")[1])
            for key in sorted(given)}


def resolve(args: argparse.Namespace, sections: dict[str, type],
            extra: typing.Iterable[str] = ()) -> dict:
    """Every section of a command from its dataclass defaults, the ``--config`` JSON file
    (``args.config``) and the flags, in that order of precedence: the one way every command
    resolves its options. Each field is also set on ``args`` by name, and the file's values
    are kept as ``args.file_values``; sections in ``extra`` may appear in the file and are
    resolved by the command itself (:func:`section_values`)."""
    file_values = load_config_file(getattr(args, "config", None))
    check_sections(file_values, (*sections, *extra))
    resolved = {name: build_section(name, cls, file_values, args)
                for name, cls in sections.items()}
    for section in resolved.values():
        for f in dataclasses.fields(section):
            setattr(args, f.name, getattr(section, f.name))
            if f.name == "device":
                check_device(getattr(section, f.name))
    args.file_values = file_values
    return resolved


def check_device(device: str) -> None:
    """A one-line error for a device torch does not know, or a CUDA device on a machine
    without one."""
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {device} is not a torch device: use cpu or cuda "
                         f"(cuda:N for one GPU)") from None
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"--device {device}: metaprior runs on cpu or cuda")
    if kind == "cpu" and torch.device(device).index not in (None, 0):
        raise ValueError(f"--device {device}: the CPU is cpu (no index): use --device cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but no CUDA device is available: use "
                         "--device cpu")


def _items(text: str, item) -> tuple:
    """A comma-separated flag value as a tuple (``""``: empty); an empty entry is refused."""
    parts = [x.strip() for x in text.split(",")]
    if parts == [""]:
        return ()
    if "" in parts:
        raise argparse.ArgumentTypeError(f"{text!r} has an empty entry: separate the items by "
                                         f"single commas")
    return tuple(item(x) for x in parts)


def name_the_flag(message: str, argv: typing.Sequence[str], dests: typing.Container[str]
                  ) -> str:
    """A check's message in the words of the command line: ``adapt: lr must be ...`` becomes
    ``--lr must be ...`` where ``adapt.lr`` is an option of the parser (``dests``) and
    ``argv`` gave ``--lr`` (a value from a config file keeps its section's name)."""
    match = re.fullmatch(r"(\w+): (\w+) (must .*)", message, flags=re.DOTALL)
    if match and f"{match[1]}.{match[2]}" in dests:
        flag = "--" + match[2].replace("_", "-")
        if any(a == flag or a.startswith(flag + "=") for a in argv):
            return f"{flag} {match[3]}"
    return message


@contextlib.contextmanager
def errors_in_flag_words(parser: argparse.ArgumentParser, argv: typing.Sequence[str]):
    """Re-raise a section's ``ValueError`` as :func:`name_the_flag` words it for ``parser``'s
    options (its subcommands' too) and ``argv``."""
    try:
        yield
    except ValueError as e:
        dests, parsers = set(), [parser]
        while parsers:
            for action in parsers.pop()._actions:
                dests.add(action.dest)
                if isinstance(action, argparse._SubParsersAction):
                    parsers.extend(action.choices.values())
        message = name_the_flag(str(e), argv, dests)
        if message == str(e):
            raise
        raise ValueError(message) from None


def check_positive(owner: str, **values: float) -> None:
    """One-line ``ValueError`` naming the first value that is not a finite number > 0."""
    for name, v in values.items():
        try:  # a Python, NumPy or 0-d torch number; not a bool or a string
            ok = not isinstance(v, (bool, str)) and math.isfinite(float(v)) and float(v) > 0
        except (TypeError, ValueError, RuntimeError):
            ok = False
        if not ok:
            raise ValueError(f"{owner}: {name} must be a finite number > 0, got {v!r}")


def check_at_least(owner: str, bound: int, **values: int) -> None:
    """One-line ``ValueError`` naming the first integer below ``bound``."""
    for name, v in values.items():
        if v < bound:
            raise ValueError(f"{owner}: {name} must be >= {bound}, got {v!r}")


def replace_from_dict(base, values: dict, where: str = "config"):
    """``base`` (a flat dataclass instance) with the fields in ``values`` replaced, each
    type-checked as in :func:`build_config` (unknown fields are an error naming ``where``)."""
    cls = type(base)
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be a JSON object of fields")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"{where} has unknown field(s) {sorted(unknown)}; fields: "
                         f"{sorted(known)}")
    return dataclasses.replace(base, **{k: _coerce(cls, k, v, f"{where}: ")
                                        for k, v in values.items()})


def check_fits_in_memory(label: str, flag: str, count: int, side: int) -> None:
    """One-line ``ValueError`` for a batch (``label``, set by option ``flag``) of ``count``
    float32 images of ``side``² pixels whose pixels alone exceed this machine's memory: the
    work could only end in an out-of-memory error, after minutes of swapping."""
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): nothing to check
        return
    need = 4 * count * side * side
    if need > have:
        raise ValueError(f"{label} {count} patches of {side}x{side} need {need / 2**30:.0f} GiB "
                         f"for their pixels alone (this machine has {have / 2**30:.0f} GiB): "
                         f"lower {flag} or --patch-size")
