"""Speed of the recommended solver: one 256² reconstruction and one adaptation step.

For an HQSNet (default: the recommended model): the wall time of one 256×256
reconstruction (SR ×2 measurements of scikit-image's camera, grayscale, and of its astronaut
in colour, denoised channel by channel) at 8 and 24 iterations and at the model's own, then of one
adaptation step on the batch the adaptation recipes use (8 patches of 64², SR ×2, noise std
0.01, so that the robust loss computes its SURE term) for each
label-free loss, adapting every parameter or the schedule alone (``frozen=("denoiser",)``),
and the schedule's equivariant step in mixed precision (``precision="bfloat16"``) and on an
8-iteration copy (``coarse_iterations``, in float32 and mixed precision), channels-last only
(the CPU's bfloat16 flags are recorded, and whether ``fine_tune`` allows bfloat16 there:
on a device without bfloat16 arithmetic it refuses, and its check is lifted to time it).
Each reconstruction's floating-point operations are counted too (``gflop_256``).
Every timing is taken on PyTorch's default layout and then with FFDNet's convolutions on
channels-last feature maps, in one run (``metaprior.models.ffdnet.CHANNELS_LAST``).
Writes ``benchmarks/results/solver_speed.json``.

    python benchmarks/bench_solver.py [--model NAME] [--threads 1] [--device cpu] [--coarse 8]
"""

from __future__ import annotations

import argparse
import dataclasses

import skimage.data
import torch

import metaprior as mp
import metaprior.adapt as adapt
import metaprior.models.ffdnet as ffdnet
from common import machine, timeit, write_json
from metaprior.data import demo_images
from metaprior.pretrained import RECOMMENDED


def _sync(device: torch.device):
    return torch.cuda.synchronize if device.type == "cuda" else None


def reconstruction_seconds(model, task, image, device, repeat) -> float:
    batch = task.sample(image.unsqueeze(0).to(device), torch.Generator().manual_seed(0))
    with torch.no_grad():
        return timeit(lambda: model(batch.y, batch.physics), repeat=repeat, sync=_sync(device))


def reconstruction_gflop(model, task, image, device) -> float:
    """Floating-point operations of one reconstruction (``torch.utils.flop_counter``: the
    convolutions and matrix products, 2 per multiply-add), in GFLOP."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = task.sample(image.unsqueeze(0).to(device), torch.Generator().manual_seed(0))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(batch.y, batch.physics)
    return counter.get_total_flops() / 1e9


def step_seconds(model, theta, task, patches, loss, frozen, repeat,
                 precision: str = "float32", coarse: int = 0) -> float:
    g = torch.Generator().manual_seed(0)
    batches = [task.sample(patches, g) for _ in range(repeat + 1)]
    rule = mp.AdaptConfig(steps=1, lr=3e-3, loss=loss, frozen=frozen, precision=precision,
                          coarse_iterations=coarse)
    runs = iter(batches)
    return timeit(lambda: mp.fine_tune(model, theta, lambda _s: next(runs), rule,
                                       check_finite=False),  # the step alone
                  repeat=repeat, warmup=1, sync=_sync(patches.device))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=RECOMMENDED)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--coarse", type=int, default=8,
                    help="also time the label-free rule on an N-iteration copy "
                         "(AdaptConfig.coarse_iterations; 0: skip)")
    ap.add_argument("--out", default="solver_speed.json")
    args = ap.parse_args()
    mp.configure_cpu(args.threads)  # as every command: threads, the heap kept
    device = torch.device(args.device)
    model, _meta = mp.load_model(args.model, device=args.device)
    task = dataclasses.replace(mp.get_task("sr2"), noise_sigma=0.01)
    gray = demo_images("test", size=256)[0]
    colour = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1)
    colour = torch.nn.functional.interpolate(colour[None].float() / 255, size=(256, 256),
                                             mode="area")[0]
    patches = torch.stack(demo_images("train", size=64)).to(device)  # the 8 training pictures
    results = {"model": args.model, "iterations": model.config.iterations,
               "machine": machine(),
               "threads": args.threads, "reconstruction_256": {},
               "adaptation_step_8x64": {}, "gflop_256": {}}
    # Layout by layout. In this sequence the 24-iteration grayscale reconstruction in the
    # default layout takes about 2.0 s, though 3.3 s in a fresh process (three times the 8
    # iterations): oneDNN's choices depend on the convolutions run before.
    theta = mp.parameters_of(model)
    variants = {k: model if k == model.config.iterations else model.with_iterations(k)
                for k in sorted({model.config.iterations, 8, 24})}
    for layout in ("default", "channels_last"):
        ffdnet.CHANNELS_LAST = layout == "channels_last"
        for k, m in variants.items():
            for name, image in (("gray", gray), ("colour", colour)):
                s = reconstruction_seconds(m, task, image, device, args.repeat)
                results["reconstruction_256"][f"{name}/K{k}/{layout}"] = s
                print(f"256² {name:6s} K={k:2d} {layout:13s} {s:6.3f} s", flush=True)
        for loss in ("equivariant", "robust-equivariant"):
            for frozen in ((), ("denoiser",)):
                s = step_seconds(model, theta, task, patches, loss, frozen, args.repeat)
                tag = f"{loss}/{'schedule' if frozen else 'all'}/{layout}"
                results["adaptation_step_8x64"][tag] = s
                print(f"step {tag:40s} {s:6.3f} s (50 steps: {50 * s:5.1f} s)", flush=True)
    # The schedule's label-free rule in mixed precision (AdaptConfig.precision) and on a
    # coarse copy (AdaptConfig.coarse_iterations), channels-last.
    # Where the device lacks bfloat16 arithmetic fine_tune refuses bfloat16; its check is
    # lifted here to time what it refuses.
    results["bfloat16_is_fast"] = adapt.bfloat16_is_fast(device)
    adapt.bfloat16_is_fast = lambda _device: True
    rules = [("bfloat16", 0)]
    rules += [("float32", args.coarse), ("bfloat16", args.coarse)] if args.coarse else []
    for precision, coarse in rules:
        s = step_seconds(model, theta, task, patches, "equivariant", ("denoiser",),
                         args.repeat, precision, coarse)
        tag = "equivariant/schedule/channels_last" + (
            f"/{precision}" if precision != "float32" else "") + (
            f"/coarse{coarse}" if coarse else "")
        results["adaptation_step_8x64"][tag] = s
        print(f"step {tag:40s} {s:6.3f} s (50 steps: {50 * s:5.1f} s)", flush=True)
    # FLOPs last, so that the counting pass does not sit between the timed convolutions
    for k, m in variants.items():
        for name, image in (("gray", gray), ("colour", colour)):
            gflop = reconstruction_gflop(m, task, image, device)
            results["gflop_256"][f"{name}/K{k}"] = gflop
            print(f"256² {name:6s} K={k:2d} {gflop:.0f} GFLOP", flush=True)
    ffdnet.CHANNELS_LAST = True
    print(f"wrote {write_json(args.out, results)}")


if __name__ == "__main__":
    main()
