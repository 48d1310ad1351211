r"""The inner and outer problems of eq. (2) of the paper (arXiv 2311.18710), shared by
meta-training and adaptation.

.. math::
    \phi_{t+1} = \phi_t + \mathrm{update}\big(\nabla_\phi[\mathcal L_{\rm inner}(f_\phi)
        + \tfrac\lambda2\|\phi-\theta\|^2]\big),\qquad \phi_0 = \theta,

with :math:`\mathcal L_{\rm inner}` supervised or unsupervised (:mod:`metaprior.losses`) and
the update a functional optimizer (:mod:`metaprior.meta.inner`). With ``create_graph=True``
the steps stay in the autograd graph, so :math:`\phi_K` is a differentiable function of
:math:`\theta` (second-order MAML). The outer problem scores :math:`\phi_K` on held-out data
of the same task.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metaprior.losses import (
    data_loss,
    measurement_consistency_loss,
    proximal_term,
    rotate,
    supervised_loss,
    sure_loss,
)
from metaprior.meta.config import MetaConfig
from metaprior.meta.inner import (
    InnerOptimizer,
    LearningRate,
    apply_updates,
    make_inner_optimizer,
)
from metaprior.physics.operators import in_float32
from metaprior.tasks import TaskBatch
from metaprior.typing import OptState, Params


def check_params(model: nn.Module, params: Params, owner: str, what: str = "theta") -> None:
    """One-line ``ValueError`` for ``params`` that name a parameter ``model`` lacks or hold one
    of another shape (e.g. θ of a model with other iterations or depth)."""
    shapes = {k: v.shape for k, v in model.named_parameters()}
    for name, value in params.items():
        if name not in shapes:
            raise ValueError(f"{owner}: {what} names {name!r}, which the model lacks: use "
                             f"parameters_of(model)")
        if value.shape != shapes[name]:
            raise ValueError(f"{owner}: {what}'s {name!r} is {tuple(value.shape)}, the model's "
                             f"{tuple(shapes[name])}: use the parameters of this model "
                             f"(parameters_of(model))")


def is_frozen(name: str, prefixes: Sequence[str]) -> bool:
    """Whether the parameter ``name`` starts with one of ``prefixes`` (``AdaptConfig.frozen``,
    ``MetaConfig.frozen``) without splitting a number: ``denoiser`` holds ``denoiser_rgb.*``
    too, ``convs.1`` holds ``convs.1.weight`` but not ``convs.10.weight``."""
    return any(name.startswith(p) and not (p[-1:].isdigit() and name[len(p):][:1].isdigit())
               for p in prefixes)


def check_frozen(names: Sequence[str], prefixes: Sequence[str], owner: str) -> None:
    """One-line ``ValueError`` for a frozen prefix that names none of the parameters ``names``,
    or prefixes that hold every one of them fixed."""
    for prefix in prefixes:
        if not any(is_frozen(k, (prefix,)) for k in names):
            tops = sorted({k.split(".")[0] for k in names})
            raise ValueError(f"{owner}: frozen prefix {prefix!r} names no parameter; the "
                             f"model's parameters start with {', '.join(tops)}")
    if prefixes and all(is_frozen(k, prefixes) for k in names):
        raise ValueError(f"{owner}: frozen {tuple(prefixes)} holds every parameter fixed: "
                         f"nothing would {'adapt' if owner == 'adapt' else 'train'}")


def reconstruct(model: nn.Module, params: Params, batch: TaskBatch) -> Tensor:
    """:math:`f_\\phi(y, A)` with the parameters ``params`` (``functional_call``)."""
    check_params(model, params, "reconstruct")
    y = batch.y.real if batch.y.is_complex() else batch.y
    dtype = next(iter(params.values())).dtype if params else y.dtype
    if y.dtype != dtype:  # else a dtype error deep in a convolution
        raise ValueError(f"reconstruct: the measurements are {y.dtype}, the model's parameters "
                         f"{dtype}: measure float32 images (x.float()) or convert the model")
    return functional_call(model, params, (batch.y, batch.physics))


def inner_loss(
    model: nn.Module, phi: Params, theta: Params, batch: TaskBatch, kind: str, prox_lambda: float,
    draw: int = 0,
) -> Tensor:
    r""":math:`\mathcal L_{\rm inner}(f_\phi) + \frac\lambda2\|\phi - \theta\|^2` on ``batch``.

    ``kind="equivariant"`` is measurement consistency plus equivariant imaging (Chen, Tachella &
    Davies 2021), still without ground truth: with :math:`T` a 90° rotation and
    :math:`\hat x = f_\phi(y)`, it adds :math:`\tfrac{1}{2N}\|f_\phi(A T\hat x) - T\hat x\|^2`,
    which sees the part of :math:`\mathrm{Ker}(A)` that :math:`T` moves into the range of
    :math:`A^\top` (column-sampled k-space becomes row-sampled; the SR grid changes phase).

    ``kind="robust-equivariant"`` is its form for noisy data (robust equivariant imaging, Chen,
    Tachella & Davies 2022): measurement consistency becomes SURE
    (:func:`metaprior.losses.sure_loss`, with the batch's ``noise_sigma``) and the transformed
    image is re-measured with noise, :math:`f_\phi(A T\hat x + \sigma e')`, so neither term
    rewards fitting the noise. Its random draws (the SURE probe, :math:`e'`) come from a
    generator seeded by the measurements and ``draw`` (the step's number), so a step is a
    deterministic function of its batch and its number (resumable bitwise), and adapting many
    steps on the same measurements draws anew at each. Without noise it is ``"equivariant"``.
    """
    x_hat = reconstruct(model, phi, batch)
    # the operator and the losses in float32 under any autocast (AdaptConfig.precision): only
    # the network's own computations take the autocast's dtype
    if kind in ("equivariant", "robust-equivariant"):
        sigma = batch.noise_sigma if kind == "robust-equivariant" else 0.0
        tx = rotate(x_hat)
        with in_float32(x_hat.device.type):
            y_eq = batch.physics.A(tx)
        if sigma > 0:
            generator = torch.Generator().manual_seed(
                zlib.crc32(draw.to_bytes(8, "little", signed=True),
                           zlib.crc32(batch.y.detach().cpu().numpy().tobytes())))
            real_y = torch.view_as_real(batch.y) if batch.y.is_complex() else batch.y
            probe = torch.randn(real_y.shape, generator=generator).to(real_y)
            data = sure_loss(x_hat, batch.y, batch.physics, sigma,
                             lambda y: functional_call(model, phi, (y, batch.physics)), probe)
            e = torch.randn(y_eq.shape, generator=generator, dtype=y_eq.dtype)
            y_eq = y_eq + sigma * e.to(y_eq.device)
        else:
            with in_float32(x_hat.device.type):
                data = measurement_consistency_loss(x_hat, batch.y, batch.physics)
        x_eq = functional_call(model, phi, (y_eq, batch.physics))
        loss = data + supervised_loss(x_eq, tx)
    else:
        with in_float32(x_hat.device.type):
            loss = data_loss(kind, x_hat, batch)
    if prox_lambda:
        loss = loss + proximal_term(phi, theta, prox_lambda)
    return loss


@dataclass(frozen=True)
class BatchShare:
    r"""This process's share of a task's inner batch in a distributed run: its samples carry
    ``weight`` (their fraction of the batch), and ``reduce`` sums a dict of tensors over the
    processes that share the task, differentiably, so that every one of them takes the inner
    step of the whole batch, :math:`g = \sum_r w_r \nabla\mathcal L_{\rm inner}(\phi;
    \mathcal D_r)`."""

    weight: float
    reduce: Callable[[Params], Params]


def inner_step(
    model: nn.Module, phi: Params, theta: Params, state: OptState, batch: TaskBatch,
    opt: InnerOptimizer, kind: str, prox_lambda: float, create_graph: bool = False,
    share: BatchShare | None = None, draw: int = 0, autocast: torch.dtype | None = None,
) -> tuple[Params, OptState, Tensor]:
    """One optimizer step on the inner loss (``draw``: the step's number, which seeds the
    random draws of a stochastic loss; ``autocast``: the dtype of the loss's forward pass
    under ``torch.autocast``, the backward pass outside it, as PyTorch prescribes). Returns
    (new params, new state, loss before; with ``share``, this part's loss times its weight)."""
    with (contextlib.nullcontext() if autocast is None else
          torch.autocast(batch.y.device.type, dtype=autocast)):
        loss = inner_loss(model, phi, theta, batch, kind, prox_lambda, draw)
    if share is not None:
        loss = share.weight * loss
    names = [k for k, p in phi.items() if p.requires_grad]
    grads = torch.autograd.grad(loss, [phi[k] for k in names], create_graph=create_graph,
                                allow_unused=True)
    # λ_K of the last layer never reaches the output: its gradient is zero.
    grads = {k: torch.zeros_like(phi[k]) if g is None else g
             for k, g in zip(names, grads, strict=True)}
    if share is not None:
        grads = share.reduce(grads)
    updates, state = opt.update(grads, state, phi)
    if not create_graph:
        updates = {k: u.detach() for k, u in updates.items()}
    new_phi = apply_updates({k: phi[k] for k in names}, updates)
    if not create_graph:
        new_phi = {k: p.detach().requires_grad_(True) for k, p in new_phi.items()}
    # parameters held fixed (no gradient asked) stay as they are
    new_phi = {k: new_phi.get(k, p) for k, p in phi.items()}
    return new_phi, state, loss.detach()


def inner_adapt(
    model: nn.Module, theta: Params, batch: TaskBatch, config: MetaConfig,
    create_graph: bool, lrs: LearningRate | None = None, share: BatchShare | None = None,
) -> tuple[Params, float]:
    r"""K inner steps from :math:`\phi_0 = \theta` on ``batch``. Returns :math:`\phi_K` and the
    inner loss at :math:`\phi_0`. With ``create_graph`` the result depends differentiably on
    ``theta`` (and on the learning rates ``lrs``, default ``config.inner_lr``); otherwise every step
    is detached (constant memory in K). With ``share``, ``batch`` is this process's part of the
    task's inner batch and the steps are those of the whole batch (:class:`BatchShare`)."""
    if lrs is None:  # the model's own relative learning rates, if it declares them
        scales = model.lr_scales() if hasattr(model, "lr_scales") else None
        lrs = config.inner_lr if scales is None else {
            k: config.inner_lr * s for k, s in scales.items()}
    opt = make_inner_optimizer(config.inner_optimizer, lrs)
    anchor = theta if create_graph else {k: v.detach() for k, v in theta.items()}
    phi = theta if create_graph else {k: v.detach().requires_grad_(True) for k, v in
                                      theta.items()}
    state = opt.init(phi)
    first = None
    for step in range(config.inner_steps):
        phi, state, loss = inner_step(model, phi, anchor, state, batch, opt, config.inner_loss,
                                      config.prox_lambda, create_graph=create_graph,
                                      share=share, draw=step)
        first = float(loss) if first is None else first
    return phi, first


def outer_loss(model: nn.Module, phi: Params, batch: TaskBatch) -> Tensor:
    """The supervised outer loss on the task's held-out batch."""
    return supervised_loss(reconstruct(model, phi, batch), batch.target)


def meta_objective(model: nn.Module, phi: Params, theta: Params, batch: TaskBatch,
                   config: MetaConfig) -> tuple[Tensor, Tensor]:
    r"""The outer objective of one task, :math:`\mathcal L_{\rm outer}(\phi_K) +
    w\,\mathcal L_{\rm outer}(\theta)` (``w = config.outer_theta_weight``), and its first term
    alone (what is logged as the outer loss)."""
    loss = outer_loss(model, phi, batch)
    if config.outer_theta_weight:
        return loss + config.outer_theta_weight * outer_loss(model, theta, batch), loss
    return loss, loss
