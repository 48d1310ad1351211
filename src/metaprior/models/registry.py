r"""The reconstruction networks by name: a config dataclass and a ``deepinv`` ``Reconstructor``
each, built, saved and loaded through one table.

=========  ==========================================================  =====================
name       network                                                     config
=========  ==========================================================  =====================
``pdnet``  unrolled primal-dual, learned 3×3 analysis prior per layer  :class:`PDNetConfig`
           (eq. 7 of arXiv 2311.18710; the paper's reference)
``hqs``    unrolled half-quadratic splitting: exact data prox and a    :class:`HQSNetConfig`
           pretrained FFDNet prior with a learned schedule
=========  ==========================================================  =====================

A model file records its architecture's name and config (:mod:`metaprior.checkpoint`);
files written before architectures had names hold a ``pdnet_config`` and load as ``pdnet``.
:func:`register_architecture` adds a network of one's own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import nn

from metaprior.models.hqs import HQSNet, HQSNetConfig
from metaprior.models.pdnet import PDNet, PDNetConfig


@dataclass(frozen=True)
class Architecture:
    """A registered network: ``model(config)`` builds it, ``model.seeded(config, seed)``
    builds it under a seed."""

    name: str
    model: type[nn.Module]
    config: type
    about: str = ""


ARCHITECTURES: dict[str, Architecture] = {}


def register_architecture(arch: Architecture, overwrite: bool = False) -> Architecture:
    """Add a network to the table (``overwrite=True`` replaces one of the same name)."""
    if not dataclasses.is_dataclass(arch.config):
        raise TypeError(f"architecture {arch.name!r}: config must be a dataclass, got "
                        f"{arch.config!r}")
    if arch.name in ARCHITECTURES and not overwrite:
        raise ValueError(f"architecture {arch.name!r} is already registered: pass "
                         f"overwrite=True")
    ARCHITECTURES[arch.name] = arch
    return arch


def available_architectures() -> list[str]:
    """Names of the registered networks."""
    return list(ARCHITECTURES)


def get_architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}: choose one of "
                         f"{', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def architecture_of(model: nn.Module) -> str:
    """The registered name of ``model``'s class."""
    for arch in ARCHITECTURES.values():
        if type(model) is arch.model:
            return arch.name
    raise ValueError(f"{type(model).__name__} is not a registered architecture: register it "
                     f"with metaprior.models.register_architecture")


def config_from_dict(name: str, values: dict):
    """The config dataclass of architecture ``name`` from JSON values, each checked against
    its field's type by the option machinery's own check (:mod:`metaprior.config`: JSON has no
    int/bool distinction that Python would enforce)."""
    from metaprior.config import _coerce, current_names

    arch = get_architecture(name)
    if not isinstance(values, dict):
        raise TypeError(f"the {name} config must be an object, got {type(values).__name__}")
    values = current_names(arch.config, values)
    fields = {f.name for f in dataclasses.fields(arch.config)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise TypeError(f"unknown field {unknown[0]!r}")
    return arch.config(**{k: _coerce(arch.config, k, v, where="") for k, v in values.items()})


def build_model(name: str, config=None, seed: int | None = None) -> nn.Module:
    """A fresh network of architecture ``name`` (default config), seeded if ``seed`` is set."""
    arch = get_architecture(name)
    config = config if config is not None else arch.config()
    if not isinstance(config, arch.config):
        raise TypeError(f"architecture {name!r} takes a {arch.config.__name__}, got "
                        f"{type(config).__name__}")
    return arch.model.seeded(config, seed) if seed is not None else arch.model(config)


register_architecture(Architecture("pdnet", PDNet, PDNetConfig,
                                   "unrolled primal-dual network of the paper (eq. 7)"))
register_architecture(Architecture("hqs", HQSNet, HQSNetConfig,
                                   "unrolled HQS: exact data prox, FFDNet prior, learned "
                                   "schedule"))
