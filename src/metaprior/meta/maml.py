r"""The inner problem of eq. (2) of the paper (arXiv 2311.18710) and its unrolled solution.

.. math::
    \phi_{t+1} = \phi_t + \mathrm{update}\big(\nabla_\phi[\mathcal L_{\rm inner}(f_\phi)
        + \tfrac\lambda2\|\phi-\theta\|^2]\big),\qquad \phi_0 = \theta,

with :math:`\mathcal L_{\rm inner}` supervised or unsupervised (:mod:`metaprior.losses`) and
the update a functional optimizer (:mod:`metaprior.meta.inner`). With ``create_graph=True``
the steps stay in the autograd graph, so :math:`\phi_K` is a differentiable function of
:math:`\theta` (second-order MAML).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metaprior.losses import (
    LOSSES,
    data_loss,
    measurement_consistency_loss,
    proximal_term,
    rotate,
    supervised_loss,
)
from metaprior.meta.inner import (
    InnerOptimizer,
    LearningRate,
    apply_updates,
    make_inner_optimizer,
)
from metaprior.tasks import TaskBatch
from metaprior.typing import OptState, Params


def reconstruct(model: nn.Module, params: Params, batch: TaskBatch) -> Tensor:
    """:math:`f_\\phi(y, A)` with the parameters ``params`` (``functional_call``)."""
    return functional_call(model, params, (batch.y, batch.physics))


def inner_loss(
    model: nn.Module, phi: Params, theta: Params, batch: TaskBatch, kind: str, prox_lambda: float
) -> Tensor:
    r""":math:`\mathcal L_{\rm inner}(f_\phi) + \frac\lambda2\|\phi - \theta\|^2` on ``batch``.

    ``kind="equivariant"`` is measurement consistency plus equivariant imaging (Chen, Tachella &
    Davies 2021), still without ground truth: with :math:`T` a 90° rotation and
    :math:`\hat x = f_\phi(y)`, it adds :math:`\tfrac{1}{2N}\|f_\phi(A T\hat x) - T\hat x\|^2`,
    which sees the part of :math:`\mathrm{Ker}(A)` that :math:`T` moves into the range of
    :math:`A^\top` (column-sampled k-space becomes row-sampled; the SR grid changes phase).
    """
    x_hat = reconstruct(model, phi, batch)
    if kind == "equivariant":
        tx = rotate(x_hat)
        x_eq = functional_call(model, phi, (batch.physics.A(tx), batch.physics))
        loss = (measurement_consistency_loss(x_hat, batch.y, batch.physics)
                + supervised_loss(x_eq, tx))
    else:
        loss = data_loss(kind, x_hat, batch)
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
    # λ_K of the last layer never reaches the output: its gradient is zero.
    grads = {k: torch.zeros_like(phi[k]) if g is None else g
             for k, g in zip(names, grads, strict=True)}
    updates, state = opt.update(grads, state, phi)
    if not create_graph:
        updates = {k: u.detach() for k, u in updates.items()}
    new_phi = apply_updates({k: phi[k] for k in names}, updates)
    if not create_graph:
        new_phi = {k: p.detach().requires_grad_(True) for k, p in new_phi.items()}
    return new_phi, state, loss.detach()


HYPERGRADIENTS = ("maml", "first_order", "implicit", "joint")


@dataclass(frozen=True)
class MetaConfig:
    """The bilevel problem and how its hypergradient is computed (the paper's Sec. 3 and 4.2)."""

    tasks: tuple[str, ...] = ("denoise", "tv", "deblur", "inpaint")  # training family T1–T4
    tasks_per_step: int = 0  # tasks sampled per outer step; 0 = all of ``tasks``
    inner_loss: str = "supervised"  # "supervised" | "unsupervised"
    inner_steps: int = 1  # K (the paper uses 1 Adam step for PDNet)
    inner_optimizer: str = "adam"  # "adam" | "sgd"
    inner_lr: float = 3e-4  # η, also used for test-time fine-tuning
    # One inner step size per parameter tensor (W_k and λ_k of each layer), started at inner_lr
    # (Meta-SGD / MAML++'s per-layer rates); adaptation then uses them.
    learn_inner_lr: bool = False  # learn per-layer inner step sizes (maml only)
    prox_lambda: float = 1e-2  # λ of λ/2‖φ − θ‖² (no effect with K = 1 from φ = θ)
    hypergradient: str = "maml"  # "maml" | "first_order" | "implicit" | "joint" (no inner step)
    cg_iters: int = 20  # implicit: conjugate-gradient iterations
    cg_tol: float = 1e-6  # implicit: relative residual at which CG stops
    # MAML++'s multi-step loss at step 0: θ must reconstruct well before any inner step too.
    outer_theta_weight: float = 0.0  # w in L_outer(φ_K) + w·L_outer(θ) (0: φ_K only)
    # Tasks of a meta-batch run concurrently, each thread on its own model replica; results
    # are bitwise those of one thread.
    workers: int = 0  # threads over a meta-batch's tasks (0: one per core free of intra-op threads)

    def __post_init__(self) -> None:
        if self.hypergradient not in HYPERGRADIENTS:
            raise ValueError(f"hypergradient must be one of {HYPERGRADIENTS}, "
                             f"got {self.hypergradient!r}")
        if self.inner_loss not in LOSSES:
            raise ValueError(f"inner_loss must be one of {LOSSES}, got {self.inner_loss!r}")
        if self.inner_steps < 1:
            raise ValueError(f"inner_steps must be >= 1, got {self.inner_steps}")
        if self.hypergradient == "implicit" and self.inner_loss == "equivariant":
            raise ValueError("hypergradient 'implicit' supports the supervised and unsupervised "
                             "inner losses; use maml or first_order with 'equivariant'")
        if self.hypergradient == "implicit" and self.prox_lambda <= 0:
            raise ValueError("hypergradient 'implicit' needs prox_lambda > 0 (iMAML solves "
                             "(I + H/λ) v = g)")
        if not self.tasks:
            raise ValueError("tasks is empty: name at least one registered task")
        if self.learn_inner_lr and self.hypergradient != "maml":
            raise ValueError("learn_inner_lr needs hypergradient 'maml' (the step sizes get "
                             "their hypergradient by differentiating through the inner steps)")
        if self.outer_theta_weight < 0:
            raise ValueError(f"outer_theta_weight must be >= 0, got {self.outer_theta_weight}")
        if self.inner_lr <= 0:
            raise ValueError(f"inner_lr must be > 0, got {self.inner_lr}")
        if self.tasks_per_step < 0 or self.cg_iters < 1 or not self.prox_lambda >= 0:
            raise ValueError(f"tasks_per_step must be >= 0, cg_iters >= 1 and prox_lambda >= 0, "
                             f"got {self.tasks_per_step}, {self.cg_iters}, {self.prox_lambda}")
        if not math.isfinite(self.inner_lr):
            raise ValueError(f"inner_lr must be finite, got {self.inner_lr}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0: one per free core), got {self.workers}")


@dataclass
class TaskHypergradient:
    """One task's contribution to the outer step."""

    task: str
    grads: Params
    inner_loss: float
    outer_loss: float
    info: dict = field(default_factory=dict)


def inner_adapt(
    model: nn.Module, theta: Params, batch: TaskBatch, config: MetaConfig,
    create_graph: bool, lrs: LearningRate | None = None,
) -> tuple[Params, float]:
    r"""K inner steps from :math:`\phi_0 = \theta` on ``batch``. Returns :math:`\phi_K` and the
    inner loss at :math:`\phi_0`. With ``create_graph`` the result depends differentiably on
    ``theta`` (and on the step sizes ``lrs``, default ``config.inner_lr``); otherwise every step
    is detached (constant memory in K)."""
    opt = make_inner_optimizer(config.inner_optimizer, config.inner_lr if lrs is None else lrs)
    anchor = theta if create_graph else {k: v.detach() for k, v in theta.items()}
    phi = theta if create_graph else {k: v.detach().requires_grad_(True) for k, v in
                                      theta.items()}
    state = opt.init(phi)
    first = None
    for _ in range(config.inner_steps):
        phi, state, loss = inner_step(model, phi, anchor, state, batch, opt, config.inner_loss,
                                      config.prox_lambda, create_graph=create_graph)
        first = float(loss) if first is None else first
    return phi, first


def outer_loss(model: nn.Module, phi: Params, batch: TaskBatch) -> Tensor:
    """The supervised outer loss on the task's held-out batch."""
    return supervised_loss(reconstruct(model, phi, batch), batch.target)


#: Prefix of the learned inner step sizes among the hypergradients (``inner_lr.<parameter>``).
INNER_LR_PREFIX = "inner_lr."


def meta_objective(model: nn.Module, phi: Params, theta: Params, batch: TaskBatch,
                   config: MetaConfig) -> tuple[Tensor, Tensor]:
    r"""The outer objective of one task, :math:`\mathcal L_{\rm outer}(\phi_K) +
    w\,\mathcal L_{\rm outer}(\theta)` (``w = config.outer_theta_weight``), and its first term
    alone (what is logged as the outer loss)."""
    loss = outer_loss(model, phi, batch)
    if config.outer_theta_weight:
        return loss + config.outer_theta_weight * outer_loss(model, theta, batch), loss
    return loss, loss


def _grad_dict(loss: Tensor, params: Params) -> Params:
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
    return TaskHypergradient(inner_batch.task, _grad_dict(objective, wrt), inner,
                             float(loss.detach()))


def first_order_hypergradient(
    model: nn.Module, theta: Params, inner_batch: TaskBatch, outer_batch: TaskBatch,
    config: MetaConfig,
) -> TaskHypergradient:
    r"""First-order MAML: :math:`\nabla_\phi \mathcal L_{\rm outer}(\phi_K)`, treating
    :math:`d\phi_K/d\theta` as the identity."""
    phi, inner = inner_adapt(model, theta, inner_batch, config, create_graph=False)
    loss = outer_loss(model, phi, outer_batch)
    grads = _grad_dict(loss, phi)
    if config.outer_theta_weight:
        grads = _add_theta_term(model, grads, theta, outer_batch, config.outer_theta_weight)
    return TaskHypergradient(inner_batch.task, grads, inner, float(loss.detach()))


def _add_theta_term(model: nn.Module, grads: Params, theta: Params, batch: TaskBatch,
                    weight: float) -> Params:
    r"""``grads`` plus :math:`w\nabla_\theta\mathcal L_{\rm outer}(\theta)` (the θ-scored
    term of :func:`meta_objective`, for the hypergradients that do not differentiate it)."""
    theta = {k: v.detach().requires_grad_(True) for k, v in theta.items()}
    extra = _grad_dict(outer_loss(model, theta, batch), theta)
    return {k: g + weight * extra[k] for k, g in grads.items()}


def joint_gradient(
    model: nn.Module, theta: Params, inner_batch: TaskBatch, outer_batch: TaskBatch,
    config: MetaConfig,
) -> TaskHypergradient:
    r"""Joint multi-task pre-training, the non-meta baseline: no inner problem, the gradient of
    the supervised loss at :math:`\theta` on both of the task's batches,
    :math:`\nabla_\theta[\mathcal L_{\rm sup}(\theta; \mathcal D^{\rm train}_i) +
    \mathcal L_{\rm sup}(\theta; \mathcal D^{\rm test}_i)]`, so it sees the same images as
    meta-training step for step."""
    theta = {k: v.detach().requires_grad_(True) for k, v in theta.items()}
    train = outer_loss(model, theta, inner_batch)
    test = outer_loss(model, theta, outer_batch)
    return TaskHypergradient(inner_batch.task, _grad_dict(train + test, theta),
                             float(train.detach()), float(test.detach()))
