r"""Orthonormal centred 2-D FFT (fastMRI ``fft2c`` / ``ifft2c`` convention).

.. math:: F x = \mathrm{fftshift}(\mathrm{FFT}_{\rm ortho}(\mathrm{ifftshift}(x))),
   \qquad F^{-1} = F^H.
"""

from __future__ import annotations

import torch
from torch import Tensor

_DIMS = (-2, -1)


def fft2c(x: Tensor) -> Tensor:
    """Centred orthonormal 2-D FFT over the last two dimensions (complex output)."""
    x = torch.fft.ifftshift(x, dim=_DIMS)
    return torch.fft.fftshift(torch.fft.fft2(x, dim=_DIMS, norm="ortho"), dim=_DIMS)


def ifft2c(k: Tensor) -> Tensor:
    """Centred orthonormal inverse 2-D FFT over the last two dimensions (complex output)."""
    k = torch.fft.ifftshift(k, dim=_DIMS)
    return torch.fft.fftshift(torch.fft.ifft2(k, dim=_DIMS, norm="ortho"), dim=_DIMS)
