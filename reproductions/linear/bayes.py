r"""Bayes (MMSE) estimator for a Gaussian prior and a noiseless linear operator (Lemma 3.2).

For :math:`x \sim \mathcal N(\mu, \Sigma)` and :math:`y = A x`, split
:math:`\mathbb R^n = \mathrm{Im}(A^\top) \oplus \mathrm{Ker}(A)` (subscripts :math:`I`, :math:`K`)
with orthonormal bases :math:`V_I, V_K` from the SVD of :math:`A`. Then (eq. (5) of the paper)

.. math::
    \hat x_I = A^\dagger y\big|_I,\qquad
    \hat x_K = \mu_K + \Sigma_{K,I}\Sigma_I^{-1}\big(A^\dagger y - \mu\big)\big|_I ,

because :math:`x_I = A^\dagger A x = A^\dagger y` is an injective function of :math:`y`, so
:math:`\mathbb E[x_K \mid y] = \mathbb E[x_K \mid x_I]` is plain Gaussian conditioning. The
estimator is affine, :math:`\hat x = W y + b`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from reproductions.linear.gaussian import hidden_observed_indices


class AffineMap(NamedTuple):
    r"""An affine map :math:`y \mapsto W y + b`.

    Attributes:
        matrix: (n, m) matrix :math:`W`.
        offset: (n,) offset :math:`b`.
    """

    matrix: Tensor
    offset: Tensor

    def __call__(self, y: Tensor) -> Tensor:
        """Apply to ``y`` of shape (..., m); returns (..., n)."""
        return y @ self.matrix.T + self.offset


def _svd_rank(s: Tensor, shape: tuple[int, int], rtol: float | None) -> int:
    if rtol is None:
        rtol = max(shape) * torch.finfo(s.dtype).eps
    if s.numel() == 0 or s[0] == 0:
        return 0
    return int((s > rtol * s[0]).sum())


def subspace_bases(A: Tensor, rtol: float | None = None) -> tuple[Tensor, Tensor]:
    r"""Orthonormal bases of :math:`\mathrm{Im}(A^\top)` and :math:`\mathrm{Ker}(A)`.

    From the full SVD :math:`A = U S V^\top`: the first :math:`r` right singular vectors span
    :math:`\mathrm{Im}(A^\top)`, the others :math:`\mathrm{Ker}(A)`.

    Args:
        A: (m, n) operator.
        rtol: singular values :math:`\le` ``rtol`` :math:`\cdot s_{\max}` count as zero
            (default :math:`\max(m, n)\,\varepsilon`, as ``torch.linalg.pinv``).

    Returns:
        ``(V_I, V_K)`` of shapes (n, r) and (n, n - r), :math:`r = \mathrm{rank}(A)`.
    """
    _, s, vh = torch.linalg.svd(A, full_matrices=True)
    r = _svd_rank(s, tuple(A.shape), rtol)
    return vh[:r].T, vh[r:].T


def range_kernel_projectors(A: Tensor, rtol: float | None = None) -> tuple[Tensor, Tensor]:
    r"""Orthogonal projectors :math:`\Pi_{\mathrm{Im}(A^\top)} = A^\dagger A` and
    :math:`\Pi_{\mathrm{Ker}(A)} = I - A^\dagger A`.

    Args:
        A: (m, n) operator.
        rtol: rank tolerance, see :func:`subspace_bases`.

    Returns:
        Two (n, n) symmetric idempotent matrices summing to :math:`I`.
    """
    v_i, v_k = subspace_bases(A, rtol)
    return v_i @ v_i.T, v_k @ v_k.T


def bayes_estimator(A: Tensor, mean: Tensor, cov: Tensor, rtol: float | None = None) -> AffineMap:
    r"""The Bayes estimator :math:`\mathbb E[x \mid y = Ax]` of eq. (5) as an affine map.

    With :math:`A = U_r S_r V_I^\top` (compact SVD), :math:`c = V_I^\top A^\dagger y =
    S_r^{-1} U_r^\top y` are the coordinates of :math:`x_I`, and

    .. math::
        \hat x = V_I c + V_K\big(\mu_K + G (c - \mu_I)\big),\qquad
        G = \Sigma_{K,I}\Sigma_I^{-1},

    so :math:`W = (V_I + V_K G) S_r^{-1} U_r^\top` and :math:`b = V_K(\mu_K - G\mu_I)`, with
    :math:`\mu_\bullet = V_\bullet^\top\mu` and :math:`\Sigma_{K,I} = V_K^\top \Sigma V_I`.
    Valid for :math:`y \in \mathrm{Im}(A)`; :math:`W` vanishes on :math:`\mathrm{Ker}(A^\top)`.

    Args:
        A: (m, n) operator, any rank (masks, wide, rank-deficient).
        mean: (n,) prior mean :math:`\mu`.
        cov: (n, n) positive definite prior covariance :math:`\Sigma`.
        rtol: rank tolerance, see :func:`subspace_bases`.

    Returns:
        :class:`AffineMap` with ``matrix`` (n, m) and ``offset`` (n,).
    """
    u, s, vh = torch.linalg.svd(A, full_matrices=True)
    r = _svd_rank(s, tuple(A.shape), rtol)
    v_i, v_k = vh[:r].T, vh[r:].T
    coords = (u[:, :r] / s[:r]).T  # (r, m): y -> V_I^T A^+ y
    sigma_i = v_i.T @ cov @ v_i
    sigma_ik = v_i.T @ cov @ v_k
    gain = torch.linalg.solve(sigma_i, sigma_ik).T  # (n - r, r) = Sigma_KI Sigma_I^{-1}
    matrix = (v_i + v_k @ gain) @ coords
    offset = v_k @ (v_k.T @ mean - gain @ (v_i.T @ mean))
    return AffineMap(matrix, offset)


def bayes_estimate(y: Tensor, A: Tensor, mean: Tensor, cov: Tensor) -> Tensor:
    r"""Apply eq. (5): :math:`\hat x(y, A) = \mathbb E[x \mid y]` for :math:`y = A x`.

    Args:
        y: (..., m) noiseless measurements.
        A: (m, n) operator.
        mean: (n,) prior mean.
        cov: (n, n) prior covariance.

    Returns:
        (..., n) posterior means.
    """
    return bayes_estimator(A, mean, cov)(y)


def bayes_mask_block(mask: Tensor, cov: Tensor) -> Tensor:
    r"""The hidden-from-observed block :math:`\Sigma_{K,O}\Sigma_O^{-1}` of a mask's Bayes matrix.

    For :math:`A = \mathrm{diag}(m)` and :math:`\mu = 0`, :math:`A^\dagger = A` and the Bayes
    matrix is the identity on :math:`O` plus this :math:`|K| \times |O|` block (Fig. 2).

    Args:
        mask: (n,) 0/1 mask, 0 on hidden pixels :math:`K`.
        cov: (n, n) prior covariance.

    Returns:
        (|K|, |O|) block, rows and columns in increasing pixel order.
    """
    hidden, observed = hidden_observed_indices(mask)
    sigma_o = cov[observed][:, observed]
    sigma_ok = cov[observed][:, hidden]
    return torch.linalg.solve(sigma_o, sigma_ok).T
