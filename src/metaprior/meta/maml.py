r"""MAML hypergradients of one task: second order (through the inner steps) and first order.

Both return a :class:`TaskHypergradient`; the outer step (:mod:`metaprior.meta.step`) sums
them over the tasks of a meta-batch. The implicit (iMAML) hypergradient is in
:mod:`metaprior.meta.implicit`, and joint pre-training, which has no inner problem, in
:mod:`metaprior.meta.joint`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from metaprior.meta.config import INNER_LR_PREFIX, MetaConfig
from metaprior.meta.problem import inner_adapt, meta_objective, outer_loss
from metaprior.tasks import TaskBatch
from metaprior.typing import Params


@dataclass
class TaskHypergradient:
    """One task's contribution to the outer step."""

    task: str
    grads: Params
    inner_loss: float
    outer_loss: float
    info: dict = field(default_factory=dict)


def grad_dict(loss: Tensor, params: Params) -> Params:
    """``d loss / d params`` as a dict (zeros for a parameter the loss does not reach)."""
    names = list(params)
    grads = torch.autograd.grad(loss, [params[k] for k in names], allow_unused=True)
    return {k: torch.zeros_like(params[k]) if g is None else g
            for k, g in zip(names, grads, strict=True)}


def maml_hypergradient(
    model: nn.Module, theta: Params, inner_batch: TaskBatch, outer_batch: TaskBatch,
    config: MetaConfig, lrs: Params | None = None,
) -> TaskHypergradient:
    r"""Second-order MAML: :math:`\nabla_\theta \mathcal L_{\rm outer}(\phi_K(\theta))` by
    backpropagation through the K inner steps (``create_graph=True``). With learned step sizes
    ``lrs`` (one 0-d tensor per parameter name), their hypergradients are returned too, under
    ``INNER_LR_PREFIX + name``."""
    theta = {k: v.detach().requires_grad_(True) for k, v in theta.items()}
    wrt = dict(theta)
    if lrs is not None:
        lrs = {k: v.detach().requires_grad_(True) for k, v in lrs.items()}
        wrt.update({INNER_LR_PREFIX + k: v for k, v in lrs.items()})
    phi, inner = inner_adapt(model, theta, inner_batch, config, create_graph=True, lrs=lrs)
    objective, loss = meta_objective(model, phi, theta, outer_batch, config)
    return TaskHypergradient(inner_batch.task, grad_dict(objective, wrt), inner,
                             float(loss.detach()))


def first_order_hypergradient(
    model: nn.Module, theta: Params, inner_batch: TaskBatch, outer_batch: TaskBatch,
    config: MetaConfig,
) -> TaskHypergradient:
    r"""First-order MAML: :math:`\nabla_\phi \mathcal L_{\rm outer}(\phi_K)`, treating
    :math:`d\phi_K/d\theta` as the identity."""
    phi, inner = inner_adapt(model, theta, inner_batch, config, create_graph=False)
    loss = outer_loss(model, phi, outer_batch)
    grads = grad_dict(loss, phi)
    if config.outer_theta_weight:
        grads = add_theta_term(model, grads, theta, outer_batch, config.outer_theta_weight)
    return TaskHypergradient(inner_batch.task, grads, inner, float(loss.detach()))


def add_theta_term(model: nn.Module, grads: Params, theta: Params, batch: TaskBatch,
                    weight: float) -> Params:
    r"""``grads`` plus :math:`w\nabla_\theta\mathcal L_{\rm outer}(\theta)` (the θ-scored
    term of :func:`meta_objective`, for the hypergradients that do not differentiate it)."""
    theta = {k: v.detach().requires_grad_(True) for k, v in theta.items()}
    extra = grad_dict(outer_loss(model, theta, batch), theta)
    return {k: g + weight * extra[k] for k, g in grads.items()}
