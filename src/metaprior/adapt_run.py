"""Long adaptation runs: :func:`metaprior.adapt.fine_tune` checkpointed atomically every N
steps and resumed bitwise (``metaprior adapt --ckpt-every N --resume``), and the optimizer
state split into tensors and JSON scalars for its checkpoint files."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from metaprior.adapt import (
    AdaptConfig,
    AdaptResult,
    AdaptState,
    coarse_problem,
    fine_tune,
    load_into,
)
from metaprior.tasks import TaskBatch
from metaprior.typing import OptState, Params


def opt_state_tensors(state: OptState) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an inner-optimizer state (:mod:`metaprior.meta.inner`: scalars and dicts of
    tensors keyed like the parameters) into ``{"m/<param>": tensor}`` and its JSON scalars."""
    tensors = {f"{key}/{k}": v.detach() for key, d in state.items() if isinstance(d, dict)
               for k, v in d.items()}
    return tensors, {key: v for key, v in state.items() if not isinstance(v, dict)}


def opt_state_from(tensors: dict[str, torch.Tensor], scalars: dict) -> OptState:
    """The inverse of :func:`opt_state_tensors`."""
    state: OptState = dict(scalars)
    for name, value in tensors.items():
        key, k = name.split("/", 1)
        state.setdefault(key, {})[k] = value
    return state


@dataclass
class AdaptRunResult(AdaptResult):
    """An :class:`AdaptResult` of a checkpointed run (its ``losses``: of this call's steps)."""

    seconds: float = 0.0  # wall time of the whole run, earlier calls included
    resumed_at: int | None = None  # the checkpoint's step, when it resumed one


def _first_change(saved, given, key: str = "") -> tuple[str, object, object] | None:
    """The first ``(dotted key, saved value, given value)`` where two JSON values differ; a
    checksum (a key ending in ``sha256``) the saved value lacks (a checkpoint written before
    data and models were checksummed) is not compared, and two strings naming the same path
    (``imgs/``, ``./imgs``) are equal."""
    if isinstance(saved, dict) and isinstance(given, dict):
        for k in sorted(set(saved) | set(given)):
            if k.endswith("sha256") and k not in saved:
                continue
            change = _first_change(saved.get(k), given.get(k), f"{key}.{k}" if key else k)
            if change:
                return change
        return None
    if isinstance(saved, str) and isinstance(given, str) and saved != given:
        try:
            if Path(saved).resolve() == Path(given).resolve():
                return None
        except (OSError, RuntimeError, ValueError):
            pass
    return None if saved == given else (key, saved, given)


#: Recipe keys that identify the data a run adapts on, and the model it adapts (the rest are
#: options).
DATA_KEYS = ("data.sha256", "data.images", "data.measurements")
MODEL_KEYS = ("model_sha256",)


def check_resumable(latest: Path, state: dict, recipe: dict, steps: int) -> None:
    """A one-line error naming what differs between the checkpoint ``latest`` (its
    ``state.json``) and the run asked for: the data (:data:`DATA_KEYS`), the model's file
    (:data:`MODEL_KEYS`), an option or a
    step-rule field, or ``steps`` below the checkpoint's step. Data or a model file whose
    checksum is the saved one may have moved (a path is not compared then)."""
    saved, recipe = state.get("recipe", {}), json.loads(json.dumps(recipe))
    for where, key, checksum in (("data", "images", "sha256"), ("data", "measurements", "sha256"),
                                 ("", "model", "model_sha256")):
        old, new = (r.get(where, {}) if where else r for r in (saved, recipe))
        if key in old and old.get(checksum) and old.get(checksum) == new.get(checksum):
            new[key] = old[key]  # the same names and bytes, wherever they lie now
    change = _first_change(saved, recipe)
    if change and change[0] in DATA_KEYS + MODEL_KEYS:
        what = "data" if change[0] in DATA_KEYS else "model"
        raise ValueError(f"--resume: the {what} changed since {latest} was written "
                         f"({change[0]}): adapt afresh with --overwrite")
    if change:
        key, old, new = ("its default" if v is None else v for v in change)
        raise ValueError(f"--resume: {latest} was adapted with {key.split('.')[-1]} {old}, not "
                         f"{new}: drop the option that changes it, or adapt afresh with "
                         f"--overwrite")
    if state.get("step", steps + 1) > steps:
        raise ValueError(f"--resume: {latest} is past --steps {steps} (step "
                         f"{state.get('step')}): give --steps {state.get('step')} or more")


