"""The main job on the embedded demo images (scikit-image's shipped pictures, no data root).

Trains a depth-10 PDNet briefly on one task, then reconstructs the held-out demo images for
every registered task and prints a PSNR table against the pseudo-inverse.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from metaprior.adapt import AdaptConfig, fine_tune, load_into, parameters_of
from metaprior.data import PatchSampler, demo_images
from metaprior.evaluate import pseudo_inverse, score, summarize, task_batches
from metaprior.models import PDNet, PDNetConfig
from metaprior.tasks import available_tasks, get_task


@dataclass(frozen=True)
class DemoConfig:
    train_task: str = "inpaint"
    depth: int = 10
    steps: int = 150
    lr: float = 1e-2
    batch_size: int = 8
    patch_size: int = 64
    image_size: int = 128
    seed: int = 0


def run_demo(config: DemoConfig, device: str = "cpu", log=print) -> list[dict]:
    t0 = time.perf_counter()
    torch.manual_seed(config.seed)  # parameter initialisation only
    model = PDNet(PDNetConfig(depth=config.depth)).to(device)
    sampler = PatchSampler(demo_images("train", config.image_size), config.patch_size,
                           seed=config.seed)
    task = get_task(config.train_task)
    g = torch.Generator().manual_seed(config.seed + 1)

    def next_batch(step):
        return task.sample(sampler.sample(config.batch_size).to(device), g)

    log(f"training PDNet (depth {config.depth}, {model.num_params()} parameters) on "
        f"'{config.train_task}' for {config.steps} supervised Adam steps ...")
    result = fine_tune(model, parameters_of(model), next_batch,
                       AdaptConfig(steps=config.steps, lr=config.lr, loss="supervised"))
    load_into(model, result.params)
    model.eval()
    test = [im.to(device) for im in demo_images("test", config.image_size)]
    rows = []
    for name in available_tasks():
        batches = task_batches(get_task(name), test, seed=config.seed)
        rows.append({
            "task": name,
            "pseudo_inverse": score(pseudo_inverse, batches),
            "pdnet": score(lambda b: model(b.y, b.physics), batches),
        })
    log(f"{'task':10s} {'A^+ y (dB)':>15s} {'PDNet (dB)':>15s}")
    for r in rows:
        log(f"{r['task']:10s} {summarize(r['pseudo_inverse']):>15s} {summarize(r['pdnet']):>15s}")
    log(f"(PSNR mean ± std over {len(test)} held-out demo images, peak 1; "
        f"{time.perf_counter() - t0:.0f} s)")
    return rows
