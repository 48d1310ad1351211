r"""Linear bilevel meta-learning (eq. (3) of the paper) and the closed forms behind Theorem 3.1.

Model :math:`f_\theta(y) = \theta y` with :math:`\theta \in \mathbb R^{n \times m}`. Samples are
rows: ``x`` (N, n), ``y = x @ A.mT`` (N, m), and :math:`f_\theta` maps ``y`` to ``y @ theta.mT``.
Every function accepts a leading task dimension ``T`` on ``A`` (T, m, n) and the data
(T, N, ·), so several tasks run in one batched inner loop. Losses are averaged over samples:

.. math::
    \mathcal L_{\rm uns}(\phi) = \frac{1}{2N}\sum_j \|A\phi y_j - y_j\|_2^2,\qquad
    \mathcal L_{\rm sup}(\phi) = \frac{1}{2N}\sum_j \|\phi y_j - x_j\|_2^2,

and the inner problem of task :math:`i` is
:math:`\min_\phi \mathcal L_{\rm inner}(\phi) + \tfrac\lambda2\|\phi-\theta\|_F^2`, replaced by a
few steps of a functional optimizer from :mod:`metaprior.meta.inner` started at
:math:`\phi = \theta`; the outer loss is :math:`\mathcal L_{\rm sup}` on held-out samples.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from metaprior.meta.inner import InnerOptimizer, apply_updates


class LinearTasks(NamedTuple):
    """A batch of ``T`` tasks (operator + train/test data).

    Attributes:
        A: (T, m, n) operators.
        x_train: (T, N, n) images for the inner problem (used only if supervised).
        y_train: (T, N, m) measurements for the inner problem.
        x_test: (T, N', n) images for the outer loss.
        y_test: (T, N', m) measurements for the outer loss.
    """

    A: Tensor
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def linear_model(theta: Tensor, y: Tensor) -> Tensor:
    r""":math:`f_\theta(y) = \theta y` on row-stacked samples.

    Args:
        theta: (..., n, m) weights.
        y: (..., N, m) measurements.

    Returns:
        (..., N, n) reconstructions.
    """
    return y @ theta.mT


def unsupervised_loss(theta: Tensor, A: Tensor, y: Tensor) -> Tensor:
    r"""Measurement consistency :math:`\frac1{2N}\sum_j \|A\theta y_j - y_j\|_2^2` (eq. 1).

    Args:
        theta: (..., n, m) weights.
        A: (..., m, n) operators.
        y: (..., N, m) measurements.

    Returns:
        (...) one loss per task.
    """
    residual = linear_model(theta, y) @ A.mT - y
    return 0.5 * residual.pow(2).sum(-1).mean(-1)


def supervised_loss(theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
    r"""Reconstruction error :math:`\frac1{2N}\sum_j \|\theta y_j - x_j\|_2^2` (eq. 1).

    Args:
        theta: (..., n, m) weights.
        x: (..., N, n) ground truth.
        y: (..., N, m) measurements.

    Returns:
        (...) one loss per task.
    """
    return 0.5 * (linear_model(theta, y) - x).pow(2).sum(-1).mean(-1)


def inner_objective(
    phi: Tensor, theta: Tensor, A: Tensor, y: Tensor, lam: float, x: Tensor | None = None
) -> Tensor:
    r"""Inner objective :math:`\mathcal L_{\rm inner}(\phi) + \tfrac\lambda2\|\phi-\theta\|_F^2`.

    Args:
        phi: (..., n, m) task weights.
        theta: (n, m) or (..., n, m) meta weights (the proximal anchor).
        A: (..., m, n) operators.
        y: (..., N, m) measurements.
        lam: :math:`\lambda \ge 0`.
        x: (..., N, n) ground truth; if given the inner loss is supervised, else unsupervised.

    Returns:
        (...) one value per task.
    """
    data = supervised_loss(phi, x, y) if x is not None else unsupervised_loss(phi, A, y)
    return data + 0.5 * lam * (phi - theta).pow(2).sum((-2, -1))


def gradient_support(A: Tensor, y: Tensor, supervised: bool = False) -> Tensor:
    r"""Entries of :math:`\phi` whose inner gradient can be nonzero.

    The inner gradient is :math:`A^\top(A\phi C - C) + \lambda(\phi-\theta)` (unsupervised) or
    :math:`\phi C - \tfrac1N X^\top Y + \lambda(\phi-\theta)` (supervised),
    :math:`C = \tfrac1N Y^\top Y`. Rows :math:`j` with :math:`A_{:,j} = 0` (unsupervised only) and
    columns :math:`k` with :math:`Y_{:,k} = 0` get an exactly zero gradient at every step, so
    :math:`\phi = \theta` there for any optimizer. For masks these are the rows and columns of
    the hidden pixels (Theorem 3.1 (ii) for Adam).

    Args:
        A: (..., m, n) operators.
        y: (..., N, m) measurements.
        supervised: whether the inner loss is supervised (then every row is active).

    Returns:
        (..., n, m) boolean support.
    """
    cols = (y != 0).any(-2)  # (..., m)
    rows = (A != 0).any(-2) if not supervised else torch.ones_like(A[..., 0, :], dtype=torch.bool)
    return rows[..., :, None] & cols[..., None, :]


def inner_trajectory(
    theta: Tensor,
    A: Tensor,
    y: Tensor,
    *,
    lam: float,
    optimizer: InnerOptimizer,
    num_steps: int,
    x: Tensor | None = None,
    create_graph: bool = False,
) -> list[Tensor]:
    r"""Iterates :math:`\phi^{(0)} = \theta, \phi^{(1)}, \dots, \phi^{(K)}` of the inner problem.

    Each step takes the gradient of :func:`inner_objective` and applies
    ``optimizer.update``. Gradient entries outside :func:`gradient_support` are exactly zero
    for every :math:`\theta`; they are replaced by a constant zero (same value), so no
    optimizer's derivative at a zero gradient (e.g. Adam's :math:`\sqrt{v}` at :math:`v = 0`,
    infinite unless clamped) can turn into NaN hypergradients.

    Args:
        theta: (n, m) meta weights.
        A: (..., m, n) operators, one per task.
        y: (..., N, m) inner-problem measurements.
        lam: proximal weight :math:`\lambda`.
        optimizer: functional optimizer, e.g. ``adam(1e-2)`` or ``sgd(lr)``.
        num_steps: :math:`K`.
        x: (..., N, n) ground truth for a supervised inner loss; None for unsupervised.
        create_graph: keep the graph so the iterates are differentiable in ``theta``
            (second-order MAML); otherwise every iterate is detached.

    Returns:
        ``num_steps + 1`` tensors of shape (..., n, m).
    """
    anchor = theta if create_graph else theta.detach()
    batch = torch.broadcast_shapes(A.shape[:-2], y.shape[:-2])
    support = gradient_support(A, y, supervised=x is not None)
    params = {"phi": anchor.expand(*batch, *theta.shape)}
    state = optimizer.init(params)
    iterates = [params["phi"]]
    for _ in range(num_steps):
        phi = params["phi"]
        if not (create_graph and phi.requires_grad):
            phi = phi.detach().requires_grad_(True)
        with torch.enable_grad():
            objective = inner_objective(phi, anchor, A, y, lam, x).sum()
            (grad,) = torch.autograd.grad(objective, phi, create_graph=create_graph)
        grad = torch.where(support, grad, 0.0)
        updates, state = optimizer.update({"phi": grad}, state, {"phi": phi})
        params = apply_updates({"phi": phi if create_graph else phi.detach()}, updates)
        iterates.append(params["phi"])
    return iterates


def inner_solve(
    theta: Tensor,
    A: Tensor,
    y: Tensor,
    *,
    lam: float,
    optimizer: InnerOptimizer,
    num_steps: int,
    x: Tensor | None = None,
    create_graph: bool = False,
) -> Tensor:
    r"""Last iterate :math:`\phi^{(K)}` of :func:`inner_trajectory` (same arguments).

    Returns:
        (..., n, m) task weights :math:`\theta_i`.
    """
    return inner_trajectory(
        theta,
        A,
        y,
        lam=lam,
        optimizer=optimizer,
        num_steps=num_steps,
        x=x,
        create_graph=create_graph,
    )[-1]


def meta_loss(
    theta: Tensor,
    tasks: LinearTasks,
    *,
    lam: float,
    optimizer: InnerOptimizer,
    num_steps: int,
    supervised_inner: bool = False,
    create_graph: bool = True,
) -> Tensor:
    r"""Outer objective of eq. (3), averaged over the ``T`` tasks:
    :math:`\frac1T\sum_i \mathcal L_{\sup}(\theta_i; \mathcal D_i^{\rm test})` with
    :math:`\theta_i` = ``num_steps`` inner steps from :math:`\theta` on
    :math:`\mathcal D_i^{\rm train}`.

    Args:
        theta: (n, m) meta weights.
        tasks: batch of ``T`` tasks.
        lam: proximal weight.
        optimizer: inner optimizer.
        num_steps: inner steps.
        supervised_inner: inner loss supervised (True) or unsupervised (False).
        create_graph: differentiate through the inner steps (True) or treat
            :math:`\theta_i` as a constant (only the outer loss value is then meaningful).

    Returns:
        Scalar.
    """
    theta_i = inner_solve(
        theta,
        tasks.A,
        tasks.y_train,
        lam=lam,
        optimizer=optimizer,
        num_steps=num_steps,
        x=tasks.x_train if supervised_inner else None,
        create_graph=create_graph,
    )
    return supervised_loss(theta_i, tasks.x_test, tasks.y_test).mean()


def inner_fixed_point(
    theta: Tensor, A: Tensor, y: Tensor, lam: float, x: Tensor | None = None
) -> Tensor:
    r"""Exact minimizer of :func:`inner_objective` for one task (small :math:`n m` only).

    Unsupervised: :math:`A^\top A\,\phi\,C + \lambda\phi = A^\top C + \lambda\theta`, a
    Stein/Sylvester system (eq. 14) solved as
    :math:`(A^\top A \otimes C + \lambda I)\,\mathrm{vec}\,\phi = \mathrm{vec}(A^\top C +
    \lambda\theta)` (row-major vec). Supervised:
    :math:`\phi = (\tfrac1N X^\top Y + \lambda\theta)(C + \lambda I)^{-1}`.
    Here :math:`C = \tfrac1N Y^\top Y`.

    Args:
        theta: (n, m) meta weights.
        A: (m, n) operator.
        y: (N, m) measurements.
        lam: :math:`\lambda > 0`.
        x: (N, n) ground truth for the supervised inner loss.

    Returns:
        (n, m) minimizer :math:`\theta_i`.
    """
    n, m = theta.shape
    c = y.T @ y / y.shape[0]
    if x is not None:
        rhs = x.T @ y / y.shape[0] + lam * theta
        return torch.linalg.solve(c + lam * torch.eye(m, dtype=c.dtype), rhs, left=False)
    gram = A.T @ A
    system = torch.kron(gram, c) + lam * torch.eye(n * m, dtype=c.dtype)
    rhs = A.T @ c + lam * theta
    return torch.linalg.solve(system, rhs.reshape(-1)).reshape(n, m)


def mask_inner_solution(theta: Tensor, A: Tensor, y: Tensor, lam: float) -> Tensor:
    r"""Exact unsupervised inner minimizer for diagonal 0/1 operators (masks), batched.

    For :math:`A = \mathrm{diag}(m)` the Stein system of :func:`inner_fixed_point` decouples
    by rows: a hidden row (:math:`m_p = 0`) has zero data gradient and stays at
    :math:`\theta_p`; an observed row solves :math:`\phi_p(C + \lambda I) = C_p +
    \lambda\theta_p`. Both cases read

    .. math::
        \phi = \theta + M\,(I - \theta)\,C\,(C + \lambda I)^{-1},\qquad
        M = \mathrm{diag}(m),\ C = \tfrac1N Y^\top Y,

    affine in :math:`\theta` (differentiable, one :math:`n \times n` solve per task instead of
    the :math:`nm \times nm` system of :func:`inner_fixed_point`).

    Args:
        theta: (n, n) meta weights.
        A: (..., n, n) diagonal 0/1 operators.
        y: (..., N, n) measurements (``x * m``).
        lam: :math:`\lambda > 0`.

    Returns:
        (..., n, n) task weights :math:`\theta_i`.
    """
    n = theta.shape[-1]
    mask = A.diagonal(dim1=-2, dim2=-1)
    c = y.mT @ y / y.shape[-2]
    eye = torch.eye(n, dtype=c.dtype, device=c.device)
    gain = torch.linalg.solve(c + lam * eye, c, left=False)  # C (C + lam I)^-1
    return theta + mask[..., :, None] * ((eye - theta) @ gain)


def affine_inner_map(A: Tensor, lam: float) -> tuple[Tensor, Tensor]:
    r"""Closed-form inner solution with :math:`C_i = I` (eqs. 15–16):
    :math:`\theta_i = P_i\theta + B_i`.

    .. math::
        P_i = \lambda(A_i^\top A_i + \lambda I)^{-1} \succ 0,\qquad
        B_i = (A_i^\top A_i + \lambda I)^{-1} A_i^\top .

    Args:
        A: (..., m, n) operators.
        lam: :math:`\lambda > 0`.

    Returns:
        ``(P, B)`` of shapes (..., n, n) and (..., n, m).
    """
    n = A.shape[-1]
    reg = A.mT @ A + lam * torch.eye(n, dtype=A.dtype, device=A.device)
    return lam * torch.linalg.inv(reg), torch.linalg.solve(reg, A.mT)


def affine_outer_loss(theta: Tensor, A: Tensor, x: Tensor, lam: float) -> Tensor:
    r"""Outer loss with the affine inner solution, summed as in eq. (3):
    :math:`\sum_i \tfrac12 \|X_i - (P_i\theta + B_i) Y_i\|_F^2`, :math:`Y_i = A_i X_i`.

    Args:
        theta: (n, m) meta weights.
        A: (T, m, n) operators.
        x: (T, N, n) images (rows are samples).
        lam: :math:`\lambda > 0`.

    Returns:
        Scalar.
    """
    P, B = affine_inner_map(A, lam)
    theta_i = P @ theta + B
    y = x @ A.mT
    return 0.5 * (linear_model(theta_i, y) - x).pow(2).sum()


def affine_outer_hessian(A: Tensor, x: Tensor, lam: float) -> Tensor:
    r"""Hessian of :func:`affine_outer_loss` in :math:`\theta` (Theorem 3.1 (iii)).

    .. math::
        H = \sum_i S_i \otimes P_i^2,\qquad S_i = Y_i Y_i^\top = A_i X_i X_i^\top A_i^\top,

    in the column-stacking :math:`\mathrm{vec}` of the paper. This function returns it for
    PyTorch's row-major flattening ``theta.reshape(-1)``, where the factors swap:
    :math:`\sum_i P_i^2 \otimes S_i`. Since :math:`P_i \succ 0`, :math:`H \succ 0` iff
    :math:`\sum_i S_i` is full rank.

    Args:
        A: (T, m, n) operators.
        x: (T, N, n) images (rows are samples).
        lam: :math:`\lambda > 0`.

    Returns:
        (n m, n m) symmetric positive semidefinite matrix.
    """
    P, _ = affine_inner_map(A, lam)
    y = x @ A.mT
    S = y.mT @ y
    return sum(torch.kron(p @ p, s) for p, s in zip(P, S, strict=True))