def fine_tune_run(
    model: nn.Module, theta: Params, next_batch: Callable[[int], TaskBatch],
    config: AdaptConfig, run_dir: str | Path, recipe: dict, ckpt_every: int = 500,
    resume: bool = False, callback: Callable[[AdaptState, float], None] | None = None,
    log: Callable[[str], None] = print, overwrite: bool = False,
) -> AdaptRunResult:
    """:func:`fine_tune` for long runs: φ and the optimizer state are checkpointed atomically
    under ``run_dir/checkpoints`` every ``ckpt_every`` steps and at the end, and ``resume``
    continues the latest checkpoint exactly as an unbroken run would (the stream replayed to
    where it stopped). ``run_dir`` is locked for the whole run (:class:`metaprior.outputs.
    RunLock`, the lock of meta-training runs): a second run on it stops at once.

    Args:
        recipe: what identifies the run, JSON-able (task, data, seed, lr, ...): ``resume``
            refuses a checkpoint of another recipe, or one past ``config.steps`` (more steps
            than the first call extend the run).
        ckpt_every: checkpoint interval in steps (0: at the end only).
        log: one-line progress messages.
        overwrite: start afresh where ``run_dir`` holds checkpoints (without it, or
            ``resume``, such a folder is refused).

    With ``config.coarse_iterations`` the checkpoints and ``callback``'s states hold the
    coarse copy's parameters (:func:`coarse_problem`), the result the model's.
    """
    from metaprior import checkpoint as ckpt
    from metaprior.outputs import RunFolderError, RunLock, remove_orphans

    with RunLock(run_dir):
        remove_orphans(run_dir)
        remove_orphans(ckpt.checkpoint_dir(run_dir))
        # what a resumed run must keep: the recipe and every field of config but steps
        # (precision and coarse_iterations only where not their defaults, so a recipe without
        # them does not name them)
        config_fields = {k: v for k, v in asdict(config).items()
                         if k != "steps" and (k, v) not in (("precision", "float32"),
                                                            ("coarse_iterations", 0))}
        recipe = json.loads(json.dumps({**recipe, "config": config_fields}))
        # the states, and so the checkpoints, hold the parameters being adapted: with
        # coarse_iterations, the coarse copy's
        adapted = (coarse_problem(model, theta, config.coarse_iterations)[0]
                   if config.coarse_iterations else model)
        start, seconds_before = None, 0.0
        latest = ckpt.latest_checkpoint(run_dir)
        if resume:
            if latest is None and (unnamed := ckpt.unnamed_checkpoints(run_dir)):
                raise FileNotFoundError(unnamed)
            if latest is None:
                raise FileNotFoundError(f"--resume: no checkpoint under "
                                        f"{ckpt.checkpoint_dir(run_dir)} (a run stopped before "
                                        f"its first checkpoint): run without --resume to start "
                                        f"afresh")
            weights, tensors, state = ckpt.load_checkpoint(latest)
            check_resumable(latest, state, recipe, config.steps)
            device = next(iter(theta.values())).device
            start = AdaptState(state["step"], {k: v.to(device) for k, v in weights.items()},
                               opt_state_from({k: v.to(device) for k, v in tensors.items()},
                                              state["opt"]))
            seconds_before = state["seconds"]
            log(f"resumed from {latest} at step {start.step}")
        elif ckpt.complete_checkpoints(run_dir):  # ``latest`` naming one or not
            if not overwrite:
                raise RunFolderError(f"{run_dir} holds the checkpoints of an earlier run: "
                                     f"--resume continues it, --overwrite replaces it")
            log(f"starting afresh: the checkpoints under {ckpt.checkpoint_dir(run_dir)} will be "
                f"replaced")
        t0 = time.perf_counter()

        def on_step(state: AdaptState, loss: float) -> None:
            if (ckpt_every and state.step % ckpt_every == 0) or state.step == config.steps:
                tensors, scalars = opt_state_tensors(state.opt_state)
                ckpt.save_checkpoint(run_dir, state.step, load_into(adapted, state.phi),
                                     tensors,
                                     {"step": state.step, "recipe": recipe, "opt": scalars,
                                      "seconds": seconds_before + time.perf_counter() - t0})
            if callback is not None:
                callback(state, loss)

        result = fine_tune(model, theta, next_batch, config, callback=on_step, start=start)
        return AdaptRunResult(result.params, result.losses, result.snapshots,
                              seconds_before + time.perf_counter() - t0,
                              start.step if start is not None else None)
