"""The main job on pictures shipped inside a dependency (scikit-image's; no data root):

1. load the recommended shipped model (``hqs-dpir24-dihedral``: 24 unrolled HQS iterations
   with the operator's exact data prox and a pretrained FFDNet prior);
2. measure three held-out pictures with an operator (default ``sr2``: plain ×2 decimation,
   no anti-alias filter);
3. adapt it to those measurements alone, *without ground truth*, with the label-free rule
   the model recommends (its metadata ``adapt``: the equivariant loss, the schedule alone),
   its steps taken on a copy of 8 iterations (``coarse_iterations``; 0: on the model itself);
4. print PSNR against the ground truth (used for scoring only) of the zero-filled adjoint
   :math:`A^\\top y`, total variation (its weight grid-searched on two *other* pictures), the
   model before and after adaptation, and write a figure of all of them.

With ``meta_train`` (``--meta-train N``) the model is first meta-trained for N first-order
MAML steps across the five operator families on scikit-image's other pictures, its inner step
the label-free rule above (what it holds fixed held fixed), and that model is adapted instead:
the whole product in one command, at toy scale. Real runs use ``metaprior meta-train``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from metaprior.adapt import AdaptConfig, parameters_of
from metaprior.checkpoint import load_model, save_model
from metaprior.commands.images import figure
from metaprior.data import demo_images
from metaprior.evaluate import finetune_and_score, summarize, task_batches
from metaprior.meta.problem import reconstruct
from metaprior.outputs import RunFolderError
from metaprior.pretrained import RECOMMENDED
from metaprior.tasks import get_task


@dataclass(frozen=True)
class DemoConfig:
    model: str = RECOMMENDED  # the shipped model (or a model file) adapted
    adapt_task: str = "sr2"  # the unseen operator adapted to
    adapt_steps: int = 10  # adaptation steps without ground truth
    loss: str = ""  # ground-truth-free loss ("": the model's own recommendation)
    lr: float = 0.0  # adaptation lr (0: the model's own recommendation)
    size: int = 128  # side of the pictures
    seed: int = 0  # random seed
    out: str = "runs/demo"  # output folder
    overwrite: bool = False  # replace an earlier demo's output in --out (refused without it)
    meta_train: int = 0  # first meta-train the model this many steps (0: adapt it as shipped)
    # the steps on an 8-iteration copy of the 24 (about 3x faster, the same PSNR here); a
    # model with no more iterations, or not unrolled (PDNet), is adapted itself
    coarse_iterations: int = 8  # adapt an N-iteration copy of an unrolled model (0: the model)


def earlier_demo(out: str | Path) -> list[Path]:
    """The files of an earlier demo in ``out`` (adapted models, figures)."""
    out = Path(out)
    return sorted([*out.glob("adapted_*.safetensors"), *out.glob("demo_*.png"),
                   *out.glob("meta-train/config.json")])


def run_demo(config: DemoConfig, device: str = "cpu", log=print) -> dict:
    """Run the demo into ``config.out``. An earlier demo there is replaced only with
    ``config.overwrite``; other files in the folder are never touched."""
    earlier = earlier_demo(config.out)
    if earlier and not config.overwrite:
        raise RunFolderError(f"--out {config.out} holds an earlier demo ({earlier[0]}): replace "
                             f"it with --overwrite or choose another --out")
    if not 16 <= config.size <= 1024:
        raise ValueError(f"--size must be in [16, 1024], got {config.size}")
    if config.adapt_steps < 1 or config.meta_train < 0 or config.coarse_iterations < 0:
        raise ValueError(f"--adapt-steps must be >= 1, --meta-train and --coarse-iterations "
                         f">= 0, got {config.adapt_steps}, {config.meta_train}, "
                         f"{config.coarse_iterations}")
    factor = get_task(config.adapt_task).params.get("factor", 1)
    if config.size % factor:
        raise ValueError(f"--size {config.size} is not a multiple of --adapt-task "
                         f"{config.adapt_task}'s factor {factor}: pass --size "
                         f"{config.size - config.size % factor}")
    return _adapt_demo(config, device, log)


def _tv(task, images: list[Tensor], seed: int):
    """Total variation with its weight grid-searched on two training pictures."""
    from metaprior import baselines as bl

    tuning = task_batches(task, images, seed=seed + 7)
    weight, _ = bl.grid_search(lambda w: bl.method("tv", w), bl.GRIDS["tv"], tuning)
    return weight, bl.method("tv", weight)


def _meta_train(config: DemoConfig, rule: AdaptConfig, model, architecture: str, device: str,
                log) -> Path:
    """``config.meta_train`` first-order MAML steps from ``model`` (``config.model``, loaded;
    its ``architecture``) across the operator
    families on scikit-image's training pictures (32² patches), the inner step one step of
    ``rule``'s label-free loss at its lr, the outer loss supervised, what ``rule`` holds fixed
    held fixed in both loops; returns the model file."""
    from metaprior.families import FAMILY_TASKS
    from metaprior.meta.config import MetaConfig
    from metaprior.train import meta_train
    from metaprior.train_config import (
        DataConfig,
        NetworkConfig,
        OptimConfig,
        RunConfig,
        TrainConfig,
    )

    families = tuple(task.name for task in FAMILY_TASKS)
    section = "hqs" if architecture == "hqs" else "model"
    train = TrainConfig(**{section: model.config},
                        network=NetworkConfig(architecture=architecture),
                        meta=MetaConfig(tasks=families, tasks_per_step=2,
                                        objective="bilevel", hypergradient="first_order",
                                        inner_loss=rule.loss, inner_lr=rule.lr,
                                        frozen=rule.frozen, workers=1),
                        data=DataConfig(dataset="demo", patch_size=32, inner_batch=4,
                                        outer_batch=4, val_batch=4),
                        optim=OptimConfig(steps=config.meta_train, lr=3e-3, schedule="constant"),
                        run=RunConfig(out=str(Path(config.out) / "meta-train"), seed=config.seed,
                                      device=device, val_every=0, init_from=config.model))
    log(f"0/3 meta-training '{config.model}' {config.meta_train} first-order steps across "
        f"{', '.join(families)} on scikit-image's training pictures ...")
    return meta_train(train, log=lambda *_: None, progress=False, overwrite=config.overwrite)


def _adapt_demo(config: DemoConfig, device: str, log) -> dict:
    t0 = time.perf_counter()
    model, meta = load_model(config.model, device)
    own = model.config.iterations if hasattr(model, "resample") else 0  # 0: not unrolled
    coarse = config.coarse_iterations if config.coarse_iterations < own else 0
    rule = AdaptConfig.from_model(meta, steps=config.adapt_steps, loss=config.loss or None,
                                  lr=config.lr or None, coarse_iterations=coarse)
    if rule.loss == "supervised" and config.loss:
        raise ValueError("--loss supervised: the demo adapts without ground truth: use "
                         "equivariant or unsupervised")
    if rule.loss == "supervised":
        raise ValueError(f"--model {config.model} recommends supervised adaptation, and the "
                         f"demo adapts without ground truth: pass --loss equivariant or "
                         f"unsupervised")
    name = config.model
    if config.meta_train:
        name = str(_meta_train(config, rule, model, meta["architecture"], device, log))
        model, _ = load_model(name, device)
    theta = parameters_of(model)
    task = get_task(config.adapt_task)
    test = [im.to(device) for im in demo_images("test", size=config.size)]
    batch = task.sample(torch.stack(test), torch.Generator().manual_seed(config.seed))
    measured = replace(batch, target=None, x=None)  # the measurements alone
    log(f"1/3 '{name}' ({type(model).__name__}, {sum(t.numel() for t in theta.values()):,}"
        f" parameters) on '{task.name}'; measuring 3 held-out pictures (camera, moon, clock; "
        f"{config.size}x{config.size})")
    weight, tv = _tv(task, [im.to(device) for im in demo_images("train", size=config.size)[:2]],
                     config.seed)
    fixed = f", {'/'.join(rule.frozen)} held fixed" if rule.frozen else ""
    if rule.coarse_iterations:
        fixed += f", on a copy of {rule.coarse_iterations} iterations"
    log(f"2/3 adapting to their measurements alone, no ground truth ({rule.steps} {rule.loss} "
        f"{rule.optimizer} steps, lr {rule.lr:g}{fixed}) ...")
    run = finetune_and_score(model, theta, lambda step: measured, rule, [batch])
    t_adapt, adapted = run["seconds"], run["params"]
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    save_model(out / f"adapted_{task.name}.safetensors", model, adapted,
               metadata={"adapted_to": task.name, "adapt_config": rule.__dict__})
    with torch.no_grad():
        outputs = {
            "A^T y": batch.physics.A_adjoint(batch.y),
            f"TV ({weight:g})": tv(batch),
            "model, before": reconstruct(model, theta, batch),
            f"after {rule.steps} steps": reconstruct(model, adapted, batch),
        }
    truth = torch.stack(test)
    rows = {name: [float(v) for v in _psnr(x_hat, truth)] for name, x_hat in outputs.items()}
    log(f"3/3 {task.name}, PSNR (dB, peak 1) against the ground truth:")
    labels = {"A^T y": "zero filling (A^T y)", f"TV ({weight:g})": f"TV (weight {weight:g})",
              "model, before": "model before adaptation",
              f"after {rule.steps} steps": f"adapted, {rule.steps} steps, no ground truth"}
    for name, values in rows.items():
        log(f"    {labels[name]:38s} {summarize(values)}")
    y = batch.y if not batch.y.is_complex() else batch.y.abs()
    columns = {"measurement y": y, **outputs, "ground truth": truth}
    path = figure(columns, rows, out / f"demo_{task.name}.png")
    log(f"adaptation {t_adapt:.0f} s, in all {time.perf_counter() - t0:.0f} s; figure: {path}")
    return rows


def _psnr(x_hat: Tensor, x: Tensor) -> Tensor:
    from metaprior.metrics import psnr

    return psnr(x_hat.clamp(0, 1), x)
