r"""Task library: a task is an operator generator, a target transform and a noise level.

A :class:`Task` turns a batch of clean images :math:`x` into a :class:`TaskBatch`
:math:`(y, A, \text{target})` with :math:`y = A x + \sigma e`. Randomness (masks, noise)
comes from a ``torch.Generator`` passed in by the caller; the global RNG is never touched.

Registered tasks (the paper's Sec. 4; where it leaves a setting open, the choice is ours):

============  ======================================  =====================================
name          operator                                target
============  ======================================  =====================================
``denoise``   :math:`A = I`, :math:`\sigma = 0.1`       :math:`x`                     (T1)
``tv``        :math:`A = I`, noiseless                :math:`\mathrm{prox}_{0.1 TV}(x)` (T2)
``deblur``    Gaussian blur, std 1.6, 25×25, circular  :math:`x`                     (T3)
``inpaint``   Bernoulli pixel mask, 50 % missing       :math:`x`                     (T4)
``sr2``       decimation ×2 (zero-filling adjoint)     :math:`x`                     (unseen)
``mri4``      :math:`MF`, random columns ×4, cf 0.08   :math:`x`                     (unseen)
``fourier``   :math:`MF`, columns ×2/4/8 redrawn       :math:`x`                     (T5, opt.)
``inpaint-    Bernoulli mask, missing rate drawn per   :math:`x`                     (family)
mix``         sample from [0.2, 0.9]
``deblur-     Gaussian blur, std drawn per batch from  :math:`x`                     (family)
mix``         [0.6, 2.6], 25×25, circular
============  ======================================  =====================================

The two ``-mix`` families widen T3/T4 into families of operators with a task parameter drawn
per batch or sample (``--tasks denoise,tv,deblur-mix,inpaint-mix``): more diverse meta-training
tasks, still without super-resolution or Fourier sampling.

``fourier`` is not one of the paper's training tasks: it is the optional Fourier-domain task
tried against the paper's unsupervised-MRI failure (``--tasks denoise,tv,deblur,inpaint,
fourier``). Its mask and acceleration are redrawn for every batch, so it never sees the fixed
``mri4`` mask, nor knee images.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
from deepinv.physics import LinearPhysics
from torch import Tensor, nn

from metaprior import physics as ops

#: (image shape (B, C, H, W), generator, device) -> operator
PhysicsFactory = Callable[[tuple[int, ...], torch.Generator, torch.device], LinearPhysics]

TRAIN_TASKS = ("denoise", "tv", "deblur", "inpaint")
UNSEEN_TASKS = ("sr2", "mri4")


@dataclass
class TaskBatch:
    """One batch of a task.

    Attributes:
        task: task name.
        y: (B, C, h, w) measurements (complex for MRI).
        physics: the operator :math:`A` of this batch.
        target: (B, C, H, W) what the network must output.
        x: (B, C, H, W) the clean images the batch was made from.
    """

    task: str
    y: Tensor
    physics: LinearPhysics
    target: Tensor
    x: Tensor

    def split(self, parts: int) -> list[TaskBatch | None] | None:
        r"""The batch in ``parts`` consecutive parts, samples ``[k B / parts, (k + 1) B /
        parts)`` for part :math:`k` (``None`` where that range is empty), each with its own
        operator; or ``None`` when the operator does not split by sample.

        Each part's operator is a copy with every buffer whose leading dimension is the batch
        size sliced (a per-sample inpainting mask, say). The operator splits when every copy
        measures its part's images as the whole operator does, :math:`A_k x_k = (A x)_k`. An
        operator that mixes samples, or keeps per-sample state elsewhere, does not.
        """
        b = len(self.y)
        if parts == 1:
            return [self]
        with torch.no_grad():
            whole = self.physics.A(self.x)
        pieces: list[TaskBatch | None] = []
        for k in range(parts):
            start, stop = k * b // parts, (k + 1) * b // parts
            if stop <= start:
                pieces.append(None)
                continue
            rows = slice(start, stop)
            physics = copy.deepcopy(self.physics)
            for module in physics.modules():
                for store in (module._buffers, module._parameters):
                    for name, t in store.items():
                        if t is not None and t.ndim > 0 and t.shape[0] == b:
                            store[name] = (nn.Parameter(t[rows], t.requires_grad)
                                           if isinstance(t, nn.Parameter) else t[rows])
            with torch.no_grad():
                try:
                    ax = physics.A(self.x[rows])
                except RuntimeError:  # a buffer sliced that was not per-sample
                    return None
            if ax.shape != whole[rows].shape or not torch.allclose(ax, whole[rows], rtol=1e-5,
                                                                   atol=1e-6):
                return None
            pieces.append(TaskBatch(self.task, self.y[rows], physics, self.target[rows],
                                    self.x[rows]))
        return pieces


@dataclass(frozen=True)
class Task:
    """An imaging task.

    Args:
        name: registry name.
        make_physics: builds the operator for a batch of images of a given shape.
        target: maps clean images to the target (``None``: the images themselves).
        noise_sigma: std of the additive white Gaussian noise on :math:`y`, image units.
        params: the task's parameters, for logs and docs.
        noise_max: when above ``noise_sigma``, the std is drawn per batch uniformly from
            [``noise_sigma``, ``noise_max``] (a family of noise levels).
        peak: the data range its PSNR and SSIM are scored with: ``1.0`` for images in
            [0, 1], ``"max"`` for each target's maximum (MRI magnitude images).
    """

    name: str
    make_physics: PhysicsFactory
    target: Callable[[Tensor], Tensor] | None = None
    noise_sigma: float = 0.0
    params: dict = field(default_factory=dict)
    noise_max: float = 0.0
    peak: float | str = 1.0

    def sample(self, x: Tensor, generator: torch.Generator | None = None) -> TaskBatch:
        r"""Measure a batch: :math:`y = A x + \sigma e`.

        Args:
            x: (B, C, H, W) clean images in [0, 1].
            generator: source of randomness for the operator and the noise (CPU generator).
        """
        if x.ndim != 4:
            raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        physics = self.make_physics(tuple(x.shape), generator, x.device)
        with torch.no_grad():
            try:
                y = physics.A(x)
            except RuntimeError as e:
                raise ValueError(
                    f"task {self.name!r}: its operator cannot measure images of shape "
                    f"{tuple(x.shape)} ({str(e).splitlines()[0][:200]}); an operator built for "
                    f"one image size serves that size only: give task_from_physics a factory "
                    f"(shape, generator, device) -> physics") from None
            sigma = self.noise_sigma
            if self.noise_max > sigma:
                sigma += (self.noise_max - sigma) * float(torch.rand((), generator=generator))
            if sigma > 0:
                e = torch.randn(y.shape, generator=generator, dtype=y.dtype)
                y = y + sigma * e.to(y.device)
            target = x if self.target is None else self.target(x)
        return TaskBatch(self.name, y, physics, target, x)


# --- operator factories -------------------------------------------------------------------

def _denoising(shape, generator, device, sigma):
    return ops.denoising(sigma)


def _identity(shape, generator, device):
    return ops.identity()


def _blur(shape, generator, device, sigma, size):
    return ops.gaussian_blur(shape[1:], sigma, size, device=device)


def _inpaint(shape, generator, device, missing):
    b, _, h, w = shape
    return ops.inpainting(ops.bernoulli_mask((b, 1, h, w), missing, generator, device))


def _inpaint_mix(shape, generator, device, low, high):
    b, _, h, w = shape
    missing = low + (high - low) * torch.rand((b, 1, 1, 1), generator=generator)
    mask = (torch.rand((b, 1, h, w), generator=generator) >= missing).float()
    return ops.inpainting(mask.to(device))


def _blur_mix(shape, generator, device, low, high, size):
    sigma = low + (high - low) * float(torch.rand((), generator=generator))
    return ops.gaussian_blur(shape[1:], sigma, size, device=device)


def _decimate(shape, generator, device, factor):
    return ops.Decimation(shape[1:], factor, device=device)


def _mri(shape, generator, device, acceleration, center_fraction, seed):
    return ops.mri(shape[1:], acceleration, center_fraction, seed, device=device)


def _random_fourier(shape, generator, device, accelerations, center_fraction):
    i = int(torch.randint(len(accelerations), (1,), generator=generator))
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
    return ops.mri(shape[1:], accelerations[i], center_fraction, seed, device=device)


def _named(base: str, value: float, default: float) -> str:
    """``base`` for the default parameter, else ``base-value`` (what :func:`get_task` parses)."""
    return base if value == default else f"{base}-{value:g}"


def denoise_task(sigma: float = 0.1) -> Task:
    """T1: Gaussian denoising (``denoise``; another σ: ``denoise-SIGMA``)."""
    if not sigma > 0:
        raise ValueError(f"denoise: sigma must be > 0, got {sigma}")
    return Task(_named("denoise", sigma, 0.1), partial(_denoising, sigma=sigma),
                noise_sigma=sigma, params={"sigma": sigma})


def tv_task(weight: float = 0.1, tol: float = 1e-6) -> Task:
    """T2: TV estimation, target :math:`\\mathrm{prox}_{w TV}(x)` (duality gap ``tol``)."""
    return Task("tv", _identity, target=partial(ops.prox_tv, weight=weight, tol=tol),
                params={"weight": weight, "tol": tol})


def deblur_task(sigma: float = 1.6, size: int = 25) -> Task:
    """T3: noiseless Gaussian deconvolution (``deblur``; another std: ``deblur-SIGMA``)."""
    if not sigma > 0 or size < 1:
        raise ValueError(f"deblur: sigma must be > 0 and size >= 1, got {sigma}, {size}")
    name = _named("deblur", sigma, 1.6) + ("" if size == 25 else f"-k{size}")
    return Task(name, partial(_blur, sigma=sigma, size=size),
                params={"sigma": sigma, "size": size})


def inpaint_task(missing: float = 0.5) -> Task:
    """T4: inpainting with an i.i.d. Bernoulli mask redrawn per sample (``inpaint``; another
    missing rate: ``inpaint-RATE``)."""
    if not 0 < missing < 1:
        raise ValueError(f"inpaint: the missing rate must be in (0, 1), got {missing}")
    return Task(_named("inpaint", missing, 0.5), partial(_inpaint, missing=missing),
                params={"missing": missing})


def inpaint_mix_task(low: float = 0.2, high: float = 0.9) -> Task:
    """A family of inpainting tasks: each sample's missing rate is drawn from [low, high]."""
    if not 0.0 <= low <= high < 1.0:
        raise ValueError(f"missing rates need 0 <= low <= high < 1, got [{low}, {high}]")
    return Task("inpaint-mix", partial(_inpaint_mix, low=low, high=high),
                params={"missing": [low, high]})


