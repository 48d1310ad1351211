"""Tasks by name: the registry (:func:`get_task`, :func:`register_task`).

Registered on import: the paper's tasks (T1–T4, the unseen ``sr2`` and ``mri4``, their
parametrised names; :mod:`metaprior.paper_tasks`) and the operator families for training across
operators (:mod:`metaprior.families`). A task is a :class:`Task` (:mod:`metaprior.task`); a user
operator becomes one with :func:`task_from_physics`. Every one of these names is importable
from here.
"""

from __future__ import annotations

from metaprior.families import FAMILY_TASKS, TRAIN_FAMILIES  # noqa: F401 (re-exported)
from metaprior.paper_tasks import (  # noqa: F401 (re-exported)
    FAMILIES,
    FAMILY_HELP,
    TRAIN_TASKS,
    UNSEEN_TASKS,
    deblur_mix_task,
    deblur_task,
    denoise_task,
    fourier_task,
    inpaint_mix_task,
    inpaint_task,
    mri_task,
    sr_task,
    tv_task,
)
from metaprior.task import (  # noqa: F401 (re-exported)
    PhysicsFactory,
    Task,
    TaskBatch,
    physics_noise_sigma,
    sample_or_name,
    task_from_physics,
)

_REGISTRY: dict[str, Task] = {}


def register_task(task: Task, overwrite: bool = False) -> Task:
    """Add a task to the registry. A name already registered, or one that a built-in family
    answers (``sr3``, ``mri8``, ``inpaint-0.7``, ...: see :func:`get_task`), is refused unless
    ``overwrite=True``, which replaces it."""
    if not isinstance(task, Task):
        raise ValueError(f"register_task: task must be a Task (e.g. from task_from_physics), "
                         f"got {type(task).__name__}")
    if not overwrite and any(p.fullmatch(task.name) for p, _ in FAMILIES):
        raise ValueError(f"task name {task.name!r} is a built-in task name (the families "
                         f"{FAMILY_HELP}): choose another name or pass overwrite=True")
    if task.name in _REGISTRY and not overwrite:
        raise ValueError(f"task {task.name!r} is already registered: choose another name or "
                         f"pass overwrite=True")
    _REGISTRY[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The task called ``name``: a registered one, or a parametrised name of a family (e.g.
    ``sr3``, ``mri8``, ``inpaint-0.7``, ``denoise-0.05``, ``deblur-2.5``), built and registered
    on first use."""
    if not isinstance(name, str):
        raise ValueError(f"get_task: name must be a task name (str), got "
                         f"{type(name).__name__} {name!r}")
    if name in _REGISTRY:
        return _REGISTRY[name]
    for pattern, build in FAMILIES:
        match = pattern.fullmatch(name)
        if match:
            task = build(*match.groups())
            if task.name != name:  # e.g. "inpaint-0.50" is the canonical "inpaint"
                return get_task(task.name)
            return register_task(task, overwrite=True)
    raise ValueError(f"unknown task {name!r} (a task of your own needs the --plugin file, or "
                     f"the register_task call, that registers it): choose among "
                     f"{', '.join(available_tasks())}, or a parametrised name: {FAMILY_HELP}")


def available_tasks() -> list[str]:
    return list(_REGISTRY)


for _task in (denoise_task(), tv_task(), deblur_task(), inpaint_task(), sr_task(2), mri_task(4),
              fourier_task(), inpaint_mix_task(), deblur_mix_task(), *FAMILY_TASKS):
    register_task(_task, overwrite=True)
