"""Image folders in, figures and PSNR lines out, shared by the commands."""

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


#: The smallest image side the commands read (the denoisers work at half resolution).
MIN_SIDE = 8


def read_images(folder: str, color: bool, flag: str = "--images") -> list[torch.Tensor]:
    """The images of the folder of option ``flag``, each (C, H, W) in [0, 1]; one-line errors
    for an unreadable image or one smaller than ``MIN_SIDE`` a side."""
    from metaprior.data import load_image

    images = []
    for path in image_files(folder, flag):
        image = load_image(path, gray=not color)
        if min(image.shape[-2:]) < MIN_SIDE:
            h, w = image.shape[-2:]
            raise ValueError(f"{flag}: {path} is {h}x{w} pixels: images must be at least "
                             f"{MIN_SIDE}x{MIN_SIDE}")
        images.append(image)
    return images


def figure(columns: dict[str, torch.Tensor], scores: dict[str, list[float]], path: Path,
           tile: int = 160) -> Path:
    """A grid of images, one row per picture and one column per label, each tile resized
    (nearest) to ``tile`` pixels and captioned with its PSNR where ``scores`` has the label;
    written atomically as PNG, in colour if any column is.

    Args:
        columns: ``{label: (N, C, H, W) images}``, C 1 or 3, values shown in [0, 1] (a complex
            image by its magnitude); H, W may differ between columns (e.g. y of a
            downsampling).
        scores: ``{label: N PSNRs}`` for some labels.
    """
    import io

    from PIL import Image, ImageDraw

    from metaprior.checkpoint import write_bytes_atomic

    n = next(iter(columns.values())).shape[0]
    mode = "RGB" if any(images.shape[1] == 3 for images in columns.values()) else "L"
    head, foot = 18, 16
    canvas = Image.new(mode, (tile * len(columns), head + n * (tile + foot)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, (label, images) in enumerate(columns.items()):
        draw.text((j * tile + 4, 3), label, fill="black")
        images = images.abs() if images.is_complex() else images
        for i in range(n):
            pixels = (images[i].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)
            im = Image.fromarray(pixels.squeeze(-1).cpu().numpy()).convert(mode)
            top = head + i * (tile + foot)
            canvas.paste(im.resize((tile, tile), Image.NEAREST), (j * tile, top))
            if label in scores:
                draw.text((j * tile + 4, top + tile + 2), f"{scores[label][i]:.2f} dB",
                          fill="black")
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())
    return path


def psnr_line(model, params, batch) -> str:
    """``"mean ± std dB"`` of ``model`` with ``params`` on ``batch``, at its task's peak."""
    from metaprior.meta.problem import reconstruct
    from metaprior.metrics import mean_std, psnr
    from metaprior.tasks import get_task

    with torch.no_grad():
        values = psnr(reconstruct(model, params, batch), batch.target,
                      get_task(batch.task).peak)
    m, s = mean_std(values)
    return f"{m:.2f} ± {s:.2f} dB"
