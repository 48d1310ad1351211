r"""PDNet: the unrolled primal-dual network of the paper (arXiv 2311.18710), eq. (7).

Layer :math:`k` is one Condat–Vũ iteration for :math:`\min_x \tfrac12\|Ax-y\|^2 +
\lambda_k\|W_k x\|_1` with its own 3×3 convolution :math:`W_k` (1 → ``width`` channels, no
bias) and threshold :math:`\lambda_k`:

.. math::
    x_{k+1} = x_k - \tau_k\big(A^\top(Ax_k - y) + W_k^\top u_k\big),

    u_{k+1} = \mathrm{clip}\big(u_k + \gamma W_k(2x_{k+1} - x_k),\ -|\lambda_k|,\ |\lambda_k|\big),

with :math:`x_0 = A^\top y`, :math:`u_0 = 0`, output :math:`x_K`. Step sizes satisfy Condat's
condition :math:`\tau_k = s/(\|A\|^2/2 + \gamma\|W_k\|^2)` (:math:`s = 0.99`), computed
detached. The last layer's dual update never reaches the output and is skipped, so
:math:`\lambda_K` receives no gradient. A layer has 40·9 + 1 = 361 parameters.

Colour images are handled by folding channels into the batch for the convolutions (each
channel is its own plane); the operator acts on the (B, C, H, W) image. Complex operators
(MRI) are supported: :math:`x` stays real and :math:`A^\top` returns a real image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from deepinv.models import Reconstructor
from deepinv.physics import LinearPhysics
from torch import Tensor, nn

from metaprior.config import check_positive
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
    # the paper leaves it open; false: exact derivatives (what finite differences check)
    detach_step_sizes: bool = True  # τ_k constant in backward (false: differentiate Condat's rule)
    # to second order (checkpoint_twice): memory ~ depth/segment + segment layers per step
    checkpoint_segment: int = 0  # recompute segments of this many layers in backward (0: off)


def conv_norm_sq(weight: Tensor, grid: int = _FREQ_GRID, detach: bool = True) -> Tensor:
    r"""Upper bound of :math:`\|W\|^2` for the 1 → C convolution with kernel ``weight``.

    :math:`W^\top W` is the convolution with the channel-summed autocorrelation
    :math:`R = \sum_c w_c \star w_c`, whose frequency response :math:`\sum_c|\hat w_c(\omega)|^2`
    is a non-negative trigonometric polynomial of degree :math:`d = k-1` per axis; its supremum
    bounds the norm for any image size and boundary. We take its maximum on a ``grid``×``grid``
    frequency grid times :math:`1/\cos^2(\pi d/\text{grid})`, which covers the gap between the
    grid maximum and the supremum. Detached unless ``detach=False`` (then differentiable almost
    everywhere).

    Args:
        weight: (C, 1, k, k) kernel.

    Returns:
        scalar tensor.
    """
    w = weight.detach() if detach else weight
    k = w.shape[-1]
    autocorr = F.conv2d(w.transpose(0, 1), w.transpose(0, 1), padding=k - 1)  # (1, 1, 2k-1, 2k-1)
    response = torch.fft.fft2(autocorr[0, 0], s=(grid, grid)).abs()
    return response.max() / math.cos(math.pi * (k - 1) / grid) ** 2


class _SymmetricClip(torch.autograd.Function):
    """clip(v, -λ, λ) for a scalar λ > 0 with gradients to v and λ, through ``clamp`` with
    Python-number bounds (with tensor bounds, or through ``hardtanh``, it is 2–4× slower on
    CPU). Only the
    output is saved; the backward is :class:`_SymmetricClipBackward`, whose own backward is
    written out, so MAML's double backward costs one elementwise pass per layer."""

    @staticmethod
    def forward(v: Tensor, lam: Tensor) -> Tensor:
        bound = float(lam.detach())
        return torch.clamp(v, -bound, bound)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(output, inputs[1])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        out, lam = ctx.saved_tensors
        return _SymmetricClipBackward.apply(grad, out, lam)


