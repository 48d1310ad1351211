"""Meta-trained PDNets shipped with the package (safetensors only; see ``MODELS.json`` for the
command, configuration and wall time that produced each one, and, where it builds on an earlier
run, the ``init_command`` of that run: the one that wrote its ``--init-from`` file, or the one
it continues with ``--resume``).

``metaprior adapt --model NAME`` and :func:`metaprior.checkpoint.load_model` accept these names
wherever they accept a file path.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path


def _index() -> dict:
    return json.loads(resources.files(__name__).joinpath("MODELS.json").read_text())


def available() -> list[str]:
    """Names of the shipped models."""
    return sorted(_index())


def describe(name: str) -> dict:
    """The ``MODELS.json`` entry of ``name`` (command, config, wall time, file)."""
    index = _index()
    if name not in index:
        raise ValueError(f"no shipped model {name!r}: choose one of {sorted(index)}")
    return index[name]


def path(name: str) -> Path:
    """File of the shipped model ``name``."""
    return Path(str(resources.files(__name__).joinpath(describe(name)["file"])))
