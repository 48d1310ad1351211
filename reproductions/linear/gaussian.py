r"""Gaussian image model and square-mask operators of the linear toy (the paper's Sec. 3, Fig. 2).

Images are ``size x size`` and flattened row-major, pixel :math:`p = (r, c) \mapsto r\,
\mathrm{size} + c`, so a batch of images is an ``(N, n)`` matrix with :math:`n = \mathrm{size}^2`.
The prior is :math:`x \sim \mathcal N(0, \Sigma)` with a squared-exponential covariance

.. math::
    \Sigma_{pq} = \exp\!\Big(-\frac{\|p-q\|_2^2}{2\ell^2}\Big) + \nu\,\delta_{pq}.

An operator hides a ``square x square`` block: :math:`A = \mathrm{diag}(m)` with
:math:`m \in \{0, 1\}^n` equal to 0 on the hidden pixels :math:`K` and 1 on the observed ones
:math:`O`. Training placements lie in area A (every placement not overlapping the bottom-right
corner square), the test placement is that corner (area B).
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Top-left corner ``(row, col)`` of a square mask.
Placement = tuple[int, int]


def pixel_grid(size: int, *, dtype: torch.dtype = torch.float64) -> Tensor:
    r"""Pixel coordinates in row-major order.

    Args:
        size: image side.
        dtype: floating dtype of the result.

    Returns:
        (n, 2) tensor of ``(row, col)`` coordinates, :math:`n = \mathrm{size}^2`.
    """
    rows, cols = torch.meshgrid(
        torch.arange(size, dtype=dtype), torch.arange(size, dtype=dtype), indexing="ij"
    )
    return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1)


def squared_exponential_covariance(
    size: int = 16,
    length_scale: float = 3.0,
    nugget: float = 1e-3,
    *,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    r"""Covariance of the Gaussian image prior (settings the paper leaves open).

    .. math::
        \Sigma_{pq} = \exp\!\Big(-\frac{\|p-q\|_2^2}{2\ell^2}\Big) + \nu\,\delta_{pq}

    Args:
        size: image side (16 gives :math:`n = 256`).
        length_scale: :math:`\ell`, in pixels.
        nugget: :math:`\nu > 0`, makes :math:`\Sigma` positive definite.
        dtype: floating dtype.

    Returns:
        (n, n) symmetric positive definite matrix.
    """
    if length_scale <= 0 or nugget <= 0:
        raise ValueError("length_scale and nugget must be > 0")
    grid = pixel_grid(size, dtype=dtype)
    sq_dist = (grid[:, None, :] - grid[None, :, :]).pow(2).sum(-1)
    n = grid.shape[0]
    return torch.exp(-sq_dist / (2 * length_scale**2)) + nugget * torch.eye(n, dtype=dtype)


def sample_gaussian(
    mean: Tensor,
    cov: Tensor,
    num_samples: int,
    generator: torch.Generator,
    *,
    dtype: torch.dtype | None = None,
) -> Tensor:
    r"""Draw :math:`x_j = \mu + L z_j`, :math:`z_j \sim \mathcal N(0, I)`, :math:`LL^\top = \Sigma`.

    Args:
        mean: (n,) mean :math:`\mu`.
        cov: (n, n) positive definite covariance :math:`\Sigma`.
        num_samples: :math:`N`.
        generator: the only source of randomness (global RNG untouched).
        dtype: dtype of :math:`z` and of the result (default ``cov.dtype``); :math:`L` is
            always factored in ``cov.dtype``.

    Returns:
        (N, n) samples, one per row.
    """
    dtype = cov.dtype if dtype is None else dtype
    chol = torch.linalg.cholesky(cov).to(dtype)
    z = torch.randn(num_samples, cov.shape[0], generator=generator, dtype=dtype, device=cov.device)
    return mean.to(dtype) + z @ chol.T


def square_mask(
    size: int,
    square: int,
    placement: Placement,
    *,
    hidden: bool = True,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    r"""Flattened 0/1 mask of a ``square x square`` block with top-left corner ``placement``.

    Args:
        size: image side.
        square: side of the block.
        placement: ``(row, col)`` of the block's top-left pixel.
        hidden: if True (default) the block is hidden (0) and the rest observed (1);
            otherwise only the block is observed.
        dtype: floating dtype.

    Returns:
        (n,) mask :math:`m`; the operator is :math:`A = \mathrm{diag}(m)`.
    """
    top, left = placement
    if not (0 <= top <= size - square and 0 <= left <= size - square):
        raise ValueError(f"placement {placement} puts a {square}-square outside {size}x{size}")
    block = torch.zeros(size, size, dtype=dtype)
    block[top : top + square, left : left + square] = 1.0
    return (1.0 - block if hidden else block).reshape(-1)


def mask_operator(mask: Tensor) -> Tensor:
    r"""The (n, n) diagonal operator :math:`A = \mathrm{diag}(m)` of a (n,) 0/1 mask."""
    return torch.diag(mask)


def hidden_observed_indices(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Indices of hidden pixels :math:`K` (mask 0) and observed pixels :math:`O` (mask 1).

    Args:
        mask: (n,) 0/1 mask.

    Returns:
        ``(K, O)``, two 1-D long tensors, sorted.
    """
    return (mask == 0).nonzero().flatten(), (mask != 0).nonzero().flatten()


def corner_placement(size: int, square: int) -> Placement:
    """The test placement (area B): the bottom-right ``square x square`` corner."""
    return (size - square, size - square)


def squares_overlap(a: Placement, b: Placement, square: int) -> bool:
    """Whether two ``square x square`` blocks with top-left corners ``a`` and ``b`` overlap."""
    return abs(a[0] - b[0]) < square and abs(a[1] - b[1]) < square


def area_a_placements(size: int, square: int) -> list[Placement]:
    """Training placements (area A): every placement whose block does not overlap area B.

    For ``size=16, square=4`` there are :math:`13^2 - 4^2 = 153` of them.

    Returns:
        Row-major sorted list of ``(row, col)`` placements.
    """
    corner = corner_placement(size, square)
    return [
        (top, left)
        for top in range(size - square + 1)
        for left in range(size - square + 1)
        if not squares_overlap((top, left), corner, square)
    ]


def grid_placements(size: int, square: int) -> list[Placement]:
    """Area-A placements on the ``square``-aligned grid: disjoint hidden squares.

    Every pixel outside area B is hidden by exactly one of them (when ``square`` divides
    ``size``); for ``size=16, square=4`` there are :math:`4^2 - 1 = 15`.

    Returns:
        Row-major sorted sub-list of :func:`area_a_placements`.
    """
    return [q for q in area_a_placements(size, square) if q[0] % square == 0 == q[1] % square]


def sample_placements(
    pool: list[Placement], num: int, generator: torch.Generator
) -> list[Placement]:
    """Draw ``num`` placements uniformly, with replacement, from ``pool``."""
    if not pool:
        raise ValueError("empty placement pool")
    idx = torch.randint(len(pool), (num,), generator=generator)
    return [pool[i] for i in idx.tolist()]


def subsample_pool(
    pool: list[Placement], count: int, generator: torch.Generator
) -> list[Placement]:
    """A random subset of ``count`` distinct placements (``count <= 0`` keeps all), sorted."""
    if count <= 0 or count >= len(pool):
        return list(pool)
    idx = torch.randperm(len(pool), generator=generator)[:count]
    return sorted(pool[i] for i in idx.tolist())
