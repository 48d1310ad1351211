"""Measurement files: ``y`` (and optionally the ground truth ``x``) with the operator that
produced them, in one ``.safetensors``.

Layout: tensor ``y`` (N, C, h, w) (complex allowed), optional ``x`` (N, C, H, W), and the
operator's buffers as ``physics.<name>`` (masks, kernels: enough to rebuild it exactly);
metadata ``task`` (a registered task name) and ``image_shape`` ([N, C, H, W]); files written by
``metaprior measure`` also record ``names`` (the image file names, in order) and ``images`` (the
folder they were read from), so reconstructions are named after their inputs and never
written among them, and ``noise_sigma`` (the noise std drawn for ``y``, which the
noise-aware label-free loss uses). Files without these keys stay readable.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from metaprior.checkpoint import load_tensors, read_metadata, save_tensors
from metaprior.tasks import TaskBatch, get_task

#: The most image pixels a measurement file may claim per number of ``y`` (SR ×16 is 256).
MAX_PIXELS_PER_MEASUREMENT = 1024


def save_measurements(path: str | Path, batch: TaskBatch, with_ground_truth: bool = True,
                      names: Sequence[str] | None = None, images: str | Path | None = None
                      ) -> Path:
    """Write ``batch`` to ``path`` (see the module docstring).

    Args:
        with_ground_truth: also store ``x`` (and ``target`` where it differs).
        names: the file name of each image of the batch, in order (plain names, no folder).
        images: the folder the images were read from.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"measurement files end in .safetensors, got {path}")
    if with_ground_truth and batch.x is None:
        raise ValueError("save_measurements: the batch holds no ground truth: pass "
                         "with_ground_truth=False")
    tensors: dict[str, Tensor] = {"y": batch.y}
    if with_ground_truth:
        tensors["x"] = batch.x
        if batch.target is not batch.x:  # e.g. the TV task: target = prox_TV(x)
            tensors["target"] = batch.target
    for name, t in tensors.items():  # what load_measurements accepts, checked before writing
        if t.dtype not in (torch.float32, torch.complex64):
            raise ValueError(f"save_measurements: '{name}' is {t.dtype}: measurement files hold "
                             f"float32 (complex64 measurements): measure float32 images")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"save_measurements: '{name}' holds non-finite values (inf or "
                             f"NaN): {path} not written")
    for name, buf in batch.physics.named_buffers():  # copies: deepinv's may share memory
        tensors[f"physics.{name}"] = buf.detach().resolve_conj().clone()
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"task": batch.task, "image_shape": json.dumps(list(
        batch.x.shape if batch.x is not None else batch.physics.A_adjoint(batch.y).shape)),
            "noise_sigma": json.dumps(float(batch.noise_sigma))}
    if batch.draw is not None:  # the operator's draw, so that loading redraws it
        meta["draw"] = bytes(batch.draw.tolist()).hex()
    if names is not None:
        meta["names"] = json.dumps(_checked_names(list(names), len(batch.y), path))
    if images is not None:
        meta["images"] = str(Path(images).resolve())
    save_tensors(path, tensors, meta)
    return path


def _checked_names(names, n: int, path) -> list[str]:
    """``names`` if it is ``n`` distinct plain file names (no folder part, not hidden), else a
    one-line ``ValueError``."""
    ok = isinstance(names, list) and len(names) == n and all(
        isinstance(a, str) and a and a == Path(a).name and not a.startswith(".")
        and "\\" not in a and len(a) <= 255 for a in names) and len(set(names)) == n
    if not ok:
        raise ValueError(f"{path}: 'names' metadata must be {n} distinct plain file names, got "
                         f"{str(names)[:200]}")
    return names


def measurement_sources(path: str | Path) -> tuple[list[str] | None, Path | None]:
    """(image file names, images folder) recorded in a measurement file, each ``None`` when
    the file does not record it (files written before they were recorded)."""
    meta = read_metadata(path)
    names = meta.get("names")
    if names is not None:
        names = _checked_names(names, image_shape(path, meta)[0], path)
    folder = meta.get("images")
    if folder is not None and not isinstance(folder, str):
        raise ValueError(f"{path}: 'images' metadata must be a folder path, got {folder!r}")
    return names, Path(folder) if folder else None


def image_shape(path: str | Path, meta: dict | None = None) -> tuple[int, int, int, int]:
    """The (N, C, H, W) of the images a measurement file measured, from its metadata (read
    from ``path`` unless given), checked; one-line errors for missing or malformed metadata."""
    meta = read_metadata(path) if meta is None else meta
    if "task" not in meta or "image_shape" not in meta:
        raise ValueError(f"{path} lacks 'task'/'image_shape' metadata: write it with "
                         f"`metaprior measure`")
    shape = meta["image_shape"]
    if not (isinstance(shape, list) and len(shape) == 4 and all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape)):
        raise ValueError(f"{path}: 'image_shape' metadata must be [N, C, H, W] of positive "
                         f"integers, got {shape!r}")
    return tuple(shape)


