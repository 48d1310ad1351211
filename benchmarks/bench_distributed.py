"""Outer-step time of meta-training in 1 and N processes (torch.distributed, gloo on CPU),
with the all-reduce time reported apart from the wait for the slowest rank, next to the
one-process path that runs a meta-batch's tasks in threads.

Each configuration runs in fresh processes launched by ``torch.distributed.run`` (torchrun);
every rank draws the same meta-batches, computes its share of the tasks and joins one
all-reduce per step (``metaprior.meta.step.meta_gradient``). The all-reduce is timed as
``barrier`` (waiting for the slowest rank, i.e. load imbalance) then ``all_reduce`` (the
communication itself). Results: ``benchmarks/results/distributed.json``.

    python benchmarks/bench_distributed.py [--configs 1x1,1x2,2x1] [--depth 20] [--patch 32]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def worker(args) -> None:
    import torch
    import torch.distributed as dist

    from common import outer_step_fn
    from metaprior import distributed
    from metaprior.data import PatchSampler, demo_images
    from metaprior.meta.config import MetaConfig
    from metaprior.models import PDNet, PDNetConfig
    from metaprior.tasks import get_task

    torch.set_num_threads(1)
    distributed.setup("cpu")
    timing = {"wait": 0.0, "all_reduce": 0.0}
    real = dist.all_reduce

    def timed_all_reduce(tensor, *a, **kw):
        t0 = time.perf_counter()
        dist.barrier()
        t1 = time.perf_counter()
        out = real(tensor, *a, **kw)
        timing["wait"] += t1 - t0
        timing["all_reduce"] += time.perf_counter() - t1
        return out

    dist.all_reduce = timed_all_reduce
    torch.manual_seed(0)
    model = PDNet(PDNetConfig(depth=args.depth))
    sampler = PatchSampler(demo_images("train", size=128), args.patch, seed=0)
    g = torch.Generator().manual_seed(1)
    tasks = [get_task(t) for t in args.tasks.split(",")]
    cfg = MetaConfig(tasks=tuple(t.name for t in tasks), hypergradient=args.mode,
                     workers=args.workers)
    step = outer_step_fn(model, cfg, torch.optim.Adam(model.parameters(), lr=1e-3))

    def meta_batch():
        return [(t.sample(sampler.sample(args.batch), g), t.sample(sampler.sample(args.batch), g))
                for t in tasks]

    step(meta_batch())  # warm-up
    times = []
    timing.update(wait=0.0, all_reduce=0.0)
    for _ in range(args.steps):
        batches = meta_batch()
        distributed.barrier()
        t = time.perf_counter()
        step(batches)
        times.append(time.perf_counter() - t)
    if distributed.is_main():
        n = args.steps
        print(json.dumps({"procs": distributed.world_size(), "task_threads": args.workers,
                          "step_seconds_median":
                          sorted(times)[n // 2], "step_seconds_min": min(times),
                          "wait_seconds_per_step": timing["wait"] / n,
                          "all_reduce_seconds_per_step": timing["all_reduce"] / n}))
    distributed.teardown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="1x1,1x2,2x1",
                    help="PROCSxTHREADS: processes, and task threads in each (1x2 is the "
                    "one-process path that runs a meta-batch's tasks in 2 threads)")
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tasks", default="denoise,tv,deblur,inpaint")
    ap.add_argument("--mode", default="maml", choices=["maml", "first_order", "implicit"])
    ap.add_argument("--steps", type=int, default=6, help="timed outer steps per configuration")
    ap.add_argument("--out", default=str(HERE / "results" / "distributed.json"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    from common import machine

    rows = []
    for n, threads in (map(int, c.split("x")) for c in args.configs.split(",")):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n),
               "--master-port", str(_free_port()), __file__, "--worker", f"--workers={threads}",
               *[f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                 if k not in ("worker", "configs", "out", "workers")]]
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        if proc.returncode != 0:
            raise SystemExit(f"{n} process(es) failed:\n{proc.stderr[-3000:]}")
        rows.append({"config": f"{n}x{threads}",
                     **json.loads(proc.stdout.strip().splitlines()[-1])})
        print(rows[-1], flush=True)
    base = rows[0]["step_seconds_median"]
    for r in rows:
        r["speedup_vs_first"] = base / r["step_seconds_median"]
    result = {"machine": machine(), "config": {k: v for k, v in vars(args).items()
                                               if k not in ("worker", "out")},
              "results": rows}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
