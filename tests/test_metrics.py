from __future__ import annotations

import math

import pytest
import torch

from metaprior.metrics import mean_std, psnr, ssim


def test_psnr_value():
    x = torch.zeros(2, 1, 8, 8)
    x_hat = x + 0.1
    assert torch.allclose(psnr(x_hat, x), torch.full((2,), 20.0))
    assert torch.allclose(psnr(x_hat * 2, x + 0.2 + 1.0, peak="max").double(),
                          torch.full((2,), 10 * math.log10(1.2**2 / 1.0**2), dtype=torch.float64),
                          atol=1e-4)


def test_psnr_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        psnr(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))


def test_ssim_identity_and_order():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 32, 32, generator=g)
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64))
    noisy = x + 0.1 * torch.randn(x.shape, generator=g)
    noisier = x + 0.3 * torch.randn(x.shape, generator=g)
    assert bool((ssim(noisy, x) > ssim(noisier, x)).all())


def test_mean_std():
    assert mean_std([1.0, 3.0]) == (2.0, 1.0)
