"""``metaprior measure`` and ``metaprior reconstruct``: measurement files in and out."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from metaprior.commands.images import figure, psnr_line
from metaprior.data import list_images, read_images
from metaprior.outputs import RunFolderError, check_output_file, check_writable_dir, write_or_keep


@dataclass(frozen=True)
class MeasureOptions:
    task: str  # task: registered (sr2, mri4), parametrised (sr3, inpaint-0.7) or from --plugin
    images: str  # folder of equal-size images
    out: str  # output .safetensors
    color: bool = False  # keep RGB (default: grayscale)
    no_ground_truth: bool = False  # store y only
    seed: int = 0  # random seed of the operator and the noise
    overwrite: bool = False  # replace an existing --out


@dataclass(frozen=True)
class ReconstructOptions:
    model: str  # model .safetensors, run folder or model name (metaprior.pretrained)
    measurements: str  # measurement file
    out: str  # output folder of PNGs
    device: str = "cpu"  # torch device: cpu or cuda
    figure: bool = False  # also write figure.png: y, A^T y, the reconstruction, ground truth


def cmd_measure(args) -> None:
    from metaprior.config import resolve
    from metaprior.measurements import save_measurements
    from metaprior.tasks import get_task

    resolve(args, {"measure": MeasureOptions})
    check_output_file(args.out, "--out", ".safetensors", overwrite=args.overwrite)
    task = get_task(args.task)
    files = list_images(args.images, "--images")
    images = read_images(args.images, args.color)
    if len({tuple(im.shape) for im in images}) > 1:
        raise ValueError(f"images in {args.images} differ in size: measure folders of "
                         f"equal-size images")
    batch = task.sample(torch.stack(images), torch.Generator().manual_seed(args.seed))
    path = write_or_keep(lambda out: save_measurements(
        out, batch, with_ground_truth=not args.no_ground_truth, names=[p.name for p in files],
        images=args.images), args.out, "--out", "measurement file")
    print(f"wrote {path}: y {tuple(batch.y.shape)} {batch.y.dtype}, task {args.task}")


def cmd_reconstruct(args) -> None:
    from metaprior.adapt import parameters_of
    from metaprior.checkpoint import load_model
    from metaprior.config import resolve
    from metaprior.data.datasets import IMAGE_SUFFIXES
    from metaprior.measurements import load_measurements, measurement_sources
    from metaprior.meta.problem import reconstruct

    resolve(args, {"reconstruct": ReconstructOptions})
    if Path(args.out).suffix.lower() in IMAGE_SUFFIXES:
        raise RunFolderError(f"--out {args.out} names an image: reconstruct writes a folder of "
                             f"PNGs (recon_<input>.png); give a folder path")
    out = check_writable_dir(args.out, "--out")
    names, images = measurement_sources(args.measurements) if Path(
        args.measurements).is_file() else (None, None)
    check_not_among_inputs(out, names, images)
    model, meta = load_model(args.model, args.device)
    batch = load_measurements(args.measurements, args.device)
    adapted_to = meta.get("adapted", {}).get("task") if isinstance(meta.get("adapted"),
                                                                    dict) else None
    if adapted_to and adapted_to != batch.task:
        print(f"warning: the model was adapted to task {adapted_to!r}, the measurements are "
              f"of task {batch.task!r}", file=sys.stderr)
    with torch.no_grad():
        x_hat = reconstruct(model, parameters_of(model), batch)
    if not bool(torch.isfinite(x_hat).all()):
        raise FloatingPointError("reconstruction is not finite; nothing written")
    pngs = dict(zip(output_names(names, len(x_hat)), x_hat.clamp(0, 1).cpu(), strict=True))
    write_or_keep(lambda folder: write_pngs(folder, pngs), out, "--out", "reconstructions")
    print(f"wrote {len(x_hat)} image(s) to {out}")
    if batch.target is not None:
        print(f"PSNR: {psnr_line(model, parameters_of(model), batch)}")
    if args.figure:
        print(f"figure: {side_by_side(batch, x_hat, out / 'figure.png')}")
    elif (out / "figure.png").exists():
        print(f"note: {out / 'figure.png'} is an earlier run's figure, not of these "
              f"reconstructions (--figure replaces it)", file=sys.stderr)


def side_by_side(batch, x_hat: torch.Tensor, path: Path) -> Path:
    """:func:`figure` of a measured batch: y (where it is a real image), A^T y, ``x_hat`` and,
    where ``batch`` holds it, the ground truth, with the PSNRs of A^T y and ``x_hat``."""
    from metaprior.metrics import psnr
    from metaprior.tasks import get_task

    with torch.no_grad():
        columns = {"A^T y": batch.physics.A_adjoint(batch.y), "reconstruction": x_hat}
    if not batch.y.is_complex() and batch.y.dim() == 4 and batch.y.shape[1] == x_hat.shape[1]:
        columns = {"measurement y": batch.y, **columns}
    scores = {}
    if batch.target is not None:
        columns["ground truth"] = batch.target
        peak = get_task(batch.task).peak
        scores = {k: psnr(columns[k].clamp(0, 1), batch.target, peak).tolist()
                  for k in ("A^T y", "reconstruction")}
    return figure({k: v.cpu() for k, v in columns.items()}, scores, path)


def write_png_atomic(path: Path, image: torch.Tensor) -> None:
    """Write a (C, H, W) image in [0, 1] as an 8-bit PNG, atomically
    (:func:`~metaprior.checkpoint.write_bytes_atomic`)."""
    import io

    from PIL import Image

    from metaprior.checkpoint import write_bytes_atomic

    arr = (image.permute(1, 2, 0).squeeze(-1).numpy() * 255).round().astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())


def write_pngs(folder: Path, images: dict[str, torch.Tensor]) -> Path:
    """Write each ``{name: image}`` into ``folder`` (created if needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        write_png_atomic(folder / name, image)
    return folder


def output_names(names: list[str] | None, n: int) -> list[str]:
    """The PNG names of ``n`` reconstructions: ``recon_<input stem>.png`` where the input
    names are known (``recon_<input name with dots as _>.png`` where two stems clash), else
    ``recon_000.png``, ``recon_001.png``, ..."""
    if names is None:
        return [f"recon_{i:03d}.png" for i in range(n)]
    stems = [Path(a).stem for a in names]
    if len(set(stems)) < len(stems):
        stems = [a.replace(".", "_") for a in names]
    return [f"recon_{s}.png" for s in stems]


def check_not_among_inputs(out: Path, names: list[str] | None, images: Path | None) -> None:
    """Refuse an output folder that is, or is inside, the folder the measured images were
    read from, or that holds files of the measured images' names: reconstructions written
    there would be taken in by the next ``measure`` of it."""
    target = out.resolve()
    if images is not None and (target == images or images in target.parents):
        raise RunFolderError(f"--out {out} is inside {images}, the folder of the measured "
                             f"images: choose another folder")
    found = [a for a in names or () if (out / a).is_file()]
    if found:
        raise RunFolderError(f"--out {out} holds the measured images ({found[0]}, ...): "
                             f"choose another folder")