class _SymmetricClipBackward(torch.autograd.Function):
    r"""The vector-Jacobian product of :math:`o = \mathrm{clip}(v, -\lambda, \lambda)`, as a
    function of the incoming gradient :math:`g`:

    .. math::
        ar v = g\odot m,\qquad ar\lambda = \sum g\odot\mathrm{sign}(o)\odot(1-m),
        \qquad m = 1[|o| < \lambda].

    It is linear in :math:`g` and piecewise constant in :math:`(o, \lambda)`, so its own
    backward (second-order MAML) is :math:`\hat g = \hat v\odot m + \hat\lambda\,
    \mathrm{sign}(o)\odot(1-m)` with zero derivative to :math:`o` and :math:`\lambda` (almost
    everywhere): one fused pass, no full-size zeros.
    """

    @staticmethod
    def forward(grad: Tensor, out: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
        bound = float(lam.detach())
        # Inside (-λ, λ) the output equals the input, so the output gives the same mask.
        grad_v = torch.ops.aten.hardtanh_backward(grad, out, -bound, bound)
        if bound <= 0:
            return grad_v, torch.zeros_like(lam)
        # Outside, o = λ sign(v): Σ g sign(o) 1[outside] = (⟨g, o⟩ − ⟨g 1[inside], o⟩) / λ,
        # two dot products instead of full-size temporaries.
        g, o, gv = grad.reshape(-1), out.reshape(-1), grad_v.reshape(-1)
        grad_lam = (torch.dot(g, o) - torch.dot(gv, o)) / lam
        return grad_v, grad_lam.reshape(lam.shape)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[1], inputs[2])

    @staticmethod
    def backward(ctx, grad_grad_v: Tensor, grad_grad_lam: Tensor) -> tuple[Tensor, None, None]:
        out, lam = ctx.saved_tensors
        bound = float(lam.detach())
        if bound <= 0:  # everything clipped: the product is identically zero
            return torch.zeros_like(grad_grad_v), None, None
        # On the clipped entries sign(o) = o / λ, so with c = λ̂/λ the result is
        # v̂ ⊙ m + c·(o − o ⊙ m): the mask applied through the hardtanh_backward kernel, no
        # boolean temporaries (torch.where is ~5× slower on CPU), and bitwise the masked
        # select (o − o ⊙ m is exactly 0 inside and exactly o outside).
        c = grad_grad_lam / lam
        outside = out - torch.ops.aten.hardtanh_backward(out, out, -bound, bound)
        masked = torch.ops.aten.hardtanh_backward(grad_grad_v, out, -bound, bound)
        return masked.addcmul_(outside, c), None, None


def symmetric_clip(v: Tensor, lam: Tensor) -> Tensor:
    r""":math:`\mathrm{clip}(v, -\lambda, \lambda)` for a scalar tensor :math:`\lambda \ge 0`."""
    return _SymmetricClip.apply(v, lam)


