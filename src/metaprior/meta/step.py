r"""The outer step: per-task hypergradients, then their sum (the one place where tasks meet;
a distributed run all-reduces exactly this sum, :mod:`metaprior.distributed`).

The tasks of a meta-batch are independent until that sum, so they run concurrently in
``MetaConfig.workers`` threads (torch releases the GIL inside its kernels; each thread gets its
own replica of the module, since ``functional_call`` swaps a module's tensors while it runs).
Each task's arithmetic is unchanged, so the result is bitwise that of one thread.
"""

from __future__ import annotations

import copy
import functools
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import torch
from torch import nn

from metaprior import distributed
from metaprior.meta.config import INNER_LR_PREFIX, MetaConfig
from metaprior.meta.implicit import implicit_hypergradient
from metaprior.meta.joint import joint_gradient
from metaprior.meta.maml import (
    TaskHypergradient,
    TaskShare,
    first_order_hypergradient,
    maml_hypergradient,
)
from metaprior.meta.problem import BatchShare
from metaprior.meta.reptile import reptile_hypergradient
from metaprior.tasks import TaskBatch
from metaprior.typing import Params

_MODES = {
    "maml": maml_hypergradient,
    "first_order": first_order_hypergradient,
    "implicit": implicit_hypergradient,
    "reptile": reptile_hypergradient,
}


def task_hypergradient(
    model: nn.Module, theta: Params, inner_batch: TaskBatch, outer_batch: TaskBatch,
    config: MetaConfig, lrs: Params | None = None, share: TaskShare | None = None,
) -> TaskHypergradient:
    """The hypergradient of one task by ``config.hypergradient`` (with learned inner learning rates
    ``lrs``: second-order MAML, which also differentiates them), or with
    ``config.objective == "joint"`` the joint pre-training gradient. ``share``: this process's
    part of a task shared across processes (:func:`_part`)."""
    if config.objective == "joint":
        result = joint_gradient(model, theta, inner_batch, outer_batch, config)
        return result if share is None else _weighted(result, share.outer_weight)
    extra = {} if share is None else {"share": share}  # implicit, reptile: never shared
    if lrs is not None:
        return maml_hypergradient(model, theta, inner_batch, outer_batch, config, lrs=lrs,
                                  **extra)
    return _MODES[config.hypergradient](model, theta, inner_batch, outer_batch, config, **extra)


def sum_hypergradients(results: Sequence[TaskHypergradient]) -> Params:
    r""":math:`\sum_i \nabla_\theta \mathcal L_{\rm outer}(\theta_i)` (eq. 2 sums over tasks)."""
    total = {k: g.detach().clone() for k, g in results[0].grads.items()}
    for r in results[1:]:
        for k, g in r.grads.items():
            total[k] += g.detach()
    return total


def num_workers(config: MetaConfig, tasks: int) -> int:
    """Threads for a meta-batch of ``tasks`` tasks: ``config.workers``, or with 0 the cores
    this process may use divided by torch's intra-op threads and by the ranks torchrun
    started on this machine; never more than ``tasks``."""
    workers = config.workers
    if workers == 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # torchrun's ranks here
        workers = max(1, cores // (torch.get_num_threads() * local_ranks))
    return max(1, min(workers, tasks))


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="metaprior-task")


def meta_gradient(
    model: nn.Module, theta: Params, batches: Sequence[tuple[TaskBatch, TaskBatch]],
    config: MetaConfig, lrs: Params | None = None,
) -> tuple[Params, list[TaskHypergradient]]:
    """Hypergradient of the summed outer loss over a meta-batch of (inner, outer) batches
    (and of the learned inner learning rates ``lrs``, if given).

    In a distributed run (:mod:`metaprior.distributed`) every rank passes the same meta-batch,
    computes its :func:`~metaprior.distributed.shares` (whole tasks, or with more ranks than
    tasks a part of one task's batch), and the sum is one all-reduce; every rank returns the
    same total and the records of all tasks (their ``grads`` only for its own tasks)."""
    mine, own, task_shares = [], [], []
    for i, part, parts in distributed.shares(len(batches)):
        work = _part(*batches[i], i, len(batches), part, parts, config)
        if work is not None:
            mine.append(i)
            own.append(work[:2])
            task_shares.append(work[2])
    workers = num_workers(config, len(own))
    if not own:
        results = []
    elif workers == 1 or any(task_shares):
        results = [task_hypergradient(model, theta, inner, outer, config, lrs, share)
                   for (inner, outer), share in zip(own, task_shares, strict=True)]
    else:
        results = _concurrent(model, theta, own, config, workers, lrs)
    if not distributed.active():
        return sum_hypergradients(results), results
    return _reduce(model, theta, batches, mine, results, lrs)


