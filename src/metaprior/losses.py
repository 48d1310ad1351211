r"""Per-task losses of eq. (1) of the paper (arXiv 2311.18710) and the proximal term of
eq. (2), as pure functions.

Both data losses are *means* over the batch and the pixels (or measurement entries), times ½,
so their scale does not depend on image size or batch size:

.. math::
    \mathcal L_{\sup} = \frac{1}{2BN}\sum_j \|f_\phi(y_j) - x_j\|_2^2, \qquad
    \mathcal L_{\rm uns} = \frac{1}{2BM}\sum_j \|A f_\phi(y_j) - y_j\|_2^2,

with :math:`N` pixels per image and :math:`M` entries per measurement (complex entries count
once, :math:`|\cdot|^2`). The proximal term is a plain sum over all parameters,
:math:`\tfrac\lambda2\|\phi - \theta\|_2^2`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from deepinv.physics import LinearPhysics
from torch import Tensor

from metaprior.typing import Params


def supervised_loss(x_hat: Tensor, target: Tensor) -> Tensor:
    r""":math:`\frac{1}{2BN}\|\hat x - x\|^2`. Shapes: (B, C, H, W) both; returns a scalar."""
    return 0.5 * (x_hat - target).pow(2).mean()


def measurement_consistency_loss(x_hat: Tensor, y: Tensor, physics: LinearPhysics) -> Tensor:
    r""":math:`\frac{1}{2BM}\|A\hat x - y\|^2`, blind to :math:`\mathrm{Ker}(A)`; needs no
    ground truth. Shapes: x_hat (B, C, H, W), y as ``physics.A`` returns; returns a scalar."""
    return 0.5 * (physics.A(x_hat) - y).abs().pow(2).mean()


def sure_loss(x_hat: Tensor, y: Tensor, physics: LinearPhysics, sigma: float,
              reconstruct: Callable[[Tensor], Tensor], probe: Tensor, tau: float = 1e-3) -> Tensor:
    r"""Stein's unbiased risk estimate (SURE) in the measurement domain for
    :math:`y = Ax + \sigma e`, :math:`e \sim \mathcal N(0, I)`; needs no ground truth:

    .. math::
        \frac{1}{2BM}\Big(\|A\hat x - y\|^2 - BM\sigma^2
        + 2s^2\,\frac{b^\top\big(A f(y + \tau b) - A\hat x\big)}{\tau}\Big),

    whose mean over the noise is :math:`\frac{1}{2BM}\mathbb E\|A\hat x - Ax\|^2`, the risk
    in the range of :math:`A`: measurement consistency without the reward for fitting the noise.
    The divergence of :math:`y \mapsto A f(y)` is estimated with one Monte-Carlo probe
    :math:`b` (Ramani, Blu & Unser 2008); :math:`s^2` is the variance of one real component of
    the noise (:math:`\sigma^2`, or :math:`\sigma^2/2` for complex entries).

    Shapes: x_hat (B, C, H, W); y as ``physics.A`` returns; ``probe`` a standard normal
    tensor of the shape of ``torch.view_as_real(y)`` (complex y) or of ``y``;
    ``reconstruct``: :math:`y \mapsto f(y)`. Returns a scalar."""
    complex_ = y.is_complex()
    real = torch.view_as_real if complex_ else (lambda t: t)
    residual = physics.A(x_hat)
    y_probe = y + tau * (torch.view_as_complex(probe) if complex_ else probe)
    divergence = (probe * (real(physics.A(reconstruct(y_probe))) - real(residual))).sum() / tau
    s2 = sigma**2 / 2 if complex_ else sigma**2
    m = y.numel()
    return 0.5 * ((residual - y).abs().pow(2).sum() - m * sigma**2 + 2 * s2 * divergence) / m


def proximal_term(phi: Params, theta: Params, lam: float) -> Tensor:
    r""":math:`\frac\lambda2\sum_k\|\phi_k - \theta_k\|^2` over all parameter tensors."""
    return 0.5 * lam * sum((phi[k] - theta[k]).pow(2).sum() for k in phi)


def rotate(x: Tensor) -> Tensor:
    r"""The transform :math:`T` of the equivariant loss: a 90° rotation of (B, C, H, H) images."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"the equivariant loss rotates images by 90°: it needs square images, "
                         f"got {tuple(x.shape[-2:])}")
    return torch.rot90(x, 1, dims=(-2, -1))


#: "equivariant" = measurement consistency + equivariant imaging; "robust-equivariant" = SURE
#: + equivariant imaging on noisy re-measurements (both need the model, see
#: :func:`metaprior.meta.problem.inner_loss`); they use no ground truth.
LOSSES = ("supervised", "unsupervised", "equivariant", "robust-equivariant")


def data_loss(kind: str, x_hat: Tensor, batch) -> Tensor:
    """Supervised (needs ``batch.target``) or unsupervised (needs ``batch.y``, ``batch.physics``)
    loss of a :class:`metaprior.tasks.TaskBatch`."""
    if kind == "supervised":
        return supervised_loss(x_hat, batch.target)
    if kind == "unsupervised":
        return measurement_consistency_loss(x_hat, batch.y, batch.physics)
    if kind in ("equivariant", "robust-equivariant"):
        raise ValueError(f"the {kind} loss needs the model: use "
                         "metaprior.meta.problem.inner_loss")
    raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
