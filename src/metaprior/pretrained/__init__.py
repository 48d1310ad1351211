"""Models loadable by name: the package ships :data:`RECOMMENDED`; :func:`add_model_dir` and
``METAPRIOR_MODEL_PATH`` (folders separated by ``:``) add folders, each holding a
``MODELS.json`` that maps names to ``{"file": ..., "command": ..., ...}``. Where two folders
hold the same name, the package's comes first, then ``METAPRIOR_MODEL_PATH`` in order, then
:func:`add_model_dir`. Every ``--model`` flag and :func:`metaprior.checkpoint.load_model`
accept these names wherever they accept a file path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

#: The recommended model: every default that names a model (``metaprior demo``, the examples,
#: the benchmarks, the reproductions' ``recommended`` initialisation) names this one.
RECOMMENDED = "hqs-dpir24-dihedral"
ENV = "METAPRIOR_MODEL_PATH"
_PACKAGE = Path(__file__).parent
_added: list[Path] = []


def add_model_dir(folder: str | Path) -> Path:
    """Make the models listed in ``folder/MODELS.json`` loadable by name (idempotent)."""
    folder = Path(folder).resolve()
    if not (folder / "MODELS.json").is_file():
        raise FileNotFoundError(f"{folder} holds no MODELS.json")
    _listing(folder)  # a malformed listing is refused here, not at the next load by name
    if folder not in _added:
        _added.append(folder)
    return folder


def model_dirs() -> list[Path]:
    """The folders searched for names, in order of precedence."""
    env = [Path(p) for p in os.environ.get(ENV, "").split(os.pathsep) if p]
    return [_PACKAGE, *env, *_added]


def _listing(folder: Path) -> dict[str, dict]:
    """``folder/MODELS.json``: names to ``{"file": ...}`` entries, or a one-line error naming
    the file."""
    path = folder / "MODELS.json"
    try:
        listing = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        listing = None
    if not (isinstance(listing, dict) and all(
            isinstance(e, dict) and isinstance(e.get("file"), str) for e in listing.values())):
        raise ValueError(f"{path} is not a JSON object of models (name -> {{\"file\": ..., "
                         f"...}}): repair it or remove its folder from {ENV}")
    return listing


def _index() -> dict[str, tuple[Path, dict]]:
    index: dict[str, tuple[Path, dict]] = {}
    for folder in model_dirs():
        if not (folder / "MODELS.json").is_file():  # of METAPRIOR_MODEL_PATH: named by the error
            continue
        for name, entry in _listing(folder).items():
            index.setdefault(name, (folder, entry))
    return index


def available() -> list[str]:
    """Names of the models found in :func:`model_dirs`."""
    return sorted(_index())


def _lookup(name: str) -> tuple[Path, dict]:
    index = _index()
    if name not in index:
        raise ValueError(unknown_name_message(name, sorted(index)))
    return index[name]


def describe(name: str) -> dict:
    """The ``MODELS.json`` entry of ``name`` (command, config, wall time, file)."""
    return _lookup(name)[1]


def path(name: str) -> Path:
    """File of the model ``name``."""
    folder, entry = _lookup(name)
    return folder / entry["file"]


def unknown_name_message(name: str, names: list[str] | None = None) -> str:
    """One line: no model ``name``, the names found, and how to add a folder."""
    names = available() if names is None else names
    empty = [str(d) for d in model_dirs() if not (d / "MODELS.json").is_file()]
    return (f"no model named {name!r} (found: {', '.join(names)}); add a folder holding a "
            f"MODELS.json with metaprior.pretrained.add_model_dir(folder) or {ENV}"
            + (f" ({', '.join(empty)} in {ENV} holds no MODELS.json)" if empty else ""))
