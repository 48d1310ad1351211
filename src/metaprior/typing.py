"""Shared type aliases (torchopt-style ``typing.py``)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

#: Network parameters as a name -> tensor mapping, the currency of the functional inner loop.
Params = dict[str, Tensor]
#: State of a functional inner optimizer (a pytree of tensors and ints).
OptState = dict[str, Any]

__all__ = ["OptState", "Params", "Tensor"]
