"""The main job on the embedded demo images (scikit-image's shipped pictures, no data root):

1. meta-train a small PDNet on the four training tasks (denoise, TV, deblur, inpaint) with
   patches of 6 pictures in the inner loss and 2 others in the outer loss;
2. adapt it to super-resolution ×2 — a task it never saw — in 20 Adam steps *without ground
   truth* (measurement-consistency loss ½‖A f(y) − y‖² plus λ/2‖φ − θ‖²);
3. print PSNR on 3 held-out pictures: zero filling, the meta-model, the adapted model, and for
   contrast the same 20 steps *with* ground truth (supervised loss).

Fine-tuning uses the meta-training inner learning rate and λ, as the paper prescribes (no
ground truth means nothing to tune them on).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from metaprior.adapt import AdaptConfig, parameters_of
from metaprior.checkpoint import load_model, save_model
from metaprior.data import PatchSampler, demo_images
from metaprior.evaluate import finetune_and_score, score, summarize, task_batches
from metaprior.meta.config import MetaConfig
from metaprior.models import PDNetConfig
from metaprior.outputs import RunFolderError, holds_run
from metaprior.tasks import get_task
from metaprior.train import DataConfig, OptimConfig, RunConfig, TrainConfig, meta_train


@dataclass(frozen=True)
class DemoConfig:
    depth: int = 8  # PDNet layers
    meta_steps: int = 300  # outer steps of meta-training
    meta_lr: float = 5e-3  # outer Adam learning rate
    inner_lr: float = 3e-4  # a small inner step makes θ a prior (docs/meta-training.md)
    inner_loss: str = "unsupervised"  # meta-train for adaptation without ground truth
    patch_size: int = 32  # meta-training patch side
    batch: int = 4  # inner and outer batch of meta-training
    adapt_task: str = "sr2"  # the unseen task adapted to
    adapt_steps: int = 20  # unsupervised adaptation steps
    adapt_patch_size: int = 64  # adaptation patch side
    prox_lambda: float = 1e-2  # λ of λ/2‖φ − θ‖² during adaptation
    seed: int = 0  # random seed
    out: str = "runs/demo"  # output folder
    overwrite: bool = False  # replace an earlier demo's output in --out (refused without it)


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
    """The files of an earlier demo in ``out`` (its meta-training run, its adapted models)."""
    out = Path(out)
    run = out / "meta"
    found = [run] if holds_run(run) else []
    return found + sorted(out.glob("adapted_*.safetensors"))


def run_demo(config: DemoConfig, device: str = "cpu", log=print, progress: bool = True) -> dict:
    """Run the demo into ``config.out``. An earlier demo there is replaced only with
    ``config.overwrite``; other files in the folder are never touched."""
    t0 = time.perf_counter()
    earlier = earlier_demo(config.out)
    if earlier and not config.overwrite:
        raise RunFolderError(f"--out {config.out} holds an earlier demo ({earlier[0]}): replace "
                             f"it with --overwrite or choose another --out")
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
        """A fresh, seeded stream of SR patches (the same one for both fine-tunings)."""
        sampler = PatchSampler(train_images, config.adapt_patch_size, seed=config.seed)
        g = torch.Generator().manual_seed(config.seed + 1)
        return lambda step: task.sample(sampler.sample(8).to(device), g)

    adapt = AdaptConfig(steps=config.adapt_steps, lr=config.inner_lr, loss="unsupervised",
                        prox_lambda=config.prox_lambda)
    log(f"2/3 adapting to '{task.name}' without ground truth ({adapt.steps} Adam steps) ...")
    test = [im.to(device) for im in demo_images("test")]
    batches_test = task_batches(task, test, seed=config.seed)
    result = finetune_and_score(model, theta, batches(), adapt, batches_test, keep=(0,))
    save_model(Path(config.out) / f"adapted_{task.name}.safetensors", model, result["params"])
    supervised = finetune_and_score(model, theta, batches(), replace(adapt, loss="supervised"),
                                    batches_test, keep=())
    rows = {
        "zero filling (A^T y)": score(lambda b: b.physics.A_adjoint(b.y), batches_test),
        "meta-model": result["records"][0]["psnr"],
        f"adapted, {adapt.steps} unsupervised steps": result["records"][adapt.steps]["psnr"],
        f"(with ground truth: {adapt.steps} supervised)":
            supervised["records"][adapt.steps]["psnr"],
    }
    log(f"3/3 {task.name} on {len(test)} held-out pictures (camera, moon, clock; 128x128), "
        f"PSNR (dB, peak 1):")
    for name, values in rows.items():
        log(f"    {name:38s} {summarize(values)}")
    log(f"meta-training {t1 - t0:.0f} s, adaptation + evaluation "
        f"{time.perf_counter() - t1:.0f} s; models in {config.out}/")
    return rows
