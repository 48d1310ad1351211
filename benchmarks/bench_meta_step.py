"""Wall time and peak resident memory of one outer meta-step, ours and the meta-learning
libraries', each configuration in a fresh process.

The step: PDNet (depth D), a meta-batch of the four training tasks, inner and outer batches
B × P×P, K supervised inner steps, the outer loss's hypergradient summed over tasks, one outer
Adam step. Implementations:

* ``ours-maml`` / ``ours-first_order`` / ``ours-implicit``: metaprior's three modes (Adam inner
  steps; ``ours-maml-sgd`` with SGD inner steps, to compare with learn2learn), the tasks in
  ``--workers`` threads (default 0: one per core); ``ours-maml-serial`` runs them one after the
  other in one thread, the peers' resources;
* ``learn2learn``: ``l2l.algorithms.MAML`` (SGD inner steps: its only update rule);
* ``torchopt``: ``torchopt.MetaAdam`` with state extract/recover per task (its MAML example);
* ``higher``: ``higher.innerloop_ctx`` with ``torch.optim.Adam`` (DifferentiableAdam).

The peers are installed in the benchmark's own folder, not as project dependencies::

    pip install --target benchmarks/.peers --no-deps torchopt optree higher graphviz \
        gym==0.26.2 cloudpickle gym-notices   # learn2learn imports gym at import time
    # learn2learn 0.2.0's shipped C files predate Python 3.11: rebuild them with Cython 3
    pip download --no-deps --no-binary :all: learn2learn==0.2.0 && tar xzf learn2learn-0.2.0.tar.gz
    cd learn2learn-0.2.0 && rm learn2learn/data/*.c && pip install --target /tmp/cy cython
    PYTHONPATH=/tmp/cy python setup.py build_ext --inplace
    cp -r learn2learn ../benchmarks/.peers/

A worker whose resident memory passes ``--mem-limit-gb`` stops itself and is recorded as
out of memory (no OOM killer involved). Results: ``benchmarks/results/meta_step.json``.

    python benchmarks/bench_meta_step.py [--depth 20] [--ks 1,5,20] [--impls ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS = HERE / ".peers"
IMPLS = ("ours-maml", "ours-maml-serial", "ours-maml-sgd", "ours-first_order", "ours-implicit",
         "learn2learn", "torchopt", "higher")
OOM_EXIT = 3


def _rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def _watchdog(limit_gb: float) -> None:
    def run():
        while True:
            if _rss_gb() > limit_gb:
                sys.stderr.write(f"resident memory above {limit_gb} GB: stopping\n")
                os._exit(OOM_EXIT)
            time.sleep(0.02)

    threading.Thread(target=run, daemon=True).start()


# --- worker ---------------------------------------------------------------------------------

def _problem(args):
    import torch

    from metaprior.data import PatchSampler, demo_images
    from metaprior.models import PDNet, PDNetConfig
    from metaprior.tasks import TRAIN_TASKS, get_task

    torch.manual_seed(0)
    model = PDNet(PDNetConfig(depth=args.depth, checkpoint_segment=args.checkpoint_segment))
    sampler = PatchSampler(demo_images("train", size=128), args.patch, seed=0)
    g = torch.Generator().manual_seed(1)
    tasks = [get_task(t) for t in TRAIN_TASKS[: args.tasks]]

    def meta_batch():
        return [(t.sample(sampler.sample(args.batch), g), t.sample(sampler.sample(args.batch), g))
                for t in tasks]

    return model, meta_batch


def _step_fn(impl: str, model, args):
    """A function running one outer step on a meta-batch."""
    import torch

    from metaprior.losses import supervised_loss

    inner_lr, k = args.inner_lr, args.k
    outer = torch.optim.Adam(model.parameters(), lr=1e-3)

    if impl.startswith("ours"):
        from common import outer_step_fn
        from metaprior.meta.config import MetaConfig

        mode = impl.split("-")[1]
        cfg = MetaConfig(inner_steps=k, inner_lr=inner_lr, hypergradient=mode,
                         inner_optimizer="sgd" if impl.endswith("-sgd") else "adam",
                         prox_lambda=1e-2, cg_iters=10,
                         workers=1 if impl.endswith("-serial") else args.workers)

        return outer_step_fn(model, cfg, outer)

    sys.path.insert(0, str(PEERS))
    if impl == "learn2learn":
        import learn2learn as l2l

        maml = l2l.algorithms.MAML(model, lr=inner_lr, first_order=False, allow_unused=True)

        def step(batches):
            outer.zero_grad(set_to_none=True)
            for inner, out in batches:
                learner = maml.clone()
                for _ in range(k):
                    learner.adapt(supervised_loss(learner(inner.y, inner.physics), inner.target),
                                  allow_unused=True)
                supervised_loss(learner(out.y, out.physics), out.target).backward()
            outer.step()
        return step

    if impl == "torchopt":
        import torchopt

        inner_opt = torchopt.MetaAdam(model, lr=inner_lr)

        def step(batches):
            outer.zero_grad(set_to_none=True)
            net_state = torchopt.extract_state_dict(model)
            opt_state = torchopt.extract_state_dict(inner_opt)
            for inner, out in batches:
                for _ in range(k):
                    inner_opt.step(supervised_loss(model(inner.y, inner.physics), inner.target))
                supervised_loss(model(out.y, out.physics), out.target).backward()
                torchopt.recover_state_dict(model, net_state)
                torchopt.recover_state_dict(inner_opt, opt_state)
            outer.step()
        return step

    if impl == "higher":
        import higher

        inner_opt = torch.optim.Adam(model.parameters(), lr=inner_lr)

        def step(batches):
            outer.zero_grad(set_to_none=True)
            for inner, out in batches:
                with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (
                        fmodel, diffopt):
                    for _ in range(k):
                        diffopt.step(supervised_loss(fmodel(inner.y, inner.physics),
                                                     inner.target))
                    supervised_loss(fmodel(out.y, out.physics), out.target).backward()
            outer.step()
        return step
    raise ValueError(f"unknown implementation {impl!r}")


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    _watchdog(args.mem_limit_gb)
    model, meta_batch = _problem(args)
    step = _step_fn(args.impl, model, args)
    step(meta_batch())  # warm-up (allocator, lazy imports)
    times = []
    for _ in range(args.repeat):
        batches = meta_batch()
        t = time.perf_counter()
        step(batches)
        times.append(time.perf_counter() - t)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"seconds": min(times), "peak_rss_gb": peak_gb}))


# --- driver ---------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--tasks", type=int, default=4, help="tasks per meta-batch (1-4)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--ks", default="1,5,20", help="inner step counts")
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--inner-lr", type=float, default=1e-2)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    ap.add_argument("--workers", type=int, default=0,
                    help="ours: threads over the tasks (0: one per core left by --threads)")
    ap.add_argument("--repeat", type=int, default=1, help="timed steps after the warm-up")
    ap.add_argument("--mem-limit-gb", type=float, default=18.0)
    ap.add_argument("--checkpoint-segment", type=int, default=0,
                    help="PDNet gradient checkpointing segment (0: off)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    ap.add_argument("--out", default=str(HERE / "results" / "meta_step.json"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--impl", help=argparse.SUPPRESS)
    ap.add_argument("--k", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    sys.path.insert(0, str(HERE))
    from common import machine, write_json

    info = machine()
    info["threads"] = args.threads
    print(f"# {info['cpu']} | torch {info['torch']} | {args.threads} thread(s) | depth "
          f"{args.depth}, {args.tasks} tasks, batches {args.batch}x{args.patch}^2")
    rows = []
    for k in [int(v) for v in args.ks.split(",")]:
        for impl in args.impls.split(","):
            cmd = [sys.executable, __file__, "--worker", "--impl", impl, "--k", str(k)]
            for name in ("depth", "tasks", "batch", "patch", "inner_lr", "threads", "workers",
                         "repeat", "mem_limit_gb", "checkpoint_segment"):
                cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
            row = {"impl": impl, "K": k}
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                if proc.returncode == OOM_EXIT:
                    row["status"] = f"out of memory (> {args.mem_limit_gb} GB resident)"
                elif proc.returncode != 0:
                    row["status"] = "error: " + (proc.stderr.strip().splitlines() or ["?"])[-1]
                else:
                    row.update(json.loads(proc.stdout.strip().splitlines()[-1]), status="ok")
            except subprocess.TimeoutExpired:
                row["status"] = f"timeout (> {args.timeout:.0f} s)"
            rows.append(row)
            shown = (f"{row['seconds']:8.2f} s {row['peak_rss_gb']:6.2f} GB"
                     if row["status"] == "ok" else row["status"])
            print(f"K={k:<3d} {impl:18s} {shown}", flush=True)
    path = write_json(args.out, {"machine": info, "config": {
        k: getattr(args, k) for k in ("depth", "tasks", "batch", "patch", "inner_lr", "threads",
                                      "workers", "repeat", "mem_limit_gb",
                                      "checkpoint_segment")},
        "results": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
