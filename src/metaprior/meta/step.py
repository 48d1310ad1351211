r"""The outer step: per-task hypergradients, then their sum (the one place where tasks meet;
a distributed run all-reduces exactly this sum)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from metaprior.meta.implicit import implicit_hypergradient
from metaprior.meta.maml import (
    MetaConfig,
    TaskHypergradient,
    first_order_hypergradient,
    joint_gradient,
    maml_hypergradient,
)
from metaprior.tasks import TaskBatch
from metaprior.typing import Params

_MODES = {
    "maml": maml_hypergradient,
    "first_order": first_order_hypergradient,
    "implicit": implicit_hypergradient,
    "joint": joint_gradient,
}


def task_hypergradient(
    model: nn.Module, theta: Params, inner_batch: TaskBatch, outer_batch: TaskBatch,
    config: MetaConfig,
) -> TaskHypergradient:
    """The hypergradient of one task by ``config.hypergradient``."""
    return _MODES[config.hypergradient](model, theta, inner_batch, outer_batch, config)


def sum_hypergradients(results: Sequence[TaskHypergradient]) -> Params:
    r""":math:`\sum_i \nabla_\theta \mathcal L_{\rm outer}(\theta_i)` (eq. 2 sums over tasks)."""
    total = {k: g.detach().clone() for k, g in results[0].grads.items()}
    for r in results[1:]:
        for k, g in r.grads.items():
            total[k] += g.detach()
    return total


def meta_gradient(
    model: nn.Module, theta: Params, batches: Sequence[tuple[TaskBatch, TaskBatch]],
    config: MetaConfig,
) -> tuple[Params, list[TaskHypergradient]]:
    """Hypergradient of the summed outer loss over a meta-batch of (inner, outer) batches."""
    results = [task_hypergradient(model, theta, inner, outer, config)
               for inner, outer in batches]
    return sum_hypergradients(results), results
