r"""Image quality metrics with an explicit data range.

PSNR in dB, :math:`10\log_{10}(\mathrm{peak}^2/\mathrm{MSE})`, computed per image over all
channels and pixels. Images live in [0, 1], so the default peak is 1. For MRI we follow
fastMRI and use the ground truth's maximum as the peak (``peak="max"``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _peak(x_hat: Tensor, x: Tensor, peak: float | str) -> Tensor:
    """The (B,) peaks of ``x``'s images, after checking what the metrics score."""
    if x_hat.shape != x.shape or x.ndim != 4:
        raise ValueError(f"x_hat and x must be (B, C, H, W) images of the same shape, got "
                         f"{tuple(x_hat.shape)} and {tuple(x.shape)}")
    if x_hat.is_complex() or x.is_complex():
        raise ValueError("x_hat and x must be real images (a complex image: its .abs())")
    if peak == "max":
        return x.flatten(1).amax(dim=1)
    if isinstance(peak, str) or not (math.isfinite(float(peak)) and float(peak) > 0):
        raise ValueError(f"peak must be a number > 0 or 'max', got {peak!r}")
    return torch.full((x.shape[0],), float(peak), dtype=x.dtype, device=x.device)


def psnr(x_hat: Tensor, x: Tensor, peak: float | str = 1.0) -> Tensor:
    """Per-image PSNR in dB.

    Args:
        x_hat: (B, C, H, W) estimate.
        x: (B, C, H, W) ground truth.
        peak: data range; ``1.0`` for images in [0, 1], ``"max"`` for the per-image maximum of
            the ground truth (fastMRI convention).

    Returns:
        (B,) PSNR in dB (``inf`` for an exact reconstruction).
    """
    peaks = _peak(x_hat, x.detach(), peak)
    mse = (x_hat.detach() - x.detach()).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(peaks ** 2 / mse)


def ssim(x_hat: Tensor, x: Tensor, peak: float | str = 1.0) -> Tensor:
    """Per-image SSIM (Wang et al. 2004; Gaussian window σ = 1.5, as scikit-image with
    ``gaussian_weights=True``), averaged over channels.

    Args:
        x_hat: (B, C, H, W) estimate.
        x: (B, C, H, W) ground truth.
        peak: data range, as in :func:`psnr`.

    Returns:
        (B,) SSIM in [-1, 1].
    """
    from skimage.metrics import structural_similarity

    peaks = _peak(x_hat, x.detach(), peak).cpu().tolist()
    a = x_hat.detach().double().cpu().numpy()
    b = x.detach().double().cpu().numpy()
    values = [
        structural_similarity(
            a[i], b[i], data_range=peaks[i], channel_axis=0, gaussian_weights=True,
            sigma=1.5, use_sample_covariance=False,
        )
        for i in range(a.shape[0])
    ]
    return torch.tensor(values, dtype=torch.float64)


def mean_std(values: Tensor | list[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation of a list of scores, as reported in tables."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if v.numel() == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(unbiased=False))
