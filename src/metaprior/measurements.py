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

from metaprior.checkpoint import _save_tensors, load_tensors, read_metadata
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
    _save_tensors(path, tensors, meta)
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
    task = task or get_task(meta["task"])
    tensors = load_tensors(path, device)
    shape = tuple(meta["image_shape"])
    physics = task.make_physics(shape, torch.Generator().manual_seed(0), torch.device(device))
    buffers = {k[len("physics."):]: v for k, v in tensors.items() if k.startswith("physics.")}
    if buffers:
        physics.load_state_dict(buffers, strict=False)
    x = tensors.get("x")
    target = tensors.get("target", x)
    return TaskBatch(task.name, tensors["y"], physics, target, x)
