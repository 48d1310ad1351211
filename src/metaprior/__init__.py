"""metaprior: meta-learned, adaptive unrolled solvers for imaging inverse problems.

The public API, ``import metaprior as mp``::

    model, meta = mp.load_model("hqs-dpir24-dihedral")     # the recommended shipped model
    task = mp.get_task("sr2")                               # or mp.task_from_physics(...)
    batch = task.sample(images, torch.Generator().manual_seed(0))
    rule = mp.AdaptConfig.from_model(meta, steps=50)        # its own inner step rule
    result = mp.fine_tune(model, mp.parameters_of(model), lambda step: batch, rule)
    x_hat = mp.reconstruct(model, result.params, batch)

Names are loaded on first use, so ``import metaprior`` stays light (the command line needs
only a few of them).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name -> module that defines it
_API = {
    # the networks, by name
    "PDNet": "metaprior.models", "PDNetConfig": "metaprior.models",
    "HQSNet": "metaprior.models", "HQSNetConfig": "metaprior.models",
    "build_model": "metaprior.models", "register_architecture": "metaprior.models",
    "available_architectures": "metaprior.models",
    # tasks and operators
    "Task": "metaprior.tasks", "TaskBatch": "metaprior.tasks", "get_task": "metaprior.tasks",
    "register_task": "metaprior.tasks", "available_tasks": "metaprior.tasks",
    "task_from_physics": "metaprior.tasks",
    # the inner problem (shared by meta-training and adaptation)
    "reconstruct": "metaprior.meta.problem", "inner_loss": "metaprior.meta.problem",
    "inner_step": "metaprior.meta.problem", "MetaConfig": "metaprior.meta.config",
    # meta-training
    "meta_train": "metaprior.train", "MetaTrainer": "metaprior.train",
    "TrainConfig": "metaprior.train", "DataConfig": "metaprior.train",
    "OptimConfig": "metaprior.train", "RunConfig": "metaprior.train",
    "meta_gradient": "metaprior.meta.step",
    # adaptation to a new operator
    "AdaptConfig": "metaprior.adapt", "fine_tune": "metaprior.adapt",
    "fine_tune_run": "metaprior.adapt_run", "parameters_of": "metaprior.adapt",
    "load_into": "metaprior.adapt", "coarse_problem": "metaprior.adapt",
    "check_rule": "metaprior.adapt", "bfloat16_is_fast": "metaprior.adapt",
    # scoring
    "evaluate_method": "metaprior.evaluate", "finetune_and_score": "metaprior.evaluate",
    "search_lr": "metaprior.evaluate", "label_free_loss": "metaprior.evaluate",
    # files
    "load_model": "metaprior.checkpoint", "save_model": "metaprior.checkpoint",
    "add_model_dir": "metaprior.pretrained",
    "load_measurements": "metaprior.measurements",
    "save_measurements": "metaprior.measurements",
    # metrics
    "psnr": "metaprior.metrics", "ssim": "metaprior.metrics",
    # the process (every command calls configure_cpu)
    "configure_cpu": "metaprior.runtime", "keep_freed_memory": "metaprior.runtime",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'metaprior' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(name for name in set(globals()) | set(_API)
                  if name not in ("annotations", "importlib"))
