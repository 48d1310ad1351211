r"""Joint multi-task pre-training: the non-meta baseline, an objective of its own.

It has no inner problem, so it is not a hypergradient. It shares the outer step's plumbing
(:mod:`metaprior.meta.step`), so it sees the same batches as meta-training, step for step.
"""

from __future__ import annotations

from torch import nn

from metaprior.meta.config import MetaConfig
from metaprior.meta.maml import TaskHypergradient, grad_dict
from metaprior.meta.problem import outer_loss
from metaprior.tasks import TaskBatch
from metaprior.typing import Params


def joint_gradient(
    model: nn.Module, theta: Params, inner_batch: TaskBatch, outer_batch: TaskBatch,
    config: MetaConfig,
) -> TaskHypergradient:
    r"""Joint multi-task pre-training, the non-meta baseline: no inner problem, the gradient of
    the supervised loss at :math:`\theta` on both of the task's batches,
    :math:`\nabla_\theta[\mathcal L_{\rm sup}(\theta; \mathcal D^{\rm train}_i) +
    \mathcal L_{\rm sup}(\theta; \mathcal D^{\rm test}_i)]`, so it sees the same images as
    meta-training step for step."""
    theta = {k: v.detach().requires_grad_(True) for k, v in theta.items()}
    train = outer_loss(model, theta, inner_batch)
    test = outer_loss(model, theta, outer_batch)
    return TaskHypergradient(inner_batch.task, grad_dict(train + test, theta),
                             float(train.detach()), float(test.detach()))
