"""Forward operators (deepinv ``LinearPhysics``), FFT helpers and the TV prox target."""

from metaprior.physics.fft import fft2c, ifft2c
from metaprior.physics.operators import (
    Decimation,
    RealMRI,
    bernoulli_mask,
    column_mask,
    denoising,
    gaussian_blur,
    gaussian_kernel,
    identity,
    inpainting,
    mri,
    operator_norm_sq,
)
from metaprior.physics.tv import grad2d, grad2d_adjoint, prox_tv, tv_duality_gap

__all__ = [
    "Decimation",
    "RealMRI",
    "bernoulli_mask",
    "column_mask",
    "denoising",
    "fft2c",
    "gaussian_blur",
    "gaussian_kernel",
    "grad2d",
    "grad2d_adjoint",
    "identity",
    "ifft2c",
    "inpainting",
    "mri",
    "operator_norm_sq",
    "prox_tv",
    "tv_duality_gap",
]
