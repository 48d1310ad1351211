"""The main job on pictures shipped inside a dependency (scikit-image's; no data root):

1. load the recommended shipped model (``hqs-dpir24-dihedral``: 24 unrolled HQS iterations
   with the operator's exact data prox and a pretrained FFDNet prior);
2. measure three held-out pictures with an operator (default ``sr2``: plain ×2 decimation,
   no anti-alias filter);
3. adapt it to those measurements alone, *without ground truth*, with the label-free rule
   the model recommends (its metadata ``adapt``: the equivariant loss, the schedule alone);
4. print PSNR against the ground truth (used for scoring only) of the zero-filled adjoint
   :math:`A^\\top y`, total variation (its weight grid-searched on two *other* pictures), the
   model before and after adaptation, and write a figure of all of them.

``--meta-train`` runs the short meta-training job instead: a small PDNet meta-trained on the
four training tasks (denoise, TV, deblur, inpaint), then adapted to the same operator with and
without ground truth, with its own figure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from metaprior.adapt import AdaptConfig, parameters_of
from metaprior.checkpoint import load_model, save_model, write_bytes_atomic
from metaprior.config import field_comments
from metaprior.data import PatchSampler, demo_images
from metaprior.evaluate import finetune_and_score, score, summarize, task_batches
from metaprior.meta.config import MetaConfig
from metaprior.meta.problem import reconstruct
from metaprior.models import PDNetConfig
from metaprior.outputs import RunFolderError, holds_run
from metaprior.pretrained import RECOMMENDED
from metaprior.tasks import get_task
from metaprior.train import DataConfig, OptimConfig, RunConfig, TrainConfig, meta_train


@dataclass(frozen=True)
class DemoConfig:
    model: str = RECOMMENDED  # the shipped model (or a model file) adapted
    adapt_task: str = "sr2"  # the unseen operator adapted to
    adapt_steps: int = 10  # adaptation steps without ground truth
    loss: str = ""  # ground-truth-free loss ("": the model's own recommendation)
    lr: float = 0.0  # adaptation lr (0: the model's own recommendation)
    size: int = 128  # side of the pictures
    meta_train: bool = False  # meta-train a small PDNet first, then adapt it (the short job)
    depth: int = 8  # --meta-train: PDNet layers
    meta_steps: int = 300  # --meta-train: outer steps of meta-training
    meta_lr: float = 5e-3  # --meta-train: outer Adam learning rate
    inner_lr: float = 3e-4  # --meta-train: a small inner step makes θ a prior
    inner_loss: str = "unsupervised"  # --meta-train: the inner loss
    patch_size: int = 32  # --meta-train: meta-training patch side
    batch: int = 4  # --meta-train: inner and outer batch of meta-training
    adapt_patch_size: int = 64  # --meta-train: adaptation patch side
    prox_lambda: float = 1e-2  # --meta-train: λ of λ/2‖φ − θ‖² during adaptation
    seed: int = 0  # random seed
    out: str = "runs/demo"  # output folder
    overwrite: bool = False  # replace an earlier demo's output in --out (refused without it)


#: Options of the demo that only ``--meta-train`` uses (their comments start so).
META_TRAIN_ONLY = tuple(name for name, text in field_comments(DemoConfig).items()
                        if text.startswith("--meta-train:"))


def train_config(config: DemoConfig, device: str) -> TrainConfig:
    return TrainConfig(
        model=PDNetConfig(depth=config.depth),
        meta=MetaConfig(inner_loss=config.inner_loss, inner_lr=config.inner_lr,
                        prox_lambda=config.prox_lambda),
        data=DataConfig(dataset="demo", patch_size=config.patch_size, inner_batch=config.batch,
                        outer_batch=config.batch, val_batch=config.batch),
        optim=OptimConfig(steps=config.meta_steps, lr=config.meta_lr),
        run=RunConfig(out=str(Path(config.out) / "meta"), seed=config.seed, device=device,
                      val_every=0, ckpt_every=config.meta_steps),
    )


def earlier_demo(out: str | Path) -> list[Path]:
    """The files of an earlier demo in ``out`` (its meta-training run, adapted models,
    figures)."""
    out = Path(out)
    run = out / "meta"
    found = [run] if holds_run(run) else []
    return found + sorted([*out.glob("adapted_*.safetensors"), *out.glob("demo_*.png")])


def figure(columns: dict[str, Tensor], scores: dict[str, list[float]], path: Path,
           tile: int = 160) -> Path:
    """A grid of images, one row per picture and one column per method, each tile labelled
    with the method (header) and its PSNR; written atomically as PNG. ``columns`` maps a
    label to (N, 1, H, W) images in [0, 1] (any H, W: tiles are resized, nearest)."""
    import io

    from PIL import Image, ImageDraw

    n = next(iter(columns.values())).shape[0]
    head, foot = 18, 16
    canvas = Image.new("L", (tile * len(columns), head + n * (tile + foot)), 255)
    draw = ImageDraw.Draw(canvas)
    for j, (label, images) in enumerate(columns.items()):
        draw.text((j * tile + 4, 3), label, fill=0)
        for i in range(n):
            arr = (images[i, 0].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
            im = Image.fromarray(arr).resize((tile, tile), Image.NEAREST)
            top = head + i * (tile + foot)
            canvas.paste(im, (j * tile, top))
            if label in scores:
                draw.text((j * tile + 4, top + tile + 2), f"{scores[label][i]:.2f} dB", fill=0)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())
    return path


def run_demo(config: DemoConfig, device: str = "cpu", log=print, progress: bool = True) -> dict:
    """Run the demo into ``config.out``. An earlier demo there is replaced only with
    ``config.overwrite``; other files in the folder are never touched."""
    earlier = earlier_demo(config.out)
    if earlier and not config.overwrite:
        raise RunFolderError(f"--out {config.out} holds an earlier demo ({earlier[0]}): replace "
                             f"it with --overwrite or choose another --out")
    if config.adapt_steps < 1 or not 16 <= config.size <= 1024:
        raise ValueError(f"--adapt-steps must be >= 1 and --size must be in [16, 1024], got "
                         f"{config.adapt_steps}, {config.size}")
    if config.meta_train:
        return _meta_train_demo(config, device, log, progress)
    return _adapt_demo(config, device, log)


def _tv(task, images: list[Tensor], seed: int):
    """Total variation with its weight grid-searched on two training pictures."""
    from metaprior import baselines as bl

    tuning = task_batches(task, images, seed=seed + 7)
    weight, _ = bl.grid_search(lambda w: bl.method("tv", w), bl.GRIDS["tv"], tuning)
    return weight, bl.method("tv", weight)


def _adapt_demo(config: DemoConfig, device: str, log) -> dict:
    t0 = time.perf_counter()
    model, meta = load_model(config.model, device)
    theta = parameters_of(model)
    rule = AdaptConfig.from_model(meta, steps=config.adapt_steps, loss=config.loss or None,
                                  lr=config.lr or None)
    if rule.loss == "supervised":
        raise ValueError("--loss: the demo adapts without ground truth: use equivariant or "
                         "unsupervised")
    task = get_task(config.adapt_task)
    test = [im.to(device) for im in demo_images("test", size=config.size)]
    batch = task.sample(torch.stack(test), torch.Generator().manual_seed(config.seed))
    measured = replace(batch, target=None, x=None)  # the measurements alone
    log(f"1/3 '{config.model}' ({type(model).__name__}, {sum(t.numel() for t in theta.values()):,}"
        f" parameters) on '{task.name}'; measuring 3 held-out pictures (camera, moon, clock; "
        f"{config.size}x{config.size})")
    weight, tv = _tv(task, [im.to(device) for im in demo_images("train", size=config.size)[:2]],
                     config.seed)
    fixed = f", {'/'.join(rule.frozen)} held fixed" if rule.frozen else ""
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


def _meta_train_demo(config: DemoConfig, device: str, log, progress: bool) -> dict:
    t0 = time.perf_counter()
    cfg = train_config(config, device)
    log(f"1/3 meta-training a depth-{config.depth} PDNet on {', '.join(cfg.meta.tasks)} "
        f"({config.meta_steps} outer steps, second-order MAML, 1 {cfg.meta.inner_loss} inner "
        f"Adam step) ...")
    # with --overwrite, this run replaces the previous one in its folder
    model_path = meta_train(cfg, log=lambda *_: None, progress=progress, overwrite=True)
    model, _ = load_model(model_path, device)
    theta = parameters_of(model)
    t1 = time.perf_counter()

    task = get_task(config.adapt_task)
    train_images = demo_images("train")

    def batches():
        """A fresh, seeded stream of patches (the same one for both fine-tunings)."""
        sampler = PatchSampler(train_images, config.adapt_patch_size, seed=config.seed)
        g = torch.Generator().manual_seed(config.seed + 1)
        return lambda step: task.sample(sampler.sample(8).to(device), g)

    adapt = AdaptConfig(steps=config.adapt_steps, lr=config.inner_lr, loss="unsupervised",
                        prox_lambda=config.prox_lambda)
    log(f"2/3 adapting to '{task.name}' without ground truth ({adapt.steps} Adam steps) ...")
    test = [im.to(device) for im in demo_images("test")]
    tests = task_batches(task, test, seed=config.seed)
    unsup = finetune_and_score(model, theta, batches(), adapt, tests)
    save_model(Path(config.out) / f"adapted_{task.name}.safetensors", model, unsup["params"])
    sup = finetune_and_score(model, theta, batches(), replace(adapt, loss="supervised"), tests)
    rows = {
        "zero filling (A^T y)": score(lambda b: b.physics.A_adjoint(b.y), tests),
        "meta-model": unsup["records"][0]["psnr"],
        f"adapted, {adapt.steps} unsupervised steps": unsup["records"][adapt.steps]["psnr"],
        f"(with ground truth: {adapt.steps} supervised)": sup["records"][adapt.steps]["psnr"],
    }
    log(f"3/3 {task.name} on {len(test)} held-out pictures (camera, moon, clock; 128x128), "
        f"PSNR (dB, peak 1):")
    for name, values in rows.items():
        log(f"    {name:38s} {summarize(values)}")
    with torch.no_grad():
        columns = {"measurement y": [b.y.abs() if b.y.is_complex() else b.y for b in tests],
                   "A^T y": [b.physics.A_adjoint(b.y) for b in tests],
                   "meta-model": [reconstruct(model, theta, b) for b in tests],
                   "unsupervised": [reconstruct(model, unsup["params"], b) for b in tests],
                   "supervised": [reconstruct(model, sup["params"], b) for b in tests],
                   "ground truth": [b.x for b in tests]}
    scores = dict(zip(["A^T y", "meta-model", "unsupervised", "supervised"],
                      rows.values(), strict=True))
    path = figure({k: torch.cat(v) for k, v in columns.items()}, scores,
                  Path(config.out) / f"demo_{task.name}.png")
    log(f"meta-training {t1 - t0:.0f} s, adaptation + evaluation "
        f"{time.perf_counter() - t1:.0f} s; models in {config.out}/; figure: {path}")
    return rows
