r"""Implicit (iMAML) hypergradient: optimality condition + linear solve.

At an approximate inner solution :math:`\phi^\star` of
:math:`\min_\phi \mathcal L_{\rm inner}(\phi) + \frac\lambda2\|\phi-\theta\|^2`, the optimality
condition :math:`\nabla\mathcal L_{\rm inner}(\phi^\star) + \lambda(\phi^\star - \theta) = 0`
gives :math:`d\phi^\star/d\theta = (I + \nabla^2\mathcal L_{\rm inner}/\lambda)^{-1}`, so the
hypergradient is the solution :math:`v` of

.. math:: \big(I + \tfrac1\lambda \nabla^2 \mathcal L_{\rm inner}(\phi^\star)\big)\, v
    = \nabla_\phi \mathcal L_{\rm outer}(\phi^\star),

found by conjugate gradient with Hessian-vector products (Rajeswaran et al. 2019). The inner
steps are run detached, so memory does not grow with K.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from metaprior.losses import data_loss
from metaprior.meta.config import MetaConfig
from metaprior.meta.maml import TaskHypergradient, add_theta_term, grad_dict
from metaprior.meta.problem import inner_adapt, outer_loss, reconstruct
from metaprior.tasks import TaskBatch
from metaprior.typing import Params


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor], b: Tensor, max_iter: int = 20, tol: float = 1e-6
) -> tuple[Tensor, float, int]:
    r"""Solve :math:`Mx = b` for symmetric positive definite :math:`M` by CG from :math:`x=0`.

    Args:
        matvec: :math:`v \mapsto Mv` on flat vectors.
        b: (n,) right-hand side.
        max_iter: iteration cap.
        tol: stop when :math:`\|b - Mx\| \le \mathrm{tol}\,\|b\|`.

    Returns:
        (x, final relative residual, iterations run).
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = torch.dot(r, r)
    b_norm = torch.sqrt(rs).clamp_min(torch.finfo(b.dtype).tiny)
    it = 0
    for it in range(1, max_iter + 1):
        if float(torch.sqrt(rs) / b_norm) <= tol:
            it -= 1
            break
        mp = matvec(p)
        curvature = torch.dot(p, mp)
        if curvature <= 0:  # not positive definite along p: stop with the current iterate
            break
        alpha = rs / curvature
        x = x + alpha * p
        r = r - alpha * mp
        rs_new = torch.dot(r, r)
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x, float(torch.sqrt(rs) / b_norm), it


def implicit_hypergradient(
    model: nn.Module, theta: Params, inner_batch: TaskBatch, outer_batch: TaskBatch,
    config: MetaConfig,
) -> TaskHypergradient:
    """iMAML hypergradient of one task; ``info`` holds the CG residual and iterations."""
    phi, inner = inner_adapt(model, theta, inner_batch, config, create_graph=False)
    loss_out = outer_loss(model, phi, outer_batch)
    g_out = grad_dict(loss_out, phi)
    names = list(phi)
    shapes = [phi[k].shape for k in names]
    sizes = [phi[k].numel() for k in names]

    loss_in = data_loss(config.inner_loss, reconstruct(model, phi, inner_batch), inner_batch)
    g_in = torch.autograd.grad(loss_in, [phi[k] for k in names], create_graph=True,
                               allow_unused=True)
    live = [i for i, g in enumerate(g_in) if g is not None and g.requires_grad]

    def hvp(v: Tensor) -> Tensor:
        parts = list(torch.split(v, sizes))
        dot = sum((g_in[i] * parts[i].view(shapes[i])).sum() for i in live)
        hv = torch.autograd.grad(dot, [phi[k] for k in names], retain_graph=True,
                                 allow_unused=True)
        flat = torch.cat([torch.zeros(n, dtype=v.dtype, device=v.device) if h is None
                          else h.reshape(-1) for h, n in zip(hv, sizes, strict=True)])
        return v + flat / config.prox_lambda

    b = torch.cat([g_out[k].reshape(-1) for k in names])
    v, residual, iters = conjugate_gradient(hvp, b, config.cg_iters, config.cg_tol)
    grads = {k: part.view(s) for k, part, s in zip(names, torch.split(v, sizes), shapes,
                                                    strict=True)}
    if config.outer_theta_weight:
        grads = add_theta_term(model, grads, theta, outer_batch, config.outer_theta_weight)
    return TaskHypergradient(inner_batch.task, grads, inner, float(loss_out.detach()),
                             {"cg_residual": residual, "cg_iters": iters})