def load_measurements(path: str | Path, device="cpu") -> TaskBatch:
    """Rebuild the :class:`TaskBatch` stored by :func:`save_measurements` (``x``/``target``
    are ``None`` when the file holds no ground truth)."""
    from metaprior.config import check_device

    path = Path(path)
    check_device(str(device))
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a measurement file: give the .safetensors "
                         f"file `metaprior measure` wrote")
    if not path.is_file():
        raise FileNotFoundError(f"measurement file {path} does not exist: check --measurements")
    meta = read_metadata(path)
    shape = image_shape(path, meta)
    if not isinstance(meta["task"], str):
        raise ValueError(f"{path}: 'task' metadata must be a task name, got {meta['task']!r}")
    task = get_task(meta["task"])
    tensors = load_tensors(path, device)
    if "y" not in tensors:
        raise ValueError(f"{path} holds no measurements 'y': write it with `metaprior measure`")
    # An operator maps an image to at most as many numbers as it has pixels times a small
    # factor the other way (SR ×K: K² pixels a measurement): a larger image_shape is crafted
    # or damaged, and is refused before anything of its size is allocated.
    if math.prod(shape) > MAX_PIXELS_PER_MEASUREMENT * max(1, tensors["y"].numel()):
        raise ValueError(f"{path}: 'image_shape' {list(shape)} holds over "
                         f"{MAX_PIXELS_PER_MEASUREMENT}× the numbers of 'y' "
                         f"{tuple(tensors['y'].shape)}: the file is damaged")
    for name in ("y", "x", "target"):
        if name not in tensors:
            continue
        t = tensors[name]
        if t.dtype not in (torch.float32, torch.complex64):
            raise ValueError(f"{path}: '{name}' is {t.dtype}: a measurement file holds float32 "
                             f"(complex64 measurements): write it with `metaprior measure` or "
                             f"`metaprior.save_measurements`")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{path} holds non-finite values in '{name}' (inf or NaN): "
                             f"measure again, or repair the file")
        if name != "y" and tuple(t.shape) != shape:
            raise ValueError(f"{path}: '{name}' has shape {tuple(t.shape)}, its "
                             f"image_shape is {list(shape)}")
    generator = torch.Generator().manual_seed(0)  # files written before draws were recorded
    if "draw" in meta:
        try:
            generator.set_state(torch.tensor(list(bytes.fromhex(meta["draw"])),
                                             dtype=torch.uint8))
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"{path}: its 'draw' metadata is not a generator state: the file "
                             f"is damaged") from None
    physics = task.make_physics(shape, generator, torch.device(device))
    buffers = {k[len("physics."):]: v for k, v in tensors.items() if k.startswith("physics.")}
    if buffers:
        try:
            physics.load_state_dict(buffers, strict=False)
        except RuntimeError as e:
            raise ValueError(f"{path}: its operator tensors do not fit task {task.name!r} at "
                             f"image shape {list(shape)} ({str(e).splitlines()[-1].strip()})"
                             ) from None
    try:
        with torch.no_grad():
            expected = physics.A(torch.zeros(shape, device=device))
    except RuntimeError as e:
        raise ValueError(f"{path}: task {task.name!r} cannot be built for image shape "
                         f"{list(shape)} ({str(e).splitlines()[0]})") from None
    y = tensors["y"]
    if tuple(y.shape) != tuple(expected.shape) or y.is_complex() != expected.is_complex():
        raise ValueError(f"{path}: 'y' is {y.dtype} {tuple(y.shape)}, task {task.name!r} on "
                         f"images {list(shape)} measures {expected.dtype} "
                         f"{tuple(expected.shape)}")
    x = tensors.get("x")
    target = tensors.get("target", x)
    # the std drawn for this file (a family task draws one per batch); older files: the task's
    sigma = meta.get("noise_sigma", task.noise_sigma)
    if not (isinstance(sigma, (int, float)) and not isinstance(sigma, bool)
            and math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"{path}: 'noise_sigma' metadata must be a number >= 0, got {sigma!r}")
    if x is not None:  # the rebuilt operator must reproduce y, up to the file's noise
        with torch.no_grad():
            residual = (physics.A(x) - y).abs().pow(2).mean().sqrt().item()
        if residual > 5 * sigma + 1e-4:
            raise ValueError(f"{path}: task {task.name!r} rebuilds an operator that does not "
                             f"reproduce 'y' from 'x' (residual {residual:.3g}, noise "
                             f"{sigma:g}): its factory draws differently from the one that "
                             f"measured the file; measure again with this task")
    return TaskBatch(task.name, tensors["y"], physics, target, x, float(sigma))
