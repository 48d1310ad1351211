r"""The paper's tasks (Sec. 4; where it leaves a setting open, the choice is ours) and the
parametrised names :func:`metaprior.tasks.get_task` answers (``sr3``, ``mri8-s1``, ...).

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

``--tasks denoise,tv,deblur-mix,inpaint-mix`` widens T3/T4 into families; ``fourier`` redraws
its mask every batch, so it never sees ``mri4``'s fixed mask (nor knee images).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial

import torch

from metaprior import physics as ops
from metaprior.config import check_at_least, check_positive
from metaprior.task import Task

TRAIN_TASKS = ("denoise", "tv", "deblur", "inpaint")
UNSEEN_TASKS = ("sr2", "mri4")


def _denoising(shape, generator, device, sigma):
    return ops.denoising(sigma)


def _identity(shape, generator, device):
    return ops.identity()


def _blur(shape, generator, device, sigma, size):
    return ops.gaussian_blur(shape[1:], sigma, size, device=device)


def _inpaint(shape, generator, device, missing):
    b, _, h, w = shape
    return ops.inpainting(ops.bernoulli_mask((b, 1, h, w), missing, generator, device))


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _inpaint_mix(shape, generator, device, low, high):
    b, _, h, w = shape
    missing = low + (high - low) * torch.rand((b, 1, 1, 1), generator=generator)
    mask = (torch.rand((b, 1, h, w), generator=generator) >= missing).float()
    return ops.inpainting(mask.to(device))


def _blur_mix(shape, generator, device, low, high, size):
    return ops.gaussian_blur(shape[1:], _uniform(generator, low, high), size, device=device)


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
    check_positive("denoise", sigma=sigma)
    return Task(_named("denoise", sigma, 0.1), partial(_denoising, sigma=sigma),
                noise_sigma=sigma, params={"sigma": sigma})


def tv_task(weight: float = 0.1, tol: float = 1e-6) -> Task:
    """T2: TV estimation, target :math:`\\mathrm{prox}_{w TV}(x)` (duality gap ``tol``)."""
    return Task("tv", _identity, target=partial(ops.prox_tv, weight=weight, tol=tol),
                params={"weight": weight, "tol": tol})


def deblur_task(sigma: float = 1.6, size: int = 25) -> Task:
    """T3: noiseless Gaussian deconvolution (``deblur``; another std: ``deblur-SIGMA``)."""
    check_positive("deblur", sigma=sigma)
    check_at_least("deblur", 1, size=size)
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
    if acceleration * center_fraction > 1:  # 1/acceleration of the columns, the centre among them
        raise ValueError(f"mri: acceleration {acceleration} keeps fewer k-space columns than the "
                         f"fully sampled centre (center_fraction {center_fraction:g}): choose "
                         f"an acceleration <= {int(1 / center_fraction)} or a smaller centre "
                         f"(mriK-cfFRACTION)")
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
