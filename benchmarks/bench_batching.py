"""Does batching the tasks of a meta-step into one network call pay on this machine?

A meta-step's inner forward/backward runs at the shared θ for every task, so its four
task batches could go through PDNet as one batch of 4·B images (per-task operators aside).
This script times exactly that network work, side by side in one process:

* ``separate``: T calls on batches of B images (the current per-task path);
* ``batched``: one call on T·B images (what batching would do at θ).

Both for the forward pass and for the MAML inner step (forward, then the gradient with
``create_graph=True``, then the outer backward through it), with the identity operator so only
the network is measured. Median of ``--repeat`` runs, one intra-op thread.
Results: ``benchmarks/results/batching.json``.

    python benchmarks/bench_batching.py [--depth 20] [--tasks 4] [--batch 8] [--patches 32,64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _time(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    from deepinv.physics import Denoising

    from common import machine
    from metaprior.models import PDNet, PDNetConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patches", default="32,64")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=str(HERE / "results" / "batching.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = PDNet.seeded(PDNetConfig(depth=args.depth), seed=0)
    params = list(model.parameters())
    physics = Denoising()
    rows = []
    for p in (int(x) for x in args.patches.split(",")):
        g = torch.Generator().manual_seed(0)
        ys = [torch.rand(args.batch, 1, p, p, generator=g) for _ in range(args.tasks)]
        big = torch.cat(ys)

        def forward(batches):
            with torch.no_grad():
                for y in batches:
                    model(y, physics)

        def inner_step(batches):
            for y in batches:
                loss = (model(y, physics) - y).pow(2).mean()
                grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
                outer = sum((gr * gr).sum() for gr in grads if gr is not None)
                torch.autograd.grad(outer, params, allow_unused=True)

        for name, fn in (("forward", forward), ("maml_inner_step", inner_step)):
            sep = _time(lambda fn=fn, ys=ys: fn(ys), args.repeat)
            bat = _time(lambda fn=fn, big=big: fn([big]), args.repeat)
            rows.append({"patch": p, "work": name, "separate_seconds": sep,
                         "batched_seconds": bat, "batched_speedup": sep / bat})
            print(rows[-1], flush=True)
    Path(args.out).write_text(json.dumps({"machine": machine(), "config": vars(args),
                                          "results": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
