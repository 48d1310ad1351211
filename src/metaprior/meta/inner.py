r"""Functional inner optimizers over parameter dictionaries.

An optimizer is a pair of pure functions (optax ``GradientTransformation`` / torchopt's
functional API)::

    state = opt.init(params)
    updates, state = opt.update(grads, state, params)
    params = apply_updates(params, updates)

Nothing is modified in place, so the same code runs plainly (``torch.no_grad`` or detached
tensors) or inside a graph that is differentiated through (MAML, ``create_graph=True``).
Without differentiation the numerics match ``torch.optim.SGD`` / ``torch.optim.Adam``
(default, non-foreach/non-fused formulas); see ``tests/test_inner.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from metaprior.typing import OptState, Params


@dataclass(frozen=True)
class InnerOptimizer:
    """A pair of pure functions ``init(params) -> state`` and
    ``update(grads, state, params) -> (updates, state)``."""

    init: Callable[[Params], OptState]
    update: Callable[[Params, OptState, Params], tuple[Params, OptState]]
    name: str = "custom"


#: A learning rate: one for every tensor, or one per parameter tensor (a float or a 0-d tensor for
#: each name; tensors stay differentiable, so learned rates get hypergradients).
LearningRate = float | Mapping[str, float | torch.Tensor]


def _lr(lr: LearningRate, name: str):
    return lr[name] if isinstance(lr, Mapping) else lr


def _check_lr(lr: LearningRate) -> None:
    values = lr.values() if isinstance(lr, Mapping) else (lr,)
    if any(not float(v.detach() if isinstance(v, torch.Tensor) else v) > 0 for v in values):
        raise ValueError(f"lr must be > 0, got {lr}")


def apply_updates(params: Params, updates: Params) -> Params:
    r"""Return :math:`\phi + u` for every entry (a new dict; inputs untouched)."""
    return {k: params[k] + updates[k] for k in params}


def sgd(lr: LearningRate, momentum: float = 0.0) -> InnerOptimizer:
    r"""Stochastic gradient descent, :math:`\phi_{t+1} = \phi_t - \eta\, m_{t+1}` with
    :math:`m_{t+1} = \mu m_t + g_t` (``torch.optim.SGD`` with ``dampening=0``).

    Args:
        lr: learning rate :math:`\eta > 0`, or one per parameter name (Meta-SGD / MAML++'s
            per-layer learning rates).
        momentum: heavy-ball coefficient :math:`\mu \in [0, 1)`.
    """
    _check_lr(lr)

    def init(params: Params) -> OptState:
        state: OptState = {"step": 0}
        if momentum:
            state["m"] = None
        return state

    def update(grads: Params, state: OptState, params: Params) -> tuple[Params, OptState]:
        del params
        if not momentum:
            return {k: -_lr(lr, k) * g for k, g in grads.items()}, {"step": state["step"] + 1}
        m_prev = state["m"]
        if m_prev is None:
            m = dict(grads)
        else:
            m = {k: momentum * m_prev[k] + g for k, g in grads.items()}
        return {k: -_lr(lr, k) * v for k, v in m.items()}, {"step": state["step"] + 1, "m": m}

    return InnerOptimizer(init, update, name="sgd")


def _safe_sqrt(v: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(v.clamp_min(torch.finfo(v.dtype).tiny))


def adam(
    lr: LearningRate, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
) -> InnerOptimizer:
    r"""Adam (Kingma & Ba 2015) with bias correction, as in ``torch.optim.Adam``:

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,

        \phi_t = \phi_{t-1} - \frac{\eta}{1-\beta_1^t}\,
            \frac{m_t}{\sqrt{v_t}/\sqrt{1-\beta_2^t} + \epsilon}.

    The square root's argument is clamped at the smallest normal float so that
    differentiating through a step stays finite where a gradient entry is exactly zero.

    Note: the first step from a fresh state is
    :math:`\approx -\eta\,\mathrm{sign}(g)`, whose derivative in :math:`g` is nearly zero.

    Args:
        lr: learning rate :math:`\eta`, or one per parameter name.
        betas: :math:`(\beta_1, \beta_2)`.
        eps: :math:`\epsilon`, added after the square root.
    """
    _check_lr(lr)
    b1, b2 = betas

    def init(params: Params) -> OptState:
        return {
            "step": 0,
            "m": {k: torch.zeros_like(p) for k, p in params.items()},
            "v": {k: torch.zeros_like(p) for k, p in params.items()},
        }

    def update(grads: Params, state: OptState, params: Params) -> tuple[Params, OptState]:
        del params
        t = state["step"] + 1
        m = {k: b1 * state["m"][k] + (1 - b1) * g for k, g in grads.items()}
        v = {k: b2 * state["v"][k] + (1 - b2) * g * g for k, g in grads.items()}
        bc1 = 1 - b1**t
        sqrt_bc2 = math.sqrt(1 - b2**t)
        # sqrt on v clamped to the smallest normal number: the same value as torch.optim (unless
        # v < 1e-38), but a finite derivative where a gradient entry is exactly 0 (MAML).
        updates = {k: -(_lr(lr, k) / bc1) * m[k] / (_safe_sqrt(v[k]) / sqrt_bc2 + eps)
                   for k in grads}
        return updates, {"step": t, "m": m, "v": v}

    return InnerOptimizer(init, update, name="adam")


def make_inner_optimizer(name: str, lr: LearningRate) -> InnerOptimizer:
    """Build an inner optimizer by name (``"sgd"`` or ``"adam"``); ``lr`` as in :func:`sgd`."""
    if name == "sgd":
        return sgd(lr)
    if name == "adam":
        return adam(lr)
    raise ValueError(f"inner optimizer must be 'sgd' or 'adam', got {name!r}")
