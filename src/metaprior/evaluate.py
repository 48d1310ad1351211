"""Evaluation: reconstruct a set of images for a task and score them (PSNR, SSIM, time)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from metaprior.metrics import mean_std, psnr, ssim
from metaprior.tasks import Task, TaskBatch

#: A reconstruction method: TaskBatch -> (B, C, H, W) estimate.
Method = Callable[[TaskBatch], Tensor]


def pseudo_inverse(batch: TaskBatch) -> Tensor:
    r""":math:`A^\dagger y` (zero filling for decimation and MRI-with-symmetric-mask)."""
    return batch.physics.A_dagger(batch.y)


def task_batches(task: Task, images: Sequence[Tensor], seed: int = 0) -> list[TaskBatch]:
    """One :class:`TaskBatch` per image (images may differ in size), seeded."""
    g = torch.Generator().manual_seed(seed)
    return [task.sample(im.unsqueeze(0), g) for im in images]


def evaluate_method(method: Method, batches: Sequence[TaskBatch], peak: float | str = 1.0,
                    keep_first: bool = False) -> dict:
    """PSNR and SSIM of ``method`` per image, seconds per batch, and (with ``keep_first``) its
    first output.

    Args:
        method: ``TaskBatch -> (B, C, H, W)`` estimate.
        batches: the test batches (one image each, or a few).
        peak: data range of the metrics: a number, or ``"max"`` for each target's maximum.

    Returns:
        ``{"psnr": [...], "ssim": [...], "sec_per_image": float}`` (+ ``"first"``: the first
        output, on the CPU); a non-finite output raises ``FloatingPointError``.
    """
    out: dict = {"psnr": [], "ssim": []}
    seconds = 0.0
    with torch.no_grad():
        for i, b in enumerate(batches):
            t0 = time.perf_counter()
            x_hat = method(b)
            seconds += time.perf_counter() - t0
            if not bool(torch.isfinite(x_hat).all()):
                raise FloatingPointError("a method returned non-finite values")
            out["psnr"] += psnr(x_hat, b.target, peak).tolist()
            out["ssim"] += ssim(x_hat, b.target, peak).tolist()
            if keep_first and i == 0:
                out["first"] = x_hat.detach().cpu()
    out["sec_per_image"] = seconds / max(len(batches), 1)
    return out


def score(method: Method, batches: Sequence[TaskBatch], peak: float | str = 1.0) -> list[float]:
    """PSNR (dB, data range ``peak``) of ``method`` per image (:func:`evaluate_method`)."""
    return evaluate_method(method, batches, peak)["psnr"]


def summarize(values: Sequence[float]) -> str:
    m, s = mean_std(values)
    return f"{m:6.2f} ± {s:4.2f}"


def load_eval_images(name: str, data_root: str | None = None) -> list[Tensor]:
    """Evaluation images by name: ``set3c`` (RGB, colour folded into the batch), ``demo``
    (scikit-image's held-out pictures) or a folder path (grayscale; ``./set3c`` for a folder
    of either name)."""
    from pathlib import Path

    from metaprior.data import demo_images, read_images, set3c

    if name == "set3c":
        return set3c(data_root)
    if name == "demo":
        return demo_images("test")
    if not Path(name).is_dir():
        raise ValueError(f"--images {name}: no such folder (or give set3c or demo)")
    return read_images(name, color=False)


def task_table(model, params, task_names, images, seed: int = 0, adapt=None) -> list[dict]:
    """PSNR (dB, at each task's :attr:`~metaprior.tasks.Task.peak`) of the pseudo-inverse and of
    ``model`` with ``params`` for each task.

    With ``adapt`` (an :class:`metaprior.adapt.AdaptConfig`), also the PSNR after solving the
    inner problem on each test image's own batch (the "inner" model of the paper's Fig. 3; with a
    supervised loss this uses the image's ground truth).
    """
    from metaprior.meta.problem import reconstruct
    from metaprior.tasks import get_task

    rows = []
    for name in task_names:
        task = get_task(name)
        batches = task_batches(task, images, seed=seed)
        row = {"task": name, "pseudo_inverse": score(pseudo_inverse, batches, task.peak),
               "model": score(lambda b: reconstruct(model, params, b), batches, task.peak)}
        if adapt is not None:
            row["adapted"] = [v for b in batches for v in finetune_and_score(
                model, params, lambda step, b=b: b, adapt, [b], keep=(),
                peak=task.peak)["records"][adapt.steps]["psnr"]]
        rows.append(row)
    return rows


def finetune_and_score(model, theta, next_batch: Callable[[int], TaskBatch], rule,
                       batches: Sequence[TaskBatch], keep: Sequence[int] = (0,),
                       peak: float | str = 1.0, keep_first: Sequence[int] = ()) -> dict:
    """Fine-tune from θ with the step rule ``rule`` (an :class:`metaprior.adapt.AdaptConfig`)
    on ``next_batch(step)`` and score ``batches`` after each number of steps in ``keep`` (those
    up to ``rule.steps``, and after ``rule.steps``): the one fine-tune-then-score loop of every
    benchmark and reproduction.

    Args:
        peak: the metrics' data range (a task's :attr:`~metaprior.tasks.Task.peak`).
        keep_first: steps after which the first batch's output is also kept (``"first"`` in
            that step's record; e.g. for figures).

    Returns:
        ``{"psnr": {n: mean PSNR}, "records": {n: per-image record}, "seconds": fine-tuning
        wall time, "s_per_step": seconds a step, "losses": the loss of every step, "params":
        the parameters after ``rule.steps``}``.
    """
    from metaprior.adapt import fine_tune
    from metaprior.meta.problem import reconstruct

    if any(b.target is None for b in batches):
        raise ValueError("finetune_and_score: batches must hold ground truth to be scored "
                         "(these hold measurements alone): score them with label_free_loss")
    if any(int(s) < 0 for s in keep):
        raise ValueError(f"finetune_and_score: keep must hold steps >= 0, got {sorted(keep)}")
    keep = sorted({int(s) for s in keep if s <= rule.steps} | {rule.steps})
    t0 = time.perf_counter()
    result = fine_tune(model, theta, next_batch, rule, keep=keep)
    seconds = time.perf_counter() - t0
    records = {n: evaluate_method(lambda b, phi=result.snapshots[n]: reconstruct(model, phi, b),
                                  batches, peak, keep_first=n in keep_first) for n in keep}
    return {"psnr": {n: mean_std(r["psnr"])[0] for n, r in records.items()},
            "records": records, "seconds": seconds,
            "s_per_step": seconds / rule.steps if rule.steps else 0.0,
            "losses": result.losses, "params": result.params}


def label_free_loss(model, params, batches: Sequence[TaskBatch],
                    kind: str = "robust-equivariant") -> float:
    r"""The mean label-free loss of ``model`` with ``params`` on ``batches`` (their ground
    truth is not read): by default the robust equivariant loss, SURE plus equivariant imaging
    on noisy re-measurements, which is the equivariant loss on noise-free batches
    (:func:`metaprior.meta.problem.inner_loss`, its first draw). On measurements held out from
    adaptation it estimates, without ground truth, how well ``params`` reconstruct the
    operator's data: SURE does not reward fitting the noise, and the equivariant term sees
    part of the null space. Lower is better."""
    from metaprior.losses import LOSSES
    from metaprior.meta.problem import inner_loss

    label_free = [k for k in LOSSES if k != "supervised"]
    if kind not in label_free:
        raise ValueError(f"label_free_loss: kind must be one of {', '.join(label_free)} (no "
                         f"ground truth), got {kind!r}")
    if not batches:
        raise ValueError("label_free_loss: batches is empty: give held-out measurements")
    with torch.no_grad():
        values = [float(inner_loss(model, params, params, b, kind, 0.0)) for b in batches]
    return sum(values) / len(values)


def geometric_search(evaluate: Callable[[float], float | None], grid: Sequence[float],
                     extend: int = 4) -> tuple[float, dict[float, float | None]]:
    """Maximise ``evaluate`` over ``grid``, extending the grid past an edge choice.

    A choice on an end of the grid says the optimum may lie beyond it, so the grid is extended
    there, geometrically with the ratio of its two outermost values, up to ``extend`` new values
    a side, until the best value is interior. ``evaluate`` may return ``None`` (e.g. diverged):
    such a value is never chosen. Whether the choice still ends on an edge can be read from the
    returned grid (``best in (min(scores), max(scores))``).

    Returns:
        the best value and ``{value: score}`` for every value tried, in increasing order.

    Raises:
        FloatingPointError: ``evaluate`` gave ``None`` for every value of the grid.
    """
    values = sorted(set(float(v) for v in grid))
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"grid must hold positive values, got {list(grid)}")
    scores = {v: evaluate(v) for v in values}
    added = {"low": 0, "high": 0}
    while True:
        valid = [v for v in scores if scores[v] is not None]
        if not valid:
            raise FloatingPointError(f"no finite score at any value of {sorted(scores)}")
        best = max(valid, key=lambda v: scores[v])
        ordered = sorted(scores)
        side = "low" if best == ordered[0] else "high" if best == ordered[-1] else None
        if side is None or added[side] >= extend or len(ordered) < 2:
            break
        # one more geometric step outwards (x·x, not x**2: the caches hold scores by the
        # value's string, so the arithmetic that makes it is part of the key)
        new = (ordered[0] * ordered[0] / ordered[1] if side == "low"
               else ordered[-1] * ordered[-1] / ordered[-2])
        scores[new] = evaluate(new)
        added[side] += 1
    return best, dict(sorted(scores.items()))


def search_lr(model, theta, stream: Callable[[], Callable[[int], TaskBatch]], rule,
              batches: Sequence[TaskBatch], lrs: Sequence[float], extend: int = 0,
              peak: float | str = 1.0, keep: Sequence[int] = (), scores: dict | None = None,
              on_run: Callable[[float, dict], None] | None = None, criterion: str = "psnr"
              ) -> tuple[float, dict[float, float | None]]:
    """The learning rate of ``lrs`` whose ``rule.steps``-step fine-tuning from θ (the step rule
    ``rule`` at that lr, on a fresh ``stream()`` each time) scores best on ``batches``; past an
    edge choice the grid extends by up to ``extend`` values a side
    (:func:`geometric_search`). An lr whose fine-tuning diverges is never
    chosen: the one lr search of the package.

    Args:
        batches: held out from ``stream``. With ``criterion="psnr"`` they hold ground truth
            (e.g. pictures of your own put through the operator, as the classical solvers'
            parameters are grid-searched) and the highest mean PSNR wins; with
            ``criterion="label-free"`` they are measurements alone and the lowest
            :func:`label_free_loss` wins.
        keep: also score after these numbers of steps (in the runs ``on_run`` receives).
        scores: ``{str(lr): score or None}`` of runs already done, reused and filled (a
            cache: a rerun runs only the values it lacks).
        on_run: called as ``on_run(lr, run)`` with each run of :func:`finetune_and_score`
            (``None`` for a run that diverged).

    Returns:
        the best lr and ``{lr: PSNR (or label-free loss) after rule.steps, None where it
        diverged}`` for every lr tried, in increasing order.
    """
    from dataclasses import replace

    if criterion not in ("psnr", "label-free"):
        raise ValueError(f"criterion must be 'psnr' or 'label-free', got {criterion!r}")
    if not batches:
        raise ValueError("search_lr: batches is empty: give held-out batches to score")
    label_free = criterion == "label-free"
    scores = {} if scores is None else scores

    def final_score(lr: float) -> float | None:
        if str(lr) not in scores:
            try:
                run = finetune_and_score(model, theta, stream(), replace(rule, lr=lr),
                                         () if label_free else batches, keep=keep, peak=peak)
                value = (label_free_loss(model, run["params"], batches) if label_free
                         else run["psnr"][rule.steps])
                scores[str(lr)] = value if math.isfinite(value) else None
            except FloatingPointError:
                run = scores[str(lr)] = None
            if on_run is not None:
                on_run(lr, run)
        value = scores[str(lr)]
        return -value if label_free and value is not None else value

    best, tried = geometric_search(final_score, lrs, extend)
    return best, {lr: scores[str(lr)] for lr in tried}
