"""Optional dependencies: the classical baselines (``metaprior[baselines]``: ``ptwt`` for the
wavelet baseline, ``bm3d`` for DPIR-BM3D) and plotting (``metaprior[plots]``: matplotlib, for
the reproductions' figures). The core install is what adaptation and meta-training need."""

from __future__ import annotations

import importlib
from types import ModuleType

#: module -> the extra that installs it
EXTRAS = {"ptwt": "baselines", "bm3d": "baselines", "matplotlib": "plots"}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def require(module: str, what: str) -> ModuleType:
    """Import ``module`` (one of :data:`EXTRAS`), or raise :class:`MissingExtraError` in one
    line naming ``what`` needs it and the ``pip install`` command of its extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS[module]
        raise MissingExtraError(f"{what} needs {module!r}, which is not installed: pip install "
                                f"'metaprior[{extra}]'") from None