def deblur_mix_task(low: float = 0.6, high: float = 2.6, size: int = 25) -> Task:
    """A family of noiseless deblurring tasks: the Gaussian std is drawn per batch from
    [low, high]."""
    if not 0.0 < low <= high:
        raise ValueError(f"blur stds need 0 < low <= high, got [{low}, {high}]")
    return Task("deblur-mix", partial(_blur_mix, low=low, high=high, size=size),
                params={"sigma": [low, high], "size": size})


def sr_task(factor: int = 2) -> Task:
    """Unseen: super-resolution by plain decimation (``srK``)."""
    if factor < 2:
        raise ValueError(f"sr: the factor must be an integer >= 2, got {factor}")
    return Task(f"sr{factor}", partial(_decimate, factor=factor), params={"factor": factor})


def mri_task(acceleration: int = 4, center_fraction: float = 0.08, seed: int = 0) -> Task:
    """Unseen: single-coil Cartesian MRI, one fixed mask (seed) for fine-tuning and test
    (``mriK``; another mask seed: ``mriK-sSEED``)."""
    if acceleration < 2 or not 0 < center_fraction < 1:
        raise ValueError(f"mri: acceleration must be >= 2 and center_fraction in (0, 1), got "
                         f"{acceleration}, {center_fraction}")
    name = f"mri{acceleration}" + ("" if seed == 0 else f"-s{seed}") + (
        "" if center_fraction == 0.08 else f"-cf{center_fraction:g}")
    return Task(name,
                partial(_mri, acceleration=acceleration, center_fraction=center_fraction,
                        seed=seed),
                params={"acceleration": acceleration, "center_fraction": center_fraction,
                        "seed": seed}, peak="max")


