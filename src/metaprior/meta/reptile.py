r"""Reptile (Nichol, Achiam & Schulman 2018): a first-order meta-gradient over a long inner run.

For one task with batches :math:`\mathcal D^{\rm train}, \mathcal D^{\rm test}`, the K steps of
the inner optimizer (learning rate η) descend the supervised loss on the two batches in turn,

.. math::
    \phi_{k+1} = \phi_k + \mathrm{update}\big(\nabla_\phi[\mathcal L_{\rm sup}(\phi_k;
        \mathcal D_{k \bmod 2}) + \tfrac\lambda2\|\phi_k-\theta\|^2]\big),\qquad \phi_0=\theta,

and the task's pseudo-gradient, which the outer optimizer takes in place of a hypergradient, is

.. math::
    g = \frac{\theta - \phi_K}{K\eta}.

With SGD it is the mean gradient along the run, :math:`g = \frac1K\sum_k \nabla
\mathcal L(\phi_k; \mathcal D_{k \bmod 2})`. To second order in η its expectation is the joint
gradient minus :math:`\tfrac\eta2\nabla_\theta\langle\nabla\mathcal L(\theta;\mathcal D^{\rm
train}), \nabla\mathcal L(\theta;\mathcal D^{\rm test})\rangle` per pair of steps (Nichol et
al., Sec. 5). Memory is constant in K.
"""

from __future__ import annotations

from torch import nn

from metaprior.meta.config import MetaConfig
from metaprior.meta.inner import make_inner_optimizer
from metaprior.meta.maml import TaskHypergradient, add_theta_term
from metaprior.meta.problem import inner_step
from metaprior.tasks import TaskBatch
from metaprior.typing import Params


def reptile_hypergradient(
    model: nn.Module, theta: Params, inner_batch: TaskBatch, outer_batch: TaskBatch,
    config: MetaConfig,
) -> TaskHypergradient:
    r"""Reptile's pseudo-gradient :math:`(\theta - \phi_K)/(K\eta)` of one task after
    ``config.inner_steps`` (K ≥ 2) steps of ``config.inner_optimizer`` at ``config.inner_lr``
    on the supervised loss, alternating ``inner_batch`` and ``outer_batch`` (parameters of
    shape as in ``theta``). Logged: the inner loss is the loss at θ on ``inner_batch``, the
    outer loss that at :math:`\phi_1` on ``outer_batch`` (MAML's one-step outer loss)."""
    opt = make_inner_optimizer(config.inner_optimizer, config.inner_lr)
    anchor = {k: v.detach() for k, v in theta.items()}
    phi = {k: v.detach().requires_grad_(True) for k, v in anchor.items()}
    state = opt.init(phi)
    batches = (inner_batch, outer_batch)
    losses = []
    for k in range(config.inner_steps):
        phi, state, loss = inner_step(model, phi, anchor, state, batches[k % 2], opt,
                                      "supervised", config.prox_lambda)
        losses.append(float(loss))
    scale = 1.0 / (config.inner_steps * config.inner_lr)
    grads = {k: (anchor[k] - phi[k].detach()) * scale for k in anchor}
    if config.outer_theta_weight:
        grads = add_theta_term(model, grads, theta, outer_batch, config.outer_theta_weight)
    return TaskHypergradient(inner_batch.task, grads, losses[0], losses[1])
