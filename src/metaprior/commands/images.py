"""Image folders in and PSNR lines out, shared by the commands."""

from __future__ import annotations

from pathlib import Path

import torch


def image_files(folder: str, flag: str = "--images") -> list[Path]:
    """The image files of the folder of option ``flag``, sorted; one-line errors for a missing
    or empty folder."""
    from metaprior.data.datasets import IMAGE_SUFFIXES

    if not Path(folder).is_dir():
        raise FileNotFoundError(f"{flag} {folder} is not a folder of images")
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{flag} {folder} holds no images (png, jpg, tif, bmp): add some or "
                         f"choose another folder")
    return files


def read_images(folder: str, color: bool, flag: str = "--images") -> list[torch.Tensor]:
    from metaprior.data import load_image

    return [load_image(p, gray=not color) for p in image_files(folder, flag)]


def task_peak(name: str) -> float | str:
    """The PSNR peak of the task called ``name`` (:attr:`metaprior.tasks.Task.peak`; 1 for a
    task that is not registered in this process, e.g. from a plugin not loaded)."""
    from metaprior.tasks import get_task

    try:
        return get_task(name).peak
    except ValueError:
        return 1.0


def psnr_line(model, params, batch) -> str:
    """``"mean ± std dB"`` of ``model`` with ``params`` on ``batch``, at its task's peak."""
    from metaprior.meta.problem import reconstruct
    from metaprior.metrics import mean_std, psnr

    with torch.no_grad():
        values = psnr(reconstruct(model, params, batch), batch.target, task_peak(batch.task))
    m, s = mean_std(values)
    return f"{m:.2f} ± {s:.2f} dB"