def im2col(x: Tensor, k: int) -> Tensor:
    """(N, 1, H, W) -> (k², N·H·W) patch matrix of k×k zero-padded neighbourhoods."""
    cols = F.unfold(x, k, padding=k // 2)  # (N, k², HW)
    return cols.transpose(0, 1).reshape(cols.shape[1], -1)


def col2im(cols: Tensor, shape: tuple[int, int, int], k: int) -> Tensor:
    """(k², N·H·W) -> (N, 1, H, W) with ``shape`` = (N, H, W), the adjoint of :func:`im2col`."""
    n, h, w = shape
    cols = cols.view(cols.shape[0], n, h * w).transpose(0, 1)
    return F.fold(cols, (h, w), k, padding=k // 2)


def W(weight: Tensor, x: Tensor) -> Tensor:
    """:math:`W x`: (N, 1, H, W) -> (width, N·H·W), ``weight`` (width, 1, k, k)."""
    return weight.flatten(1) @ im2col(x, weight.shape[-1])


def W_adjoint(weight: Tensor, u: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """:math:`W^\top u`: (width, N·H·W) -> (N, 1, H, W), ``shape`` = (N, H, W)."""
    return col2im(weight.flatten(1).t() @ u, shape, weight.shape[-1])


def dual_update(weight: Tensor, lam: Tensor, u: Tensor, x_bar: Tensor, gamma: float) -> Tensor:
    r""":math:`\mathrm{clip}(u + \gamma W x_{\rm bar}, -|\lambda|, |\lambda|)`, the add fused
    into the GEMM. Shapes: u (width, N·H·W), x_bar (N, 1, H, W)."""
    v = torch.addmm(u, weight.flatten(1), im2col(x_bar, weight.shape[-1]), alpha=gamma)
    return symmetric_clip(v, lam.abs())


def checkpoint_twice(run, *inputs: Tensor) -> tuple[Tensor, ...]:
    r"""``run(*inputs)`` with its activations recomputed in the backward pass, to second order.

    ``torch.utils.checkpoint`` alone saves nothing for MAML: the inner gradient is taken with
    ``create_graph=True``, and the graph of the recomputed segment becomes part of that
    gradient, kept until the outer backward. Here the segment's vector-Jacobian product is
    itself checkpointed: the first backward stores only the segment's inputs and incoming
    gradients, and the outer backward recomputes forward and VJP once more. For a
    depth-:math:`D` network in segments of :math:`s` layers, what is held between the inner
    steps and the outer loss is then :math:`O(D/s)` segment boundaries; the outer backward's
    peak is not bounded the same way (measured in the README: the recomputed segment VJPs can
    be alive together).
    """
    return _CheckpointTwice.apply(run, *inputs)


def _segment_vjp(run, n: int, *args: Tensor) -> tuple[Tensor | None, ...]:
    """Recompute ``run`` on ``args[:n]`` and return its VJP with the gradients ``args[n:]``
    (differentiable when grad mode is on)."""
    inputs, grads = args[:n], args[n:]
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        inputs = [t if create_graph else t.detach().requires_grad_(t.requires_grad)
                  for t in inputs]
        outputs = run(*inputs)
        wrt = [t for t in inputs if t.requires_grad]
        vjp = iter(torch.autograd.grad(outputs, wrt, grads, create_graph=create_graph,
                                       allow_unused=True))
    return tuple(next(vjp) if t.requires_grad else None for t in inputs)


class _CheckpointTwice(torch.autograd.Function):
    @staticmethod
    def forward(ctx, run, *inputs: Tensor) -> tuple[Tensor, ...]:
        ctx.run = run
        ctx.save_for_backward(*inputs)
        with torch.no_grad():
            return run(*inputs)

    @staticmethod
    def backward(ctx, *grads: Tensor) -> tuple[Tensor | None, ...]:
        inputs = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: a recomputable, differentiable VJP
            vjp = torch.utils.checkpoint.checkpoint(_segment_vjp, ctx.run, len(inputs), *inputs,
                                                    *grads, use_reentrant=False)
        else:
            vjp = _segment_vjp(ctx.run, len(inputs), *inputs, *grads)
        return (None, *vjp)


class PDLayer(nn.Module):
    r"""One primal-dual layer: parameters ``weight`` :math:`W_k` (width, 1, k, k) and ``lam``
    :math:`\lambda_k` (scalar).

    The dual variable is kept *channel-major*, shape (width, N·H·W), so that :math:`W_k` is one
    GEMM of the (width × k²) weight matrix with the (k² × N·H·W) im2col patch matrix and
    :math:`W_k^\top` one GEMM followed by col2im (``fold``): the same zero-padded
    cross-correlation as ``conv2d`` / ``conv_transpose2d`` (kept as the oracle in
    ``tests/test_pdnet.py``), several times faster for a single-channel input on CPU, with
    single large GEMMs in the backward pass too, and twice differentiable. The math lives in
    the pure functions :func:`W`, :func:`W_adjoint` and :func:`dual_update`.
    """

    def __init__(self, config: PDNetConfig) -> None:
        super().__init__()
        k = config.kernel_size
        self.weight = nn.Parameter(config.weight_init_std * torch.randn(config.width, 1, k, k))
        self.lam = nn.Parameter(torch.tensor(float(config.lam_init)))

    def W(self, x: Tensor) -> Tensor:
        """(N, 1, H, W) -> (width, N·H·W) channel-major dual variable."""
        return W(self.weight, x)

    def W_adjoint(self, u: Tensor, shape: tuple[int, int, int]) -> Tensor:
        """(width, N·H·W) -> (N, 1, H, W) with ``shape`` = (N, H, W); the adjoint of :meth:`W`."""
        return W_adjoint(self.weight, u, shape)


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
        c = self.config
        if c.depth < 1 or c.width < 1 or c.kernel_size < 1 or c.kernel_size % 2 == 0:
            raise ValueError(f"model: depth and width must be >= 1 and kernel_size odd, got "
                             f"depth {c.depth}, width {c.width}, kernel_size {c.kernel_size}")
        check_positive("model", gamma=c.gamma)
        for name, ok, need in (("step_safety", 0 < c.step_safety <= 1, "in (0, 1]"),
                               ("weight_init_std", 0 <= c.weight_init_std < math.inf, ">= 0"),
                               ("lam_init", 0 <= c.lam_init < math.inf, ">= 0"),
                               ("checkpoint_segment", c.checkpoint_segment >= 0, ">= 0")):
            if not ok:
                raise ValueError(f"model: {name} must be {need} and finite, got "
                                 f"{getattr(c, name)!r}")
        self.layers = nn.ModuleList(PDLayer(self.config) for _ in range(self.config.depth))

    @classmethod
    def seeded(cls, config: PDNetConfig | None, seed: int) -> PDNet:
        """A PDNet initialised from ``seed`` (the same weights as ``torch.manual_seed(seed)``
        then ``PDNet(config)``), leaving the global random state as it was."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(config)

    def num_params(self) -> int:
        """Number of learnable parameters (361 per layer at the default width)."""
        return sum(p.numel() for p in self.parameters())

    def step_sizes(self, a_norm_sq: float) -> list[Tensor]:
        r"""Primal step sizes :math:`\tau_k` for an operator with :math:`\|A\|^2 \le`
        ``a_norm_sq`` (detached if ``config.detach_step_sizes``)."""
        c = self.config
        return [c.step_safety / (a_norm_sq / 2 + c.gamma * conv_norm_sq(
                    layer.weight, detach=c.detach_step_sizes)) for layer in self.layers]

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
        u = aty.new_zeros(self.config.width, b * c * h * w)  # channel-major dual variable
        depth = len(self.layers)
        seg = self.config.checkpoint_segment
        if seg <= 0 or not torch.is_grad_enabled():
            return self._layers(0, depth, x, u, aty, physics, taus)[0]
        for start in range(0, depth, seg):
            stop = min(start + seg, depth)
            # The segment's weights are passed explicitly: the recomputation in the backward
            # pass must see the tensors of this call (e.g. φ under functional_call), not
            # whatever the module holds by then.
            weights = [t for k in range(start, stop)
                       for t in (self.layers[k].weight, self.layers[k].lam)]

            def run(x, u, aty, *weights, start=start, stop=stop):
                return self._layers(start, stop, x, u, aty, physics, taus, *weights)

            x, u = checkpoint_twice(run, x, u, aty, *weights)
        return x

    def _layers(self, start: int, stop: int, x: Tensor, u: Tensor, aty: Tensor,
                physics: LinearPhysics, taus: list[Tensor], *weights: Tensor
                ) -> tuple[Tensor, Tensor]:
        """Layers ``start .. stop-1`` from the state (x, u); ``weights`` optionally gives
        (W_k, λ_k) for each of them (default: the layers' own parameters)."""
        b, c, h, w = x.shape
        planes = (b * c, h, w)  # colour channels folded into the batch
        last = len(self.layers) - 1
        for i, k in enumerate(range(start, stop)):
            layer, tau = self.layers[k], taus[k]
            weight, lam = weights[2 * i: 2 * i + 2] if weights else (layer.weight, layer.lam)
            grad = physics.A_adjoint_A(x) - aty + W_adjoint(weight, u, planes).view(b, c, h, w)
            x_next = x - tau * grad
            if k < last:
                u = dual_update(weight, lam, u, (2 * x_next - x).reshape(b * c, 1, h, w),
                                self.config.gamma)
            x = x_next
        return x, u
