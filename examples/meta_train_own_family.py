"""Meta-train on a family of operators of your own, then adapt to a member it never saw.

The family: motion-like blurs, a horizontal box of random length L, followed by additive noise.
L is drawn per batch from {3, 5, 7}. It is registered as a task through a factory
``(shape, generator, device) -> physics``, so every batch gets its own operator at its own
image size. The meta-model is trained on it next to two built-in tasks (denoising and
inpainting) on scikit-image's pictures, no data download. It is then adapted without ground
truth to a blur of length 9, which is outside the training family.

    python examples/meta_train_own_family.py [--steps 200] [--depth 8] [--out runs/family]
        [--overwrite]
"""

from __future__ import annotations

from dataclasses import replace

import deepinv as dinv
import torch

import metaprior as mp
from metaprior.cli import OneLineParser, one_line_errors
from metaprior.data import demo_images


def horizontal_blur(length: int, shape, device) -> dinv.physics.LinearPhysics:
    """A circular horizontal box blur of ``length`` pixels (deepinv's FFT blur)."""
    kernel = torch.zeros(1, 1, 1, length, device=device)
    kernel[..., :] = 1 / length
    return dinv.physics.BlurFFT(img_size=tuple(shape[1:]), filter=kernel, device=device)


def blur_family(shape, generator, device):
    """A member of the family, drawn from ``generator``: length 3, 5 or 7."""
    length = (3, 5, 7)[int(torch.randint(3, (1,), generator=generator))]
    return horizontal_blur(length, shape, device)


FAMILY = mp.register_task(mp.task_from_physics("hblur-family", blur_family, noise_sigma=0.01),
                          overwrite=True)
UNSEEN = mp.register_task(mp.task_from_physics(
    "hblur-9", lambda shape, g, device: horizontal_blur(9, shape, device), noise_sigma=0.01),
    overwrite=True)


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200, help="outer meta-training steps")
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--adapt-steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=128, help="test picture side")
    ap.add_argument("--out", default="runs/family")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace an earlier run in --out (refused without it)")
    args = ap.parse_args(argv)
    for flag, value, low in (("--steps", args.steps, 1), ("--depth", args.depth, 1),
                             ("--adapt-steps", args.adapt_steps, 0), ("--size", args.size, 16)):
        if value < low:  # checked before the meta-training, not after it
            ap.error(f"{flag} must be >= {low}, got {value}")
    torch.set_num_threads(1)

    config = mp.TrainConfig(
        model=mp.PDNetConfig(depth=args.depth),
        meta=mp.MetaConfig(tasks=("denoise", "inpaint", FAMILY.name), inner_loss="unsupervised"),
        data=mp.DataConfig(dataset="demo", patch_size=32, inner_batch=4, outer_batch=4,
                           val_batch=4),
        optim=mp.OptimConfig(steps=args.steps),
        run=mp.RunConfig(out=args.out, val_every=0, ckpt_every=max(1, args.steps // 4)))
    path = mp.meta_train(config, progress=False, log=lambda *_: None, overwrite=args.overwrite)
    model, meta = mp.load_model(path)

    x = torch.stack(demo_images("test", size=args.size))
    batch = UNSEEN.sample(x, torch.Generator().manual_seed(0))
    measured = mp.TaskBatch(batch.task, batch.y, batch.physics, target=None, x=None)
    theta = mp.parameters_of(model)
    rule = replace(mp.AdaptConfig.from_model(meta), steps=args.adapt_steps, loss="unsupervised")
    adapted = mp.fine_tune(model, theta, lambda step: measured, rule).params

    def score(x_hat: torch.Tensor) -> float:
        return float(mp.psnr(x_hat.clamp(0, 1), x).mean())

    with torch.no_grad():
        rows = {"A^T y": score(batch.physics.A_adjoint(batch.y)),
                "meta-model θ": score(mp.reconstruct(model, theta, batch)),
                f"{args.adapt_steps} unsupervised steps": score(
                    mp.reconstruct(model, adapted, batch))}
    print(f"meta-trained {args.steps} steps on denoise, inpaint, {FAMILY.name} "
          f"(model: {path}); {UNSEEN.name} on {len(x)} held-out pictures, PSNR (dB):")
    for label, value in rows.items():
        print(f"  {label:32s} {value:6.2f}")
    return rows


if __name__ == "__main__":
    one_line_errors(main)