def fourier_task(accelerations: tuple[int, ...] = (2, 4, 8), center_fraction: float = 0.08
                 ) -> Task:
    """T5 (optional): single-coil Cartesian Fourier sampling of natural images, the
    acceleration drawn from ``accelerations`` and the random column mask redrawn per batch."""
    return Task("fourier", partial(_random_fourier, accelerations=tuple(accelerations),
                                   center_fraction=center_fraction),
                params={"accelerations": list(accelerations), "center_fraction": center_fraction})


def physics_noise_sigma(physics: LinearPhysics, owner: str = "task_from_physics") -> float:
    """The std of a deepinv physics' own noise model: 0 for none (``ZeroNoise``), the
    ``sigma`` of a scalar ``GaussianNoise``; any other noise model is a one-line
    ``ValueError`` (metaprior samples Gaussian noise only, from its own generator)."""
    from deepinv.physics import GaussianNoise
    from deepinv.physics.noise import ZeroNoise

    noise = getattr(physics, "noise_model", None)
    if noise is None or isinstance(noise, ZeroNoise):
        return 0.0
    sigma = getattr(noise, "sigma", None)
    if isinstance(noise, GaussianNoise) and torch.as_tensor(sigma).numel() == 1:
        return float(f"{float(sigma):.7g}")  # the value given, not its float32 rounding
    raise ValueError(f"{owner}: the physics' noise model {type(noise).__name__} is not "
                     f"supported (Gaussian noise of one std only): give a noiseless physics and "
                     f"noise_sigma")


