r"""PDNet: the unrolled primal-dual network of PAPER.md eq. (7)–(8).

Layer :math:`k` is one Condat–Vũ iteration for :math:`\min_x \tfrac12\|Ax-y\|^2 +
\lambda_k\|W_k x\|_1` with its own 3×3 convolution :math:`W_k` (1 → ``width`` channels, no
bias) and threshold :math:`\lambda_k`:

.. math::
    x_{k+1} = x_k - \tau_k\big(A^\top(Ax_k - y) + W_k^\top u_k\big),

    u_{k+1} = \mathrm{clip}\big(u_k + \gamma W_k(2x_{k+1} - x_k),\ -|\lambda_k|,\ |\lambda_k|\big),

with :math:`x_0 = A^\top y`, :math:`u_0 = 0`, output :math:`x_K`. Step sizes satisfy Condat's
condition :math:`\tau_k = s/(\|A\|^2/2 + \gamma\|W_k\|^2)` (:math:`s = 0.99`), computed
detached. The last layer's dual update never reaches the output and is skipped, so
:math:`\lambda_K` receives no gradient (PAPER.md §5). A layer has 40·9 + 1 = 361 parameters.

Colour images are handled by folding channels into the batch for the convolutions (each
channel is its own plane); the operator acts on the (B, C, H, W) image. Complex operators
(MRI) are supported: :math:`x` stays real and :math:`A^\top` returns a real image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from deepinv.models import Reconstructor
from deepinv.physics import LinearPhysics
from torch import Tensor, nn

from metaprior.physics.operators import operator_norm_sq

#: Frequency grid on which the conv's frequency response is maximised (see conv_norm_sq).
_FREQ_GRID = 64


@dataclass(frozen=True)
class PDNetConfig:
    depth: int = 20  # K, number of unrolled layers (the paper uses 20..120)
    width: int = 40  # output channels of W_k (40 in the paper: 361 params/layer)
    kernel_size: int = 3  # W_k is kernel_size × kernel_size
    gamma: float = 1.0  # dual step size γ
    step_safety: float = 0.99  # s in τ_k = s / (‖A‖²/2 + γ‖W_k‖²)
    weight_init_std: float = 0.01  # W_k ~ N(0, std²)
    lam_init: float = 0.01  # λ_k initial value


def conv_norm_sq(weight: Tensor, grid: int = _FREQ_GRID) -> Tensor:
    r"""Upper bound of :math:`\|W\|^2` for the 1 → C convolution with kernel ``weight``.

    :math:`W^\top W` is the convolution with the channel-summed autocorrelation
    :math:`R = \sum_c w_c \star w_c`, whose frequency response :math:`\sum_c|\hat w_c(\omega)|^2`
    is a non-negative trigonometric polynomial of degree :math:`d = k-1` per axis; its supremum
    bounds the norm for any image size and boundary. We take its maximum on a ``grid``×``grid``
    frequency grid times :math:`1/\cos^2(\pi d/\text{grid})`, which covers the gap between the
    grid maximum and the supremum. Detached (no gradient).

    Args:
        weight: (C, 1, k, k) kernel.

    Returns:
        scalar tensor.
    """
    w = weight.detach()
    k = w.shape[-1]
    autocorr = F.conv2d(w.transpose(0, 1), w.transpose(0, 1), padding=k - 1)  # (1, 1, 2k-1, 2k-1)
    response = torch.fft.fft2(autocorr[0, 0], s=(grid, grid)).abs()
    return response.max() / math.cos(math.pi * (k - 1) / grid) ** 2


class PDLayer(nn.Module):
    r"""One primal-dual layer: parameters ``weight`` :math:`W_k` (width, 1, k, k) and ``lam``
    :math:`\lambda_k` (scalar)."""

    def __init__(self, config: PDNetConfig) -> None:
        super().__init__()
        k = config.kernel_size
        self.weight = nn.Parameter(config.weight_init_std * torch.randn(config.width, 1, k, k))
        self.lam = nn.Parameter(torch.tensor(float(config.lam_init)))
        self.padding = k // 2

    def W(self, x: Tensor) -> Tensor:
        """(N, 1, H, W) -> (N, width, H, W)."""
        return F.conv2d(x, self.weight, padding=self.padding)

    def W_adjoint(self, u: Tensor) -> Tensor:
        """(N, width, H, W) -> (N, 1, H, W), the exact adjoint of :meth:`W`."""
        return F.conv_transpose2d(u, self.weight, padding=self.padding)


class PDNet(Reconstructor):
    """Unrolled primal-dual network, a deepinv ``Reconstructor``: ``x_hat = model(y, physics)``.

    Args:
        config: architecture hyper-parameters.

    Shapes:
        y: measurements, whatever ``physics.A`` returns for a (B, C, H, W) image;
        output: (B, C, H, W) real image.

    Examples:
        >>> import torch, deepinv as dinv
        >>> model = PDNet(PDNetConfig(depth=3))
        >>> model.num_params()
        1083
        >>> physics = dinv.physics.Denoising()
        >>> model(torch.rand(2, 1, 16, 16), physics).shape
        torch.Size([2, 1, 16, 16])
    """

    def __init__(self, config: PDNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or PDNetConfig()
        if self.config.depth < 1 or self.config.width < 1:
            raise ValueError(f"depth and width must be >= 1, got {self.config}")
        self.layers = nn.ModuleList(PDLayer(self.config) for _ in range(self.config.depth))

    def num_params(self) -> int:
        """Number of learnable parameters (361 per layer at the default width)."""
        return sum(p.numel() for p in self.parameters())

    def step_sizes(self, a_norm_sq: float) -> list[Tensor]:
        r"""Primal step sizes :math:`\tau_k` (detached) for an operator with
        :math:`\|A\|^2 \le` ``a_norm_sq``."""
        c = self.config
        return [c.step_safety / (a_norm_sq / 2 + c.gamma * conv_norm_sq(layer.weight))
                for layer in self.layers]

    def forward(
        self, y: Tensor, physics: LinearPhysics, step_sizes: list[Tensor] | None = None, **kwargs
    ) -> Tensor:
        """Reconstruct.

        Args:
            y: measurements.
            physics: the operator :math:`A`.
            step_sizes: optional fixed :math:`\tau_k` (default: Condat's rule at the current
                weights, :meth:`step_sizes`); fixing them makes the output a smooth function
                of the weights, as finite-difference checks need.
        """
        aty = physics.A_adjoint(y)
        if aty.is_complex():
            raise ValueError("physics.A_adjoint must return a real image; wrap complex operators "
                             "as in metaprior.physics.RealMRI")
        taus = step_sizes or self.step_sizes(operator_norm_sq(physics, aty))
        b, c, h, w = aty.shape
        x = aty
        u = aty.new_zeros(b * c, self.config.width, h, w)
        last = len(self.layers) - 1
        gamma = self.config.gamma
        for k, (layer, tau) in enumerate(zip(self.layers, taus, strict=True)):
            grad = physics.A_adjoint_A(x) - aty + layer.W_adjoint(u).view(b, c, h, w)
            x_next = x - tau * grad
            if k < last:
                lam = layer.lam.abs()
                v = u + gamma * layer.W((2 * x_next - x).view(b * c, 1, h, w))
                u = torch.minimum(torch.maximum(v, -lam), lam)
            x = x_next
        return x