def _part(inner: TaskBatch, outer: TaskBatch, task: int, tasks: int, part: int, parts: int,
          config: MetaConfig) -> tuple[TaskBatch, TaskBatch, TaskShare | None] | None:
    """Part ``part`` of ``parts`` of task ``task``'s work: its batches and the
    :class:`TaskShare` its hypergradient is computed with (``None``: the whole task), or
    ``None`` for nothing to do. MAML and joint pre-training split both batches (the outer
    batch alone where the inner one has fewer samples than parts); implicit and reptile are
    not split (part 0 computes the task whole, as it does an operator that does not split
    by sample). ``docs/distributed.md`` explains why.
    """
    if parts == 1:
        return inner, outer, None
    whole = (inner, outer, None) if part == 0 else None
    if config.objective == "joint":
        if len(inner.y) != len(outer.y):  # one weight for both batches needs equal sizes
            return whole
        outs, ins = outer.split(parts), inner.split(parts)
        if outs is None or ins is None:
            return whole
        sub = outs[part]
        return None if sub is None else (ins[part], sub, TaskShare(len(sub.y) / len(outer.y)))
    if config.hypergradient in ("implicit", "reptile"):
        return whole
    outs = outer.split(parts)
    if outs is None:
        return whole
    ins = inner.split(parts) if distributed.active() else None
    if ins is not None and None not in ins and None not in outs:
        inner_share = BatchShare(len(ins[part].y) / len(inner.y),
                                 partial(distributed.task_group_sum, task=task, tasks=tasks))
        return ins[part], outs[part], TaskShare(len(outs[part].y) / len(outer.y), inner_share)
    sub = outs[part]
    return None if sub is None else (inner, sub, TaskShare(len(sub.y) / len(outer.y)))


def _weighted(result: TaskHypergradient, weight: float) -> TaskHypergradient:
    """A part's hypergradient, losses and numbers scaled by its share of the task's batch."""
    return TaskHypergradient(result.task, {k: g * weight for k, g in result.grads.items()},
                             result.inner_loss * weight, result.outer_loss * weight,
                             {k: v * weight for k, v in result.info.items()})


#: Per-task numbers exchanged between ranks for the log (besides the losses).
_INFO_KEYS = ("cg_residual", "cg_iters")


def _reduce(model: nn.Module, theta: Params, batches, mine: list[int],
            results: list[TaskHypergradient], lrs: Params | None
            ) -> tuple[Params, list[TaskHypergradient]]:
    """Sum the ranks' hypergradients and share every task's losses, in one all-reduce."""
    names = list(theta) + ([INNER_LR_PREFIX + k for k in lrs] if lrs is not None else [])
    ref = next(iter(theta.values()))
    if results:
        local = sum_hypergradients(results)
    else:
        shapes = {**{k: v.shape for k, v in theta.items()},
                  **{INNER_LR_PREFIX + k: v.shape for k, v in (lrs or {}).items()}}
        local = {k: torch.zeros(shapes[k], dtype=ref.dtype, device=ref.device) for k in names}
    # per-task [inner loss, outer loss, *info]: zeros on other ranks' rows, NaN = absent
    stats = torch.zeros(len(batches), 2 + len(_INFO_KEYS), dtype=torch.float64,
                        device=ref.device)
    for i, r in zip(mine, results, strict=True):
        stats[i] = torch.tensor([r.inner_loss, r.outer_loss,
                                 *(float(r.info.get(k, float("nan"))) for k in _INFO_KEYS)],
                                dtype=torch.float64)
    packed = {**{k: local[k] for k in names}, "stats": stats.to(ref.dtype)}
    summed = distributed.all_reduce_sum(packed)
    own = dict(zip(mine, results, strict=True))
    records = []
    for i, (inner, _) in enumerate(batches):
        row = summed["stats"][i].double().tolist()
        info = {k: v for k, v in zip(_INFO_KEYS, row[2:], strict=True) if v == v}
        records.append(TaskHypergradient(inner.task, own[i].grads if i in own else {},
                                         row[0], row[1], info))
    return {k: summed[k] for k in names}, records


def _concurrent(
    model: nn.Module, theta: Params, batches: Sequence[tuple[TaskBatch, TaskBatch]],
    config: MetaConfig, workers: int, lrs: Params | None = None,
) -> list[TaskHypergradient]:
    """The tasks' hypergradients from ``workers`` pool threads, in the order of ``batches``."""
    replicas: dict[int, nn.Module] = {}  # one per pool thread, made on its first task
    grad_enabled = torch.is_grad_enabled()

    def run(pair: tuple[TaskBatch, TaskBatch]) -> TaskHypergradient:
        ident = threading.get_ident()
        if ident not in replicas:
            replicas[ident] = copy.deepcopy(model)
        replica = replicas[ident]
        with torch.set_grad_enabled(grad_enabled):  # grad mode is thread-local
            return task_hypergradient(replica, theta, *pair, config, lrs)

    return list(_pool(workers).map(run, batches))
