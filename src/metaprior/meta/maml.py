r"""The inner problem of PAPER.md eq. (2) and its unrolled solution.

.. math::
    \phi_{t+1} = \phi_t + \mathrm{update}\big(\nabla_\phi[\mathcal L_{\rm inner}(f_\phi)
        + \tfrac\lambda2\|\phi-\theta\|^2]\big),\qquad \phi_0 = \theta,

with :math:`\mathcal L_{\rm inner}` supervised or unsupervised (:mod:`metaprior.losses`) and
the update a functional optimizer (:mod:`metaprior.meta.inner`). With ``create_graph=True``
the steps stay in the autograd graph, so :math:`\phi_K` is a differentiable function of
:math:`\theta` (second-order MAML).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metaprior.losses import data_loss, proximal_term
from metaprior.meta.inner import InnerOptimizer, apply_updates
from metaprior.tasks import TaskBatch
from metaprior.typing import OptState, Params


def reconstruct(model: nn.Module, params: Params, batch: TaskBatch) -> Tensor:
    """:math:`f_\\phi(y, A)` with the parameters ``params`` (``functional_call``)."""
    return functional_call(model, params, (batch.y, batch.physics))


def inner_loss(
    model: nn.Module, phi: Params, theta: Params, batch: TaskBatch, kind: str, prox_lambda: float
) -> Tensor:
    r""":math:`\mathcal L_{\rm inner}(f_\phi) + \frac\lambda2\|\phi - \theta\|^2` on ``batch``."""
    loss = data_loss(kind, reconstruct(model, phi, batch), batch)
    if prox_lambda:
        loss = loss + proximal_term(phi, theta, prox_lambda)
    return loss


def inner_step(
    model: nn.Module, phi: Params, theta: Params, state: OptState, batch: TaskBatch,
    opt: InnerOptimizer, kind: str, prox_lambda: float, create_graph: bool = False,
) -> tuple[Params, OptState, Tensor]:
    """One optimizer step on the inner loss. Returns (new params, new state, loss before)."""
    loss = inner_loss(model, phi, theta, batch, kind, prox_lambda)
    names = [k for k, p in phi.items() if p.requires_grad]
    grads = torch.autograd.grad(loss, [phi[k] for k in names], create_graph=create_graph,
                                allow_unused=True)
    # λ_K of the last layer never reaches the output (PAPER.md §5): its gradient is zero.
    grads = {k: torch.zeros_like(phi[k]) if g is None else g
             for k, g in zip(names, grads, strict=True)}
    updates, state = opt.update(grads, state, phi)
    if not create_graph:
        updates = {k: u.detach() for k, u in updates.items()}
    new_phi = apply_updates({k: phi[k] for k in names}, updates)
    if not create_graph:
        new_phi = {k: p.detach().requires_grad_(True) for k, p in new_phi.items()}
    return new_phi, state, loss.detach()
