r"""Exact proximal operator of isotropic total variation (the T2 target).

.. math::
    \mathrm{prox}_{w\,TV}(y) = \arg\min_x \tfrac12\|x - y\|_2^2 + w\,\|Dx\|_{1,2},

with :math:`D = (D_h, D_v)` forward differences and Neumann boundary (the last difference in
each direction is 0, as deepinv's ``TVDenoiser.nabla``). Solved on the dual,
:math:`\min_{\|p\|_{\infty,2}\le w} \tfrac12\|y - D^\top p\|^2`, by FISTA with step
:math:`1/8 \le 1/\|D\|^2` (Beck & Teboulle 2009), :math:`x = y - D^\top p`. Iterations stop
when the duality gap :math:`P(x) - \mathcal D(p)` per pixel is below ``tol`` for every image;
the primal is 1-strongly convex, so this certifies :math:`\|x - x^\star\|_2^2 / n \le
2\,\mathrm{tol}` (RMSE ≤ 1.4e-3 at the default 1e-6, i.e. the target is exact to ≥ 57 dB).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor


def grad2d(x: Tensor) -> tuple[Tensor, Tensor]:
    """Forward differences (D_h x, D_v x), zero in the last column / row. Shapes: (..., H, W)."""
    dh = F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1))
    dv = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
    return dh, dv


def grad2d_adjoint(ph: Tensor, pv: Tensor) -> Tensor:
    r""":math:`D^\top (p_h, p_v)` (minus the divergence), the exact adjoint of :func:`grad2d`."""
    ph = ph[..., :, :-1]
    pv = pv[..., :-1, :]
    return F.pad(ph, (1, 0)) - F.pad(ph, (0, 1)) + F.pad(pv, (0, 0, 1, 0)) - F.pad(pv, (0, 0, 0, 1))


def tv_duality_gap(y: Tensor, ph: Tensor, pv: Tensor, weight: float) -> Tensor:
    """Per-image duality gap per pixel of the TV prox at a feasible dual point (p_h, p_v).

    Shapes:
        y, ph, pv: (B, C, H, W). Returns (B,).
    """
    x = y - grad2d_adjoint(ph, pv)
    dh, dv = grad2d(x)
    tv = torch.sqrt(dh * dh + dv * dv).flatten(1).sum(1)
    primal = 0.5 * (x - y).pow(2).flatten(1).sum(1) + weight * tv
    dual = 0.5 * y.pow(2).flatten(1).sum(1) - 0.5 * x.pow(2).flatten(1).sum(1)
    return (primal - dual) / y[0].numel()


@torch.no_grad()
def prox_tv(y: Tensor, weight: float = 0.1, tol: float = 1e-6, max_iter: int = 2000) -> Tensor:
    r"""Isotropic TV prox of each image of a batch, to a certified duality gap.

    Computed in float64 whatever the input dtype (float32 cannot certify small gaps).

    Args:
        y: (B, C, H, W) images (each channel is treated as its own image plane).
        weight: :math:`w > 0`, in image units (the paper leaves it open; 0.1 for [0, 1] images).
        tol: duality gap per pixel at which to stop.
        max_iter: iteration cap; a ``RuntimeWarning`` is raised if it is hit before ``tol``.

    Returns:
        (B, C, H, W) :math:`\mathrm{prox}_{w TV}(y)` in the dtype of ``y``, detached.
    """
    if not weight > 0:
        raise ValueError(f"weight must be > 0, got {weight}")
    y64 = y.detach().double()
    # FISTA state in preallocated buffers, both directions stacked on a leading axis: p (the
    # last iterate), n (the new one), q (the extrapolated point), x and g scratch. An
    # iteration is 15 in-place ops and no allocation: the same iterates as the textbook
    # expression, 1.4× faster on a T2 batch (8 × 64², 1 CPU thread). The target costs ~250
    # iterations per batch, two batches per meta-step.
    p, n, q, g = (y64.new_zeros(2, *y64.shape) for _ in range(4))
    x = torch.empty_like(y64)
    norm = torch.empty_like(y64)
    t = 1.0
    for it in range(max_iter):
        _primal_into(y64, q, x)
        _grad2d_into(x, g)  # the last column / row of g stay 0
        torch.add(q, g, alpha=1 / 8, out=n)
        torch.mul(n[0], n[0], out=norm).addcmul_(n[1], n[1]).sqrt_()  # |n| per pixel
        n.div_(norm.div_(weight).clamp_(min=1.0))  # project onto the 2-ball of radius w
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        torch.lerp(n, p, -(t - 1) / t_next, out=q)  # q = n + β (n − p)
        p, n, t = n, p, t_next
        if it % 10 == 9 and bool((tv_duality_gap(y64, p[0], p[1], weight) <= tol).all()):
            break
    else:
        gap = float(tv_duality_gap(y64, p[0], p[1], weight).max())
        if gap > tol:
            warnings.warn(f"prox_tv: duality gap {gap:.2e} > tol {tol:.0e} after {max_iter} "
                          f"iterations", RuntimeWarning, stacklevel=2)
    return _primal_into(y64, p, x).to(y.dtype)


def _primal_into(y: Tensor, p: Tensor, out: Tensor) -> Tensor:
    r""":math:`y - D^\top p` written into ``out``; p stacks (p_h, p_v) on its first axis."""
    ph, pv = p[0], p[1]
    out.copy_(y)
    out[..., :, :-1] += ph[..., :, :-1]
    out[..., :, 1:] -= ph[..., :, :-1]
    out[..., :-1, :] += pv[..., :-1, :]
    out[..., 1:, :] -= pv[..., :-1, :]
    return out


def _grad2d_into(x: Tensor, out: Tensor) -> None:
    """:func:`grad2d` written into the stacked ``out`` (2, ...) (its last column / row of
    each direction untouched)."""
    torch.sub(x[..., :, 1:], x[..., :, :-1], out=out[0, ..., :, :-1])
    torch.sub(x[..., 1:, :], x[..., :-1, :], out=out[1, ..., :-1, :])
