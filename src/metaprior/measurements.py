"""Measurement files: ``y`` (and optionally the ground truth ``x``) with the operator that
produced them, in one ``.safetensors``.

Layout: tensor ``y`` (N, C, h, w) (complex allowed), optional ``x`` (N, C, H, W), and the
operator's buffers as ``physics.<name>`` (masks, kernels: enough to rebuild it exactly);
metadata ``task`` (a registered task name) and ``image_shape`` ([N, C, H, W]).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from metaprior.checkpoint import load_tensors, read_metadata, save_tensors
from metaprior.tasks import Task, TaskBatch, get_task


def save_measurements(path: str | Path, batch: TaskBatch, with_ground_truth: bool = True) -> Path:
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"measurement files end in .safetensors, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {"y": batch.y}
    if with_ground_truth:
        tensors["x"] = batch.x
        if batch.target is not batch.x:  # e.g. the TV task: target = prox_TV(x)
            tensors["target"] = batch.target
    for name, buf in batch.physics.named_buffers():
        tensors[f"physics.{name}"] = buf
    meta = {"task": batch.task, "image_shape": json.dumps(list(batch.x.shape))}
    save_tensors(path, tensors, meta)
    return path


def load_measurements(path: str | Path, device="cpu", task: Task | None = None) -> TaskBatch:
    """Rebuild the :class:`TaskBatch` stored by :func:`save_measurements` (``x``/``target``
    are ``None`` when the file holds no ground truth)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"measurement file {path} does not exist: check --measurements")
    meta = read_metadata(path)
    if "task" not in meta or "image_shape" not in meta:
        raise ValueError(f"{path} lacks 'task'/'image_shape' metadata: write it with "
                         f"`metaprior measure`")
    shape = meta["image_shape"]
    if not (isinstance(shape, list) and len(shape) == 4 and all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape)):
        raise ValueError(f"{path}: 'image_shape' metadata must be [N, C, H, W] of positive "
                         f"integers, got {shape!r}")
    shape = tuple(shape)
    if not isinstance(meta["task"], str):
        raise ValueError(f"{path}: 'task' metadata must be a task name, got {meta['task']!r}")
    task = task or get_task(meta["task"])
    tensors = load_tensors(path, device)
    if "y" not in tensors:
        raise ValueError(f"{path} holds no measurements 'y': write it with `metaprior measure`")
    for name in ("x", "target"):
        if name in tensors and tuple(tensors[name].shape) != shape:
            raise ValueError(f"{path}: '{name}' has shape {tuple(tensors[name].shape)}, its "
                             f"image_shape is {list(shape)}")
    physics = task.make_physics(shape, torch.Generator().manual_seed(0), torch.device(device))
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
    return TaskBatch(task.name, tensors["y"], physics, target, x)
