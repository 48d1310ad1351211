"""Adapt a shipped model to an operator of your own, from its measurements alone.

The operator below, a 3×3 box blur followed by keeping every second pixel, is not among the
registered tasks and was never seen in meta-training. It is written as a
``deepinv.physics.LinearPhysics``: its forward map ``A`` and adjoint ``A_adjoint``, and that is
all metaprior needs. The held-out pictures are scikit-image's (no data download). The script
compares, by PSNR against the ground truth (used only for scoring):

* the zero-filled adjoint A^T y and deepinv's least-squares pseudo-inverse A^† y;
* total-variation reconstruction, its weight grid-searched on two *other* pictures (the only
  ground truth used, as a user with a few clean images of their own would);
* the recommended shipped model (``hqs-dpir24-dihedral``) θ, before and after N steps on y
  alone with the label-free rule it recommends (the equivariant loss, its schedule alone);
* for comparison, the paper's meta-model (``meta-unsup-d20``, a PDNet of
  ``reproductions/models/``), adapted with the measurement-consistency step rule it was
  meta-trained with.

    python examples/adapt_own_operator.py [--steps 20] [--size 128] [--model NAME]

The file also registers its operator as the task ``boxblur-decimate2``, so the command line can
use it too::

    metaprior --plugin examples/adapt_own_operator.py measure --task boxblur-decimate2 \
        --images DIR --no-ground-truth --out y.safetensors
    metaprior --plugin examples/adapt_own_operator.py adapt --model hqs-dpir24-dihedral \
        --measurements y.safetensors --steps 20 --out adapted.safetensors
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import deepinv as dinv
import torch
import torch.nn.functional as F

import metaprior as mp
from metaprior import baselines as bl
from metaprior.cli import OneLineParser, one_line_errors
from metaprior.data import demo_images
from metaprior.pretrained import RECOMMENDED


class BoxBlurDecimate(dinv.physics.LinearPhysics):
    """y = S(k ⋆ x): circular 3×3 box blur, then every ``factor``-th pixel in each axis."""

    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", torch.full((1, 1, 3, 3), 1 / 9))

    def _blur(self, x: torch.Tensor) -> torch.Tensor:  # symmetric kernel: its own adjoint
        c = x.shape[1]
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"),
                        self.kernel.expand(c, 1, 3, 3), groups=c)

    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self._blur(x)[..., ::self.factor, ::self.factor]

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        b, c, h, w = y.shape
        up = y.new_zeros(b, c, h * self.factor, w * self.factor)
        up[..., ::self.factor, ::self.factor] = y
        return self._blur(up)


#: The paper's PDNets, by name (``--compare meta-unsup-d20``), where the repository is at hand.
STUDY_MODELS = Path(__file__).resolve().parents[1] / "reproductions" / "models"
if STUDY_MODELS.is_dir():
    mp.add_model_dir(STUDY_MODELS)

#: The operator as a task (noise std 0.01), registered by name when this file is imported or
#: passed to ``metaprior --plugin``. ``BoxBlurDecimate`` works at any image size, so one
#: instance serves every shape; an operator tied to one size would be given as a factory
#: ``(shape, generator, device) -> physics`` instead.
TASK = mp.register_task(mp.task_from_physics("boxblur-decimate2", BoxBlurDecimate(2),
                                             noise_sigma=0.01), overwrite=True)


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="adaptation steps, no ground truth")
    ap.add_argument("--size", type=int, default=128, help="picture side")
    ap.add_argument("--model", default=RECOMMENDED,
                    help="shipped model (or model file); default: the recommended one")
    ap.add_argument("--compare", default="meta-unsup-d20",
                    help="comma-separated models adapted the same way ('' for none)")
    ap.add_argument("--loss", default="", help="equivariant | robust-equivariant | unsupervised "
                    "(default: each model's own recommendation; unsupervised for a model "
                    "without one)")
    ap.add_argument("--frozen", default="", help="parameter-name prefixes held fixed, e.g. "
                    "denoiser (HQSNet: adapt the schedule alone), or none (adapt every "
                    "parameter); default: each model's own rule")
    args = ap.parse_args(argv)
    if args.size < 16 or args.size % 2 or args.steps < 0:
        ap.error(f"--size must be an even number >= 16 and --steps >= 0, got {args.size}, "
                 f"{args.steps}")
    torch.set_num_threads(1)
    frozen = (tuple(p for p in args.frozen.split(",") if p and p != "none")
              if args.frozen else None)  # None: each model's own rule
    rules = {}  # each model's own step rule, checked against it before any work
    for name in [args.model, *filter(None, args.compare.split(","))]:
        model, meta = mp.load_model(name)
        own = frozen
        if own and name != args.model and not any(k.startswith(own)
                                                  for k, _ in model.named_parameters()):
            own = ()  # a compared model without those parameters (a PDNet) adapts all its own
        # (optimizer, step size, the loss it recommends); a model trained with a supervised
        # inner loss (or none) adapts with measurement consistency
        rule = mp.AdaptConfig.from_model(meta, steps=args.steps, loss=args.loss or None,
                                         frozen=own)
        if rule.loss == "supervised":
            rule = mp.AdaptConfig.from_model(meta, steps=args.steps, loss="unsupervised",
                                             frozen=own)
        mp.check_rule(model, rule)
        rules[name] = model, rule

    x = torch.stack(demo_images("test", size=args.size))  # (3, 1, H, W) held-out pictures
    task = TASK
    batch = task.sample(x, torch.Generator().manual_seed(0))
    measured = dataclasses.replace(batch, target=None, x=None)  # the measurements alone

    def score(x_hat: torch.Tensor) -> float:
        return float(mp.psnr(x_hat.clamp(0, 1), x).mean())

    rows = {"A^T y": score(batch.physics.A_adjoint(batch.y)),
            "A^dagger y": score(batch.physics.A_dagger(batch.y))}
    g = torch.Generator().manual_seed(1)
    tuning = [task.sample(im.unsqueeze(0), g) for im in demo_images("train", size=args.size)[:2]]
    weight, _ = bl.grid_search(lambda w: bl.method("tv", w), bl.GRIDS["tv"], tuning)
    rows[f"TV (weight {weight:g})"] = score(bl.method("tv", weight)(batch))
    for name, (model, rule) in rules.items():
        theta = mp.parameters_of(model)
        result = mp.fine_tune(model, theta, lambda step: measured, rule)
        with torch.no_grad():
            rows[f"{name}: θ"] = score(mp.reconstruct(model, theta, batch))
            rows[f"{name}: {args.steps} {rule.loss} steps"] = score(
                mp.reconstruct(model, result.params, batch))
    print(f"{task.name} on {len(x)} held-out pictures ({args.size}x{args.size}), PSNR (dB):")
    for label, value in rows.items():
        print(f"  {label:42s} {value:6.2f}")
    return rows


if __name__ == "__main__":
    one_line_errors(main)