def task_from_physics(
    name: str, physics: LinearPhysics | PhysicsFactory, noise_sigma: float = 0.0,
    target: Callable[[Tensor], Tensor] | None = None,
) -> Task:
    """A task with a user operator: any deepinv ``LinearPhysics``.

    The measurements are :math:`y = A x + \\sigma e`, with :math:`A` the physics' ``A`` and the
    noise drawn from the task's generator. A physics' own noise model is honoured: a fixed
    physics built with ``GaussianNoise(sigma)`` gives that ``sigma`` (``noise_sigma`` may be
    left at 0 or must agree); a factory's physics must carry no noise model, or one that
    agrees with ``noise_sigma``. Other noise models (Poisson, per-sample stds, ...) are
    refused with a one-line ``ValueError``.

    Args:
        name: the task's name (register it with :func:`register_task` to use it by name, e.g.
            from the command line with ``metaprior --plugin FILE.py``).
        physics: a fixed operator, which then measures images of the size it was built for
            only, or a factory ``(image shape (B, C, H, W), generator, device) -> physics``
            that builds one for any image size (fine-tuning patches and whole test images
            alike), drawing any randomness from ``generator``.
        noise_sigma: std of the white Gaussian noise added to :math:`y`.
        target: what the network must output (default: the clean image).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"task_from_physics: name must be a non-empty string, got {name!r}")
    if not (isinstance(noise_sigma, (int, float)) and not isinstance(noise_sigma, bool)
            and math.isfinite(noise_sigma) and noise_sigma >= 0):
        raise ValueError(f"task_from_physics: noise_sigma must be a number >= 0, got "
                         f"{noise_sigma!r}")
    if isinstance(physics, LinearPhysics):
        fixed = physics
        own = physics_noise_sigma(physics)
        if own and noise_sigma and not math.isclose(own, noise_sigma):
            raise ValueError(f"task_from_physics: noise_sigma {noise_sigma} disagrees with the "
                             f"physics' GaussianNoise({own:g}): give one of them")
        noise_sigma = own or noise_sigma

        def factory(shape, generator, device):
            return fixed.to(device)
        kind = type(physics).__name__
    elif callable(physics):
        kind = getattr(physics, "__name__", type(physics).__name__)
        factory = partial(_noiseless_factory, physics, float(noise_sigma))
    else:
        raise ValueError(f"task_from_physics: physics must be a deepinv LinearPhysics or a "
                         f"factory (shape, generator, device) -> LinearPhysics, got "
                         f"{type(physics).__name__}")
    return Task(name, factory, target=target, noise_sigma=noise_sigma,
                params={"physics": kind, "fixed": isinstance(physics, LinearPhysics)})


def _noiseless_factory(build: PhysicsFactory, noise_sigma: float, shape, generator, device):
    """``build(shape, generator, device)``, refused if its physics carries a noise model that
    the task would not apply (one that disagrees with the task's ``noise_sigma``)."""
    physics = build(shape, generator, device)
    own = physics_noise_sigma(physics)
    if own and not math.isclose(own, noise_sigma):
        raise ValueError(f"task_from_physics: the factory's physics carries "
                         f"GaussianNoise({own:g}) but the task's noise_sigma is {noise_sigma:g}: "
                         f"give noise_sigma={own:g}, or build the physics without noise")
    return physics


# --- registry -----------------------------------------------------------------------------

_REGISTRY: dict[str, Task] = {}


def register_task(task: Task, overwrite: bool = False) -> Task:
    """Add a task to the registry. A name already registered, or one that a built-in family
    answers (``sr3``, ``mri8``, ``inpaint-0.7``, ...: see :func:`get_task`), is refused unless
    ``overwrite=True``, which replaces it."""
    if not isinstance(task, Task):
        raise ValueError(f"register_task: task must be a Task (e.g. from task_from_physics), "
                         f"got {type(task).__name__}")
    if not overwrite and any(p.fullmatch(task.name) for p, _ in FAMILIES):
        raise ValueError(f"task name {task.name!r} is a built-in task name (the families "
                         f"{FAMILY_HELP}): choose another name or pass overwrite=True")
    if task.name in _REGISTRY and not overwrite:
        raise ValueError(f"task {task.name!r} is already registered: choose another name or "
                         f"pass overwrite=True")
    _REGISTRY[task.name] = task
    return task


#: Parametrised names that :func:`get_task` builds on first use: (pattern, builder).
FAMILIES: list[tuple[re.Pattern, Callable[..., Task]]] = [
    (re.compile(r"sr(\d+)"), lambda k: sr_task(int(k))),
    (re.compile(r"mri(\d+)(?:-s(\d+))?(?:-cf(\d*\.?\d+))?"),
     lambda k, seed, cf: mri_task(int(k), float(cf) if cf else 0.08, int(seed or 0))),
    (re.compile(r"inpaint-(\d*\.?\d+)"), lambda rate: inpaint_task(float(rate))),
    (re.compile(r"denoise-(\d*\.?\d+(?:e-?\d+)?)"), lambda sigma: denoise_task(float(sigma))),
    (re.compile(r"deblur-(\d*\.?\d+)(?:-k(\d+))?"),
     lambda sigma, size: deblur_task(float(sigma), int(size or 25))),
]
FAMILY_HELP = ("srK (K >= 2), mriK[-sSEED][-cfFRACTION], inpaint-RATE, denoise-SIGMA, "
               "deblur-SIGMA[-kSIZE]")


def get_task(name: str) -> Task:
    """The task called ``name``: a registered one, or a parametrised name of a family (e.g.
    ``sr3``, ``mri8``, ``inpaint-0.7``, ``denoise-0.05``, ``deblur-2.5``), built and registered
    on first use."""
    if not isinstance(name, str):
        raise ValueError(f"get_task: name must be a task name (str), got "
                         f"{type(name).__name__} {name!r}")
    if name in _REGISTRY:
        return _REGISTRY[name]
    for pattern, build in FAMILIES:
        match = pattern.fullmatch(name)
        if match:
            task = build(*match.groups())
            if task.name != name:  # e.g. "inpaint-0.50" is the canonical "inpaint"
                return get_task(task.name)
            return register_task(task, overwrite=True)
    raise ValueError(f"unknown task {name!r}: choose among {', '.join(available_tasks())}, or "
                     f"a parametrised name: {FAMILY_HELP}")


def available_tasks() -> list[str]:
    return list(_REGISTRY)


for _task in (denoise_task(), tv_task(), deblur_task(), inpaint_task(), sr_task(2), mri_task(4),
              fourier_task(), inpaint_mix_task(), deblur_mix_task()):
    register_task(_task, overwrite=True)

# The operator families for training across operators register themselves (they build on
# the Task class above).
from metaprior import families as _families  # noqa: E402, F401
