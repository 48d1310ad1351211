"""Operator families for training across operators: each task draws a new operator (kind,
parameters) and noise level for every batch. The five tasks, their laws and how they relate to
the evaluation operators are in ``docs/models.md`` ("Training across operator families");
``TRAIN_FAMILIES`` names them, and ``metaprior meta-train --tasks`` takes them like any task.
"""

from __future__ import annotations

import math
from functools import partial

import deepinv as dinv
import deepinv.physics.functional as dF
import torch

from metaprior import physics as ops
from metaprior.paper_tasks import _identity, _inpaint_mix, _uniform
from metaprior.task import Task

TRAIN_FAMILIES = ("blur-family", "inpaint-family", "sr-family", "fourier-family",
                  "denoise-family")
BLUR_SIZE = 25


def gaussian_psf(sigma_x: float, sigma_y: float, angle: float, size: int = BLUR_SIZE
                 ) -> torch.Tensor:
    """An anisotropic Gaussian kernel (1, 1, size, size), rotated by ``angle`` (radians),
    normalised to sum 1."""
    r = torch.arange(size, dtype=torch.float64) - size // 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    c, s = math.cos(angle), math.sin(angle)
    u, v = c * xx + s * yy, -s * xx + c * yy
    g = torch.exp(-(u**2 / (2 * sigma_x**2) + v**2 / (2 * sigma_y**2)))
    return (g / g.sum()).float().view(1, 1, size, size)


def disk_psf(radius: float, size: int = BLUR_SIZE) -> torch.Tensor:
    """A defocus (uniform disk) kernel of ``radius`` pixels, anti-aliased by 4×4
    supersampling, normalised to sum 1."""
    fine = (torch.arange(size * 4, dtype=torch.float64) + 0.5) / 4 - size / 2
    yy, xx = torch.meshgrid(fine, fine, indexing="ij")
    inside = ((xx**2 + yy**2) <= radius**2).double()
    k = inside.view(size, 4, size, 4).mean((1, 3))
    return (k / k.sum()).float().view(1, 1, size, size)


def _blur_family(shape, generator, device):
    kind = int(torch.randint(3, (1,), generator=generator))
    if kind == 0:
        psf = gaussian_psf(_uniform(generator, 0.5, 3.0), _uniform(generator, 0.5, 3.0),
                           _uniform(generator, 0.0, math.pi))
    elif kind == 1:
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        gen = dinv.physics.generator.MotionBlurGenerator(
            (BLUR_SIZE, BLUR_SIZE), rng=torch.Generator().manual_seed(seed),
            l=_uniform(generator, 0.1, 0.6), sigma=_uniform(generator, 0.1, 0.5))
        psf = gen.step(batch_size=1, seed=seed)["filter"].float().cpu()
    else:
        psf = disk_psf(_uniform(generator, 1.0, 4.0))
    physics = dinv.physics.BlurFFT(img_size=tuple(shape[1:]), filter=psf, device=device)
    physics.norm_sq_bound = 1.0  # a kernel that sums to 1 with non-negative taps
    return physics


class FilteredDownsampling(dinv.physics.Downsampling):
    r""":math:`A x = S(h \circledast x)`, deepinv's circular ``Downsampling`` with its filter
    cast to the image's dtype on use, so the operator also acts on float64 images (as the
    adjointness checks run it)."""

    def A(self, x, **kwargs):
        f = self.factor
        return dF.conv2d(x, self.filter.to(x.dtype), padding=self.padding)[..., ::f, ::f]

    def A_adjoint(self, y, **kwargs):
        f = self.factor
        up = y.new_zeros(*y.shape[:-2], y.shape[-2] * f, y.shape[-1] * f)
        up[..., ::f, ::f] = y
        return dF.conv_transpose2d(up, self.filter.to(y.dtype), padding=self.padding)

    def A_dagger(self, y, **kwargs):
        r""":math:`A^\dagger y = A^\top (AA^\top)^{-1} y`, exact: with circular padding
        :math:`AA^\top` is a circulant on the low-resolution grid, inverted by FFT (its
        eigenvalues below 1e-8 of the largest are treated as 0)."""
        delta = torch.zeros((1, 1, *y.shape[-2:]), dtype=y.real.dtype, device=y.device)
        delta[..., 0, 0] = 1.0
        eig = torch.fft.fft2(self.A(self.A_adjoint(delta))).real
        inv = torch.where(eig > 1e-8 * eig.max(), 1.0 / eig, torch.zeros_like(eig))
        return self.A_adjoint(torch.fft.ifft2(torch.fft.fft2(y) * inv).real)


def _sr_family(shape, generator, device):
    factor = (2, 4)[int(torch.randint(2, (1,), generator=generator))]
    kind = ("gaussian", "bicubic")[int(torch.randint(2, (1,), generator=generator))]
    h, w = shape[-2:]
    if h % factor or w % factor:
        factor = 2
    return FilteredDownsampling(img_size=tuple(shape[1:]), filter=kind, factor=factor,
                                device=device, padding="circular")


def _fourier_family(shape, generator, device):
    acceleration = int(torch.randint(2, 9, (1,), generator=generator))
    center = _uniform(generator, 0.04, 0.12)
    seed = 1 + int(torch.randint(2**31 - 2, (1,), generator=generator))  # never mri4's seed 0
    return ops.mri(shape[1:], acceleration, center, seed, device=device)


def _family(name: str, factory, about: str, noise: tuple[float, float] = (0.0, 0.02)) -> Task:
    return Task(name, factory, noise_sigma=noise[0], noise_max=noise[1],
                params={"family": about, "noise_sigma": list(noise)})


#: The five family tasks (:mod:`metaprior.tasks` registers them under their names).
FAMILY_TASKS = (
    _family("blur-family", _blur_family, "Gaussian (anisotropic), motion or defocus blur"),
    _family("inpaint-family", partial(_inpaint_mix, low=0.3, high=0.9),
            "Bernoulli masks, missing rate 0.3-0.9"),
    _family("sr-family", _sr_family, "Gaussian/bicubic-filtered downsampling x2/x4"),
    _family("fourier-family", _fourier_family, "random Cartesian columns, x2-x8"),
    _family("denoise-family", partial(_identity), "identity", noise=(0.01, 0.1)),
)
