r"""HQSNet: half-quadratic splitting unrolled with the operator's exact data prox and a
pretrained denoiser as the prior, every part of it adaptable.

For :math:`\min_x \tfrac12\|Ax-y\|^2 + R(x)`, iteration :math:`k = 1..K` is

.. math::
    z_k = \mathrm{prox}_{\gamma_k f}(x_{k-1}) = \arg\min_z \tfrac12\|Az-y\|^2
          + \tfrac{\|A\|^2}{2\gamma_k}\|z - x_{k-1}\|^2,
    \qquad x_k = D_\vartheta(z_k, \sigma_k),

with :math:`D_\vartheta` an FFDNet at noise level :math:`\sigma_k`, :math:`x_0` the smooth
least-squares estimate :math:`\arg\min_x \tfrac12\|Ax-y\|^2 + \tfrac{\epsilon\|A\|^2}2\|\nabla
x\|^2`, and the data step the operator's own ``prox_l2``. With :math:`\sigma_k` decreasing
geometrically from 49/255 and :math:`\gamma_k = \lambda(\sigma_k/\sigma_K)^2`,
:math:`\lambda = 1/0.23`, this is DPIR (Zhang et al. 2021); :math:`\log\sigma_k`,
:math:`\log\gamma_k` and :math:`\vartheta` are all parameters. Details: ``docs/models.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from deepinv.models import Reconstructor
from deepinv.physics import LinearPhysics
from torch import Tensor, nn

from metaprior.config import check_positive
from metaprior.models.ffdnet import FFDNet, noise_schedule
from metaprior.physics.operators import in_float32, operator_norm_sq, prox_l2


@dataclass(frozen=True)
class HQSNetConfig:
    iterations: int = 8  # K, unrolled HQS iterations
    # training and adaptation alike: the schedule moves by ~lr a step, the weights by ~lr·this
    denoiser_lr_scale: float = 1e-3  # relative step size of the denoiser's weights
    sigma_max: float = 49 / 255  # σ_1, the first denoiser level (DPIR's)
    sigma_min: float = 0.01  # σ_K, the last denoiser level
    data_weight: float = 1 / 0.23  # λ in γ_k = λ (σ_k / σ_K)²  (DPIR's)
    init_eps: float = 1e-2  # ε of the smooth least-squares start x_0
    init_iters: int = 50  # conjugate-gradient iterations for x_0
    color: bool = False  # also hold the colour FFDNet, used for 3-channel images
    pretrained: bool = True  # start from the published FFDNet weights (False: random)
    # an ensemble over the iterations at no extra cost (DPIR's "x8" option)
    dihedral: bool = False  # denoise iteration k in the k-th of the 8 rotations/flips (and back)

    #: field names older model files use -> their name now
    renamed: ClassVar[dict[str, str]] = {"colour": "color"}

    def __post_init__(self) -> None:
        for name, low, high in (("iterations", 1, 1000), ("init_iters", 0, 10_000)):
            if not low <= getattr(self, name) <= high:
                raise ValueError(f"hqs: {name} must be in [{low}, {high}], got "
                                 f"{getattr(self, name)}")
        check_positive("hqs", sigma_max=self.sigma_max, sigma_min=self.sigma_min,
                       data_weight=self.data_weight, init_eps=self.init_eps,
                       denoiser_lr_scale=self.denoiser_lr_scale)
        if self.sigma_min > self.sigma_max:  # the schedule anneals from sigma_max down
            raise ValueError(f"hqs: sigma_min must be <= sigma_max, got {self.sigma_min} > "
                             f"{self.sigma_max}")


def smooth_estimate(physics: LinearPhysics, y: Tensor, eps: float = 1e-2, iters: int = 200,
                    tol: float = 1e-5, aty: Tensor | None = None) -> Tensor:
    r""":math:`\arg\min_x \tfrac12\|Ax-y\|^2 + \tfrac\epsilon2\|\nabla x\|^2` by conjugate
    gradients from 0 (harmonic interpolation of missing pixels, smoothed zero filling in
    MRI), without gradients. Shapes: ``y`` as ``physics.A`` returns; output (B, C, H, W).
    ``aty``: :math:`A^\top y`, if the caller has it already."""
    from metaprior.meta.implicit import conjugate_gradient
    from metaprior.physics import grad2d, grad2d_adjoint

    with torch.no_grad():
        rhs = physics.A_adjoint(y) if aty is None else aty.detach()
        shape = rhs.shape

        def matvec(v: Tensor) -> Tensor:
            x = v.view(shape)
            return (physics.A_adjoint_A(x) + eps * grad2d_adjoint(*grad2d(x))).reshape(-1)

        x, _, _ = conjugate_gradient(matvec, rhs.reshape(-1), max_iter=iters, tol=tol)
    return x.view(shape)


def resample_schedule(params: Mapping[str, Tensor], iterations: int) -> dict[str, Tensor]:
    r"""An HQSNet's parameters (or a change of them) for ``iterations`` iterations:
    :math:`\log\sigma_k` and :math:`\log\gamma_k` (``log_sigma``, ``log_gamma``, each (K,))
    interpolated linearly over the iteration index scaled to [0, 1] (a one-entry schedule is
    repeated), every other entry (the denoiser's weights) as it is. Linear in ``params``, and
    a log-linear schedule (DPIR's) resamples exactly."""
    if not 1 <= iterations <= 1000:
        raise ValueError(f"iterations must be in [1, 1000], got {iterations}")
    out = dict(params)
    for name in ("log_sigma", "log_gamma"):
        old = params[name]
        if len(old) == 1:
            out[name] = old.expand(iterations).clone()
            continue
        t = torch.linspace(0, len(old) - 1, iterations, dtype=old.dtype, device=old.device)
        lo = t.floor().long().clamp(max=len(old) - 2)
        out[name] = torch.lerp(old[lo], old[lo + 1], t - lo)
    return out


class HQSNet(Reconstructor):
    """Unrolled HQS with an FFDNet prior, a deepinv ``Reconstructor``:
    ``x_hat = model(y, physics)``. Under ``torch.autocast`` only the denoiser takes the
    autocast's dtype (``mixed_precision``): the data steps stay float32.

    Parameters: ``log_sigma`` (K,), ``log_gamma`` (K,), ``denoiser.*`` (and ``denoiser_rgb.*``
    with ``color``).

    Shapes:
        y: measurements, whatever ``physics.A`` returns for a (B, C, H, W) image;
        output: (B, C, H, W) real image (H, W >= 2).

    Examples:
        >>> import torch, deepinv as dinv
        >>> model = HQSNet(HQSNetConfig(iterations=2, pretrained=False))
        >>> model(torch.rand(1, 1, 16, 16), dinv.physics.Denoising()).shape
        torch.Size([1, 1, 16, 16])
    """

    #: Adaptation may run in mixed precision (``AdaptConfig.precision``).
    mixed_precision = True

    def __init__(self, config: HQSNetConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or HQSNetConfig()
        sigma = noise_schedule(c.sigma_max, c.sigma_min, c.iterations)
        gamma = c.data_weight * (sigma / c.sigma_min) ** 2
        self.log_sigma = nn.Parameter(sigma.log())
        self.log_gamma = nn.Parameter(gamma.log())
        self.denoiser = FFDNet(1)
        self.denoiser_rgb = FFDNet(3) if c.color else None
        if c.pretrained:
            self.denoiser.load_published()
            if self.denoiser_rgb is not None:
                self.denoiser_rgb.load_published()

    @classmethod
    def seeded(cls, config: HQSNetConfig | None, seed: int) -> HQSNet:
        """An HQSNet built under ``seed`` (only a random, non-pretrained denoiser draws from
        it), leaving the global random state as it was."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(config)

    @classmethod
    def from_state(cls, config: HQSNetConfig, state: dict[str, Tensor]) -> HQSNet:
        """An HQSNet of ``config`` holding the parameters ``state`` (a ``state_dict``), e.g.
        a trained model with another test-time option: ``HQSNet.from_state(replace(
        model.config, dihedral=True), model.state_dict())``. Nothing is downloaded or read."""
        from dataclasses import replace

        like = next(iter(state.values()))
        model = cls(replace(config, pretrained=False)).to(like.device, like.dtype)
        model.load_state_dict(state)
        return model

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def lr_scales(self) -> dict[str, float]:
        """Step size of each parameter relative to the learning rate (1 for the schedule,
        ``config.denoiser_lr_scale`` for the denoiser's weights)."""
        return {name: 1.0 if name.startswith("log_") else self.config.denoiser_lr_scale
                for name, _ in self.named_parameters()}

    @staticmethod
    def resample(params: Mapping[str, Tensor], iterations: int) -> dict[str, Tensor]:
        """``params`` (θ, or a change of it) for ``iterations`` iterations
        (:func:`resample_schedule`; ``AdaptConfig.coarse_iterations`` adapts through it)."""
        return resample_schedule(params, iterations)

    def with_iterations(self, iterations: int) -> HQSNet:
        r"""A copy that runs ``iterations`` HQS steps with the same denoiser and its schedule
        resampled (:func:`resample_schedule`), so the schedule keeps its end points and its
        shape. From the untrained (DPIR) schedule this gives DPIR with ``iterations`` steps;
        more steps than trained refine the same annealing (DPIR's super-resolution setting
        uses 24)."""
        from dataclasses import replace

        state = self.resample(self.state_dict(), iterations)
        return HQSNet.from_state(replace(self.config, iterations=iterations), state)

    def schedule(self) -> tuple[Tensor, Tensor]:
        r"""(:math:`\sigma_k`, :math:`\gamma_k`), each (K,)."""
        return self.log_sigma.exp().clamp(1e-4, 1.0), self.log_gamma.exp()

    def denoise(self, z: Tensor, sigma: Tensor, k: int = 0) -> Tensor:
        r"""The prior step on a (B, C, H, W) image; with ``config.dihedral``, in the
        :math:`(k \bmod 8)`-th element :math:`T` of the dihedral group (rotation by
        :math:`90° (k \bmod 4)`, then a flip if :math:`k \bmod 8 \ge 4`):
        :math:`T^{-1} D(T z, \sigma)`."""
        if self.config.dihedral and k % 8:
            turns, flip = k % 4, k % 8 >= 4
            t = torch.rot90(z, turns, dims=(-2, -1))
            t = self.denoise(t.flip(-1) if flip else t, sigma)
            return torch.rot90(t.flip(-1) if flip else t, -turns, dims=(-2, -1))
        b, c, h, w = z.shape
        if c == 3 and self.denoiser_rgb is not None:
            return self.denoiser_rgb(z, sigma)
        return self.denoiser(z.reshape(b * c, 1, h, w), sigma).view(b, c, h, w)

    def forward(self, y: Tensor, physics: LinearPhysics, **kwargs) -> Tensor:
        c = self.config
        # The data steps (start, norm, prox: conjugate gradients for some operators) run in
        # float32 under any autocast; only the denoiser takes the autocast's dtype.
        device = y.device.type
        with in_float32(device):
            aty = physics.A_adjoint(y)
            if aty.is_complex():
                raise ValueError("physics.A_adjoint must return a real image; wrap complex "
                                 "operators as in metaprior.physics.RealMRI")
            norm_sq = operator_norm_sq(physics, aty)
            x = smooth_estimate(physics, y, c.init_eps * norm_sq, c.init_iters, aty=aty)
        sigmas, gammas = self.schedule()
        for k in range(c.iterations):
            with in_float32(device):
                z = prox_l2(physics, x, y, gammas[k] / norm_sq)
            x = self.denoise(z, sigmas[k], k).to(aty.dtype)
        return x
