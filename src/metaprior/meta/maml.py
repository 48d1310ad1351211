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
from metaprior.meta.problem import BatchShare, inner_adapt, meta_objective, outer_loss
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
    config: MetaConfig, lrs: Params | None = None, share: TaskShare | None = None,
) -> TaskHypergradient:
    r"""Second-order MAML: :math:`\nabla_\theta \mathcal L_{\rm outer}(\phi_K(\theta))` by
    backpropagation through the K inner steps (``create_graph=True``). With learned inner rates
    ``lrs`` (one 0-d tensor per parameter name), their hypergradients are returned too, under
    ``INNER_LR_PREFIX + name``. With ``share``, the batches are this process's parts of the
    task's and the result is its weighted share of the task's hypergradient."""
    theta = {k: v.detach().requires_grad_(True) for k, v in theta.items()}
    wrt = dict(theta)
    if lrs is not None:
        lrs = {k: v.detach().requires_grad_(True) for k, v in lrs.items()}
        wrt.update({INNER_LR_PREFIX + k: v for k, v in lrs.items()})
    phi, inner = inner_adapt(model, theta, inner_batch, config, create_graph=True, lrs=lrs,
                             share=share and share.inner)
    objective, loss = meta_objective(model, phi, theta, outer_batch, config)
    if share is not None:  # weighted before the backward pass, which sums across processes
        objective, loss = share.outer_weight * objective, share.outer_weight * loss
        inner = share.inner_record(inner)
    return TaskHypergradient(inner_batch.task, grad_dict(objective, wrt), inner,
                             float(loss.detach()))


def first_order_hypergradient(
    model: nn.Module, theta: Params, inner_batch: TaskBatch, outer_batch: TaskBatch,
    config: MetaConfig, share: TaskShare | None = None,
) -> TaskHypergradient:
    r"""First-order MAML: :math:`\nabla_\phi \mathcal L_{\rm outer}(\phi_K)`, treating
    :math:`d\phi_K/d\theta` as the identity (``share``: as in :func:`maml_hypergradient`)."""
    phi, inner = inner_adapt(model, theta, inner_batch, config, create_graph=False,
                             share=share and share.inner)
    loss = outer_loss(model, phi, outer_batch)
    grads = grad_dict(loss, phi)
    if config.outer_theta_weight:
        grads = add_theta_term(model, grads, theta, outer_batch, config.outer_theta_weight)
    if share is not None:
        grads = {k: share.outer_weight * g for k, g in grads.items()}
        loss, inner = share.outer_weight * loss, share.inner_record(inner)
    return TaskHypergradient(inner_batch.task, grads, inner, float(loss.detach()))


@dataclass(frozen=True)
class TaskShare:
    """This process's share of one task in a distributed run: its part of the outer batch
    weighs ``outer_weight`` (the part's fraction of the batch), and ``inner`` shares the inner
    batch too (``None``: the whole inner batch is computed here)."""

    outer_weight: float
    inner: BatchShare | None = None

    def inner_record(self, loss: float) -> float:
        """This part's share of the task's logged inner loss (the parts' shares sum to it)."""
        return loss if self.inner is not None else self.outer_weight * loss


def add_theta_term(model: nn.Module, grads: Params, theta: Params, batch: TaskBatch,
                    weight: float) -> Params:
    r"""``grads`` plus :math:`w\nabla_\theta\mathcal L_{\rm outer}(\theta)` (the θ-scored
    term of :func:`meta_objective`, for the hypergradients that do not differentiate it)."""
    theta = {k: v.detach().requires_grad_(True) for k, v in theta.items()}
    extra = grad_dict(outer_loss(model, theta, batch), theta)
    return {k: g + weight * extra[k] for k, g in grads.items()}
