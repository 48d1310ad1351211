r"""A task and its batches: an operator generator, a target transform and a noise level.

A :class:`Task` turns a batch of clean images :math:`x` into a :class:`TaskBatch`
:math:`(y, A, \text{target})` with :math:`y = A x + \sigma e`. Randomness (masks, noise)
comes from a ``torch.Generator`` passed in by the caller; the global RNG is never touched. A
user operator becomes a task with :func:`task_from_physics`; :mod:`metaprior.tasks` finds
tasks by name.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
from deepinv.physics import LinearPhysics
from torch import Tensor, nn

#: (image shape (B, C, H, W), generator, device) -> operator
PhysicsFactory = Callable[[tuple[int, ...], torch.Generator, torch.device], LinearPhysics]


@dataclass
class TaskBatch:
    """One batch of a task.

    Attributes:
        task: task name.
        y: (B, C, h, w) measurements (complex for MRI).
        physics: the operator :math:`A` of this batch.
        target: (B, C, H, W) what the network must output.
        x: (B, C, H, W) the clean images the batch was made from.
        noise_sigma: std of the Gaussian noise on ``y`` (0: none or unknown), for the
            noise-aware label-free loss (:func:`metaprior.losses.sure_loss`).
        draw: the state of the generator the operator was drawn from (``Task.sample``), so that
            :func:`metaprior.load_measurements` redraws the same operator (a family's member,
            a random mask); ``None`` where unknown.
    """

    task: str
    y: Tensor
    physics: LinearPhysics
    target: Tensor
    x: Tensor
    noise_sigma: float = 0.0
    draw: Tensor | None = None

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
                                    self.x[rows], self.noise_sigma))
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
        check_images(x)
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        draw = generator.get_state()
        physics = self.make_physics(tuple(x.shape), generator, x.device)
        with torch.no_grad():
            try:
                y = physics.A(x)
                shape = tuple(physics.A_adjoint(y).shape)
            except RuntimeError as e:
                raise ValueError(
                    f"task {self.name!r}: its operator cannot measure images of shape "
                    f"{tuple(x.shape)} ({str(e).splitlines()[0][:200]}); an operator built for "
                    f"one image size serves that size only: give task_from_physics a factory "
                    f"(shape, generator, device) -> physics") from None
            if shape != tuple(x.shape):
                raise ValueError(f"task {self.name!r}: its A_adjoint returns {shape} for images "
                                 f"{tuple(x.shape)}: an operator must map its measurements "
                                 f"back to the image's shape (channels included)")
            sigma = self.noise_sigma
            if self.noise_max > sigma:
                sigma += (self.noise_max - sigma) * float(torch.rand((), generator=generator))
            if sigma > 0:
                e = torch.randn(y.shape, generator=generator, dtype=y.dtype)
                y = y + sigma * e.to(y.device)
            target = x if self.target is None else self.target(x)
        return TaskBatch(self.name, y, physics, target, x, sigma, draw)


def check_images(x: Tensor) -> None:
    """A one-line ``ValueError`` for images a task would measure wrongly or a model fail on:
    not (B, C, H, W) (channels-last among them), not float32/float64, not finite, or on
    another scale than [0, 1] (beyond [-0.5, 1.5]: 8-bit, or [-1, 1])."""
    if x.ndim != 4:
        raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] > min(x.shape[-2:]):
        raise ValueError(f"x has {x.shape[1]} channels of {x.shape[2]}x{x.shape[3]} pixels: "
                         f"images must be (B, C, H, W), not channels-last (x.permute(0, 3, 1, "
                         f"2))")
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"x is {str(x.dtype).replace('torch.', '')}: images must be float32 "
                         f"in [0, 1] (8-bit pixels: x.float() / 255)")
    low, high = (float(v) for v in torch.aminmax(x))  # one pass; NaN propagates to both
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("x is not finite (NaN or inf pixels): images must be in [0, 1]")
    if low < -0.5 or high > 1.5:
        raise ValueError(f"x spans [{low:.3g}, {high:.3g}]: images must be in [0, 1] (8-bit "
                         f"pixels: x / 255; [-1, 1]: (x + 1) / 2)")


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
    target: Callable[[Tensor], Tensor] | None = None, peak: float | str = 1.0,
) -> Task:
    """A task with a user operator: any deepinv ``LinearPhysics`` (``docs/api.md``).

    The measurements are :math:`y = A x + \\sigma e`, the noise drawn from the task's
    generator. A physics' own ``GaussianNoise(sigma)`` gives that ``sigma`` (``noise_sigma``
    may be left at 0 or must agree); other noise models are a one-line ``ValueError``.

    Args:
        name: the task's name (:func:`register_task` makes it usable by name).
        physics: a fixed operator, for images of the size it was built for only, or a factory
            ``(image shape (B, C, H, W), generator, device) -> physics``, drawing any
            randomness from ``generator``.
        noise_sigma: std of the white Gaussian noise added to :math:`y`.
        target: what the network must output (default: the clean image).
        peak: the data range its PSNR is scored with (:class:`Task`): ``1.0``, or ``"max"``
            for each target's maximum (MRI magnitude images).
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
    elif callable(physics) and not isinstance(physics, (torch.nn.Module, type)):
        kind = getattr(physics, "__name__", type(physics).__name__)
        factory = partial(_noiseless_factory, physics, float(noise_sigma))
    else:
        raise ValueError(f"task_from_physics: physics must be a deepinv LinearPhysics (an "
                         f"instance) or a factory function (shape, generator, device) -> "
                         f"LinearPhysics, got {type(physics).__name__}"
                         + (" (a non-linear physics)" if isinstance(physics, torch.nn.Module)
                            else ""))
    if target is not None and not callable(target):
        raise ValueError(f"task_from_physics: target must be a callable x -> target (or None: "
                         f"the clean image), got {type(target).__name__}")
    if not (peak == "max" or (isinstance(peak, (int, float)) and not isinstance(peak, bool)
                              and math.isfinite(peak) and peak > 0)):
        raise ValueError(f"task_from_physics: peak must be a number > 0 or 'max', got {peak!r}")
    return Task(name, factory, target=target, noise_sigma=noise_sigma, peak=peak,
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


def sample_or_name(task: Task, images: Tensor, generator: torch.Generator, what: str,
                   fix: str = "choose another") -> TaskBatch:
    """``task.sample(images, generator)``; images the task cannot measure (an odd side for
    SR ×2, a patch smaller than a blur kernel) are a one-line error naming ``what`` (e.g.
    ``"--patch-size 16"``) and ``fix``."""
    try:
        return task.sample(images, generator)
    except torch.OutOfMemoryError:
        raise
    except (ValueError, RuntimeError) as e:
        raise ValueError(f"{what} does not suit task {task.name!r} "
                         f"({str(e).splitlines()[0]}): {fix}") from None
