"""Figures and PSNR lines out, shared by the commands."""

from __future__ import annotations

from pathlib import Path

import torch


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
