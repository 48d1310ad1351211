r"""Forward operators of the paper's tasks, all :class:`deepinv.physics.LinearPhysics`.

deepinv's own classes are used where they fit (``Denoising``, ``BlurFFT``, ``Inpainting``);
thin subclasses are added only where the paper needs something deepinv does not provide:

* :class:`Decimation`: plain stride-2 subsampling, :math:`A^\top` = zero filling and
  :math:`A^\dagger = A^\top` (since :math:`AA^\top = I`).
* :class:`RealMRI`: single-coil Cartesian MRI of a *real* image,
  :math:`A x = M F x` (complex k-space), :math:`A^\top y = \mathrm{Re}(F^H M y)`.

Every factory returns an operator with :math:`\|A\| \le 1`; this bound is recorded as the
attribute ``norm_sq_bound`` so PDNet's step sizes need no power iteration (see
:func:`operator_norm_sq`).
"""

from __future__ import annotations

import contextlib

import deepinv as dinv
import torch
from deepinv.physics import LinearPhysics
from torch import Tensor

from metaprior.physics.fft import fft2c, ifft2c


def _with_bound(physics: LinearPhysics, bound: float) -> LinearPhysics:
    physics.norm_sq_bound = float(bound)
    return physics


def in_float32(device_type: str):
    """A context in which operator computations run in float32 under an active
    ``torch.autocast`` (mixed-precision adaptation, ``AdaptConfig.precision``); a no-op
    otherwise."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def operator_norm_sq(physics: LinearPhysics, x_like: Tensor) -> float:
    r"""An upper bound of :math:`\|A\|^2`, detached.

    Uses the operator's ``norm_sq_bound`` attribute when set (all operators built here), else
    deepinv's power iteration on :math:`A^\top A` (200 iterations, tolerance 1e-5) with a
    1.01 safety factor, cached on the operator object with its tensors' identities and
    versions and the image shape: a change of the operator (deepinv's ``physics.update``, an
    in-place edit of a buffer) computes it anew.

    Args:
        physics: the operator.
        x_like: (B, C, H, W) tensor giving the image shape, dtype and device.
    """
    bound = getattr(physics, "norm_sq_bound", None)
    if bound is not None:
        return bound
    key = (tuple(x_like.shape[1:]), tuple(
        (name, t.data_ptr(), t._version, tuple(t.shape))
        for name, t in [*physics.named_buffers(), *physics.named_parameters()]))
    cached = getattr(physics, "_norm_sq_cache", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    with torch.no_grad():
        try:
            est = physics.compute_sqnorm(x_like[:1], max_iter=200, tol=1e-5, verbose=False)
        except RuntimeError:  # per-sample operators (a batch of masks) need the batch
            est = physics.compute_sqnorm(x_like, max_iter=200, tol=1e-5, verbose=False)
    bound = 1.01 * float(est)
    physics._norm_sq_cache = (key, bound)
    return bound


def gaussian_kernel(sigma: float = 1.6, size: int = 25) -> Tensor:
    r"""Isotropic Gaussian blur kernel, (1, 1, size, size), normalised to sum 1 so that
    :math:`\|A\| = 1` (the DC gain) for the circular convolution."""
    if size % 2 == 0 or size < 1:
        raise ValueError(f"size must be a positive odd integer, got {size}")
    r = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    return (g / g.sum()).float().view(1, 1, size, size)


def denoising(sigma: float = 0.1) -> LinearPhysics:
    r"""T1: :math:`y = x + \sigma e`, :math:`A = I` (deepinv ``Denoising``)."""
    noise = dinv.physics.GaussianNoise(sigma=sigma)
    return _with_bound(dinv.physics.Denoising(noise_model=noise), 1.0)


def identity() -> LinearPhysics:
    r"""T2 (TV estimation): :math:`A = I`, noiseless; the target is
    :math:`\mathrm{prox}_{\lambda TV}(x)`."""
    return _with_bound(dinv.physics.Denoising(noise_model=dinv.physics.ZeroNoise()), 1.0)


def gaussian_blur(
    img_shape: tuple[int, int, int], sigma: float = 1.6, size: int = 25, device=None
) -> LinearPhysics:
    r"""T3: circular convolution with a normalised Gaussian (deepinv ``BlurFFT``), noiseless.

    Args:
        img_shape: (C, H, W) of the images it acts on (H, W ≥ ``size``).
    """
    if min(img_shape[-2:]) < size:
        raise ValueError(f"image size {tuple(img_shape[-2:])} is smaller than the blur kernel "
                         f"({size}×{size}): use larger images or a smaller kernel")
    physics = dinv.physics.BlurFFT(img_size=tuple(img_shape), filter=gaussian_kernel(sigma, size),
                                   device=device or "cpu")
    return _with_bound(physics, 1.0)


def inpainting(mask: Tensor) -> LinearPhysics:
    r"""T4: :math:`y = M \odot x` with a binary pixel mask (deepinv ``Inpainting``).

    Args:
        mask: (B, C, H, W) or (C, H, W) 0/1 mask, one per sample if batched.
    """
    img_size = tuple(mask.shape[-3:])
    return _with_bound(dinv.physics.Inpainting(img_size=img_size, mask=mask, device=mask.device),
                       1.0)


def bernoulli_mask(
    shape: tuple[int, ...], missing: float = 0.5, generator: torch.Generator | None = None,
    device=None,
) -> Tensor:
    """I.i.d. Bernoulli 0/1 pixel mask of ``shape`` with a fraction ``missing`` of zeros."""
    if not 0.0 <= missing < 1.0:
        raise ValueError(f"missing must be in [0, 1), got {missing}")
    u = torch.rand(shape, generator=generator)
    return (u >= missing).float().to(device or "cpu")


class Decimation(dinv.physics.Downsampling):
    r"""Super-resolution ×f by plain decimation: :math:`(Ax)_{ij} = x_{fi, fj}`, no anti-alias
    filter (the paper's Sec. 4.3); :math:`A^\top` is zero filling and :math:`A^\dagger = A^\top`.

    Args:
        img_shape: (C, H, W) high-resolution shape, H and W multiples of ``factor``.
        factor: decimation factor.
    """

    def __init__(self, img_shape: tuple[int, int, int], factor: int = 2, device=None) -> None:
        h, w = img_shape[-2:]
        if h % factor or w % factor:
            raise ValueError(f"image size {(h, w)} must be a multiple of the SR factor {factor}: "
                             f"crop the images first")
        super().__init__(img_size=tuple(img_shape), filter=None, factor=factor,
                         device=device or "cpu", padding="circular")
        self.norm_sq_bound = 1.0

    def A_dagger(self, y: Tensor, **kwargs) -> Tensor:
        return self.A_adjoint(y, **kwargs)

    def prox_l2(self, z: Tensor, y: Tensor, gamma: float, **kwargs) -> Tensor:
        r"""Exact :math:`\arg\min_x \tfrac12\|Ax-y\|^2 + \tfrac1{2\gamma}\|x-z\|^2`:
        :math:`A^\top A` is the diagonal 0/1 mask of the kept pixels."""
        kept = self.A_adjoint(self.A(torch.ones_like(z)))
        return (self.A_adjoint(y) + z / gamma) / (kept + 1.0 / gamma)


def prox_l2(physics: LinearPhysics, z: Tensor, y: Tensor, gamma: Tensor | float) -> Tensor:
    r""":math:`\arg\min_x \tfrac12\|Ax-y\|^2 + \tfrac1{2\gamma}\|x-z\|^2` by the operator's
    own ``prox_l2``, except deepinv's ``Downsampling`` without a filter (plain decimation),
    whose closed form needs a filter: there :class:`Decimation`'s exact diagonal prox."""
    if isinstance(physics, dinv.physics.Downsampling) and physics.filter is None:
        return Decimation.prox_l2(physics, z, y, gamma)
    return physics.prox_l2(z, y, gamma)


def column_mask(
    width: int, acceleration: int = 4, center_fraction: float = 0.08, seed: int = 0
) -> Tensor:
    r"""fastMRI-style random Cartesian mask (deepinv ``RandomMaskGenerator``): the
    ``center_fraction`` lowest-frequency columns plus uniformly random columns, ``width //
    acceleration`` columns in all. Deterministic in ``seed``; the global RNG is not touched.

    Returns:
        (width,) 0/1 float tensor over the centred k-space columns.
    """
    if width // acceleration < int(center_fraction * width):
        raise ValueError(f"MRI x{acceleration} keeps {width // acceleration} of {width} k-space "
                         f"columns, fewer than the fully sampled centre "
                         f"({int(center_fraction * width)}, center_fraction "
                         f"{center_fraction:g}): choose a lower acceleration or a smaller centre")
    gen = dinv.physics.generator.RandomMaskGenerator(
        img_size=(1, 1, width), acceleration=acceleration, center_fraction=center_fraction,
        rng=torch.Generator().manual_seed(seed),
    )
    return gen.step(batch_size=1, seed=seed)["mask"][0, 0, 0].float()


class RealMRI(LinearPhysics):
    r"""Single-coil Cartesian MRI of a real image with the orthonormal centred FFT:

    .. math::
        A x = M \odot F x \in \mathbb C^{H\times W},\qquad
        A^\top y = \mathrm{Re}\,F^H(M \odot y).

    The adjoint is taken for the real inner product :math:`\mathrm{Re}\langle Ax, y\rangle =
    \langle x, A^\top y\rangle`. Because :math:`x` is real, :math:`A^\top A = F^H D F` with
    :math:`D(k) = (M(k) + M(-k))/2 \in \{0, \tfrac12, 1\}` (a column and its mirror image see
    the same real information), so the pseudo-inverse is exact and cheap:
    :math:`A^\dagger y = F^H D^{+} F A^\top y`. Note :math:`A^\dagger \ne A^\top` unless the
    mask is symmetric.

    Args:
        mask: (H, W) or (W,) 0/1 mask over centred k-space (a column mask is broadcast).
        img_shape: (C, H, W) image shape.

    Shapes:
        x: (B, C, H, W) real; y: (B, C, H, W) complex.
    """

    def __init__(self, mask: Tensor, img_shape: tuple[int, int, int], device=None) -> None:
        super().__init__()
        h, w = img_shape[-2:]
        mask = mask.float()
        if mask.ndim == 1:
            mask = mask.expand(h, w)
        if tuple(mask.shape) != (h, w):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match image size {(h, w)}")
        self.img_size = tuple(img_shape)
        self.register_buffer("mask", mask.contiguous().to(device or "cpu"))
        # Eigenvalues of A^T A in (unshifted) Fourier: D = Re FFT(A^T A delta_0).
        delta = torch.zeros(h, w, dtype=torch.float64, device=self.mask.device)
        delta[0, 0] = 1.0
        ata_delta = torch.real(ifft2c(self.mask.double() * fft2c(delta)))
        d = torch.real(torch.fft.fft2(ata_delta))
        self.register_buffer("ata_eig", d.float())
        self.register_buffer("ata_eig_pinv", torch.where(d > 1e-6, 1.0 / d, 0.0).float())
        self.norm_sq_bound = 1.0

    def A(self, x: Tensor, **kwargs) -> Tensor:
        if x.is_complex():
            raise ValueError("RealMRI takes a real image x; got a complex tensor")
        return self.mask * fft2c(x)

    def A_adjoint(self, y: Tensor, **kwargs) -> Tensor:
        return torch.real(ifft2c(self.mask * y))

    def A_adjoint_A(self, x: Tensor, **kwargs) -> Tensor:
        return torch.real(torch.fft.ifft2(self.ata_eig * torch.fft.fft2(x)))

    def A_dagger(self, y: Tensor, **kwargs) -> Tensor:
        z = self.A_adjoint(y)
        return torch.real(torch.fft.ifft2(self.ata_eig_pinv * torch.fft.fft2(z)))

    def prox_l2(self, z: Tensor, y: Tensor, gamma: float, **kwargs) -> Tensor:
        r"""Exact :math:`\arg\min_x \tfrac12\|Ax-y\|^2 + \tfrac1{2\gamma}\|x-z\|^2
        = F^H (D + 1/\gamma)^{-1} F (A^\top y + z/\gamma)`."""
        rhs = self.A_adjoint(y) + z / gamma
        return torch.real(torch.fft.ifft2(torch.fft.fft2(rhs) / (self.ata_eig + 1.0 / gamma)))


def mri(
    img_shape: tuple[int, int, int], acceleration: int = 4, center_fraction: float = 0.08,
    seed: int = 0, device=None,
) -> RealMRI:
    """MRI ×``acceleration`` with a fixed-seed fastMRI random column mask."""
    mask = column_mask(img_shape[-1], acceleration, center_fraction, seed)
    return RealMRI(mask, img_shape, device=device)
