"""GPU checks, run on a CUDA machine from the repo root (``bash benchmarks/gpu/run.sh``).

1. The fast PDNet layer against the ``conv2d`` oracle on CUDA (float32 and float64).
2. MAML hypergradients on CUDA against CPU (float64; checkpointing on/off; 1 or 2 workers).
3. Time and peak GPU memory of outer ``maml`` steps (four tasks, depth 20, 8 x 64x64).
4. ``--phases``: memory of one ``maml`` hypergradient by phase (held after the inner steps,
   after the outer forward, peak of the call), with and without ``checkpoint_segment``.

Recorded: ``benchmarks/results/gpu_check_h200.json`` and ``checkpoint_memory_h200.json``
(H200, torch 2.11.0+cu130).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from metaprior.adapt import parameters_of
from metaprior.meta.config import MetaConfig
from metaprior.meta.maml import grad_dict
from metaprior.meta.problem import inner_adapt, outer_loss
from metaprior.meta.step import meta_gradient
from metaprior.models import PDNet, PDNetConfig
from metaprior.tasks import TRAIN_TASKS, get_task
from test_pdnet import _oracle_forward

DEV = torch.device("cuda")
MB = 2**20


def oracle_differences() -> dict:
    errs = {}
    for dtype in (torch.float32, torch.float64):
        for name in ("deblur", "inpaint", "mri4", "sr2"):
            torch.manual_seed(0)
            m = PDNet(PDNetConfig(depth=6, weight_init_std=0.2, lam_init=0.05)).to(DEV, dtype)
            x = torch.rand(2, 1, 32, 32, dtype=dtype, device=DEV)
            tb = get_task(name).sample(x, torch.Generator().manual_seed(0))
            with torch.no_grad():
                diff = m(tb.y, tb.physics) - _oracle_forward(m, tb.y, tb.physics)
            errs[f"{name}-{str(dtype)[6:]}"] = float(diff.abs().max())
    return errs


def hypergradient(device, seg: int, workers: int) -> torch.Tensor:
    torch.manual_seed(0)
    m = PDNet(PDNetConfig(depth=5, width=6, weight_init_std=0.3, lam_init=0.05,
                          checkpoint_segment=seg)).double().to(device)
    g = torch.Generator().manual_seed(0)
    batches = []
    for name in ("inpaint", "denoise"):
        pair = []
        for _ in range(2):
            x = torch.rand(2, 1, 16, 16, generator=g, dtype=torch.float64).to(device)
            b = get_task(name).sample(x, g)
            if hasattr(b.physics, "mask"):
                b.physics.mask = b.physics.mask.double()
            pair.append(b)
        batches.append(tuple(pair))
    cfg = MetaConfig(inner_steps=2, inner_lr=0.01, workers=workers)
    total, _ = meta_gradient(m, parameters_of(m), batches, cfg)
    return torch.cat([v.reshape(-1).cpu() for v in total.values()])


def step_stats(k: int, seg: int, workers: int, tasks: int = 4, depth: int = 20) -> dict:
    torch.manual_seed(0)
    m = PDNet(PDNetConfig(depth=depth, checkpoint_segment=seg)).to(DEV)
    g = torch.Generator().manual_seed(1)

    def meta_batch():
        return [tuple(get_task(t).sample(torch.rand(8, 1, 64, 64, device=DEV), g)
                      for _ in range(2)) for t in TRAIN_TASKS[:tasks]]

    cfg = MetaConfig(inner_steps=k, inner_lr=1e-2, workers=workers)
    meta_gradient(m, parameters_of(m), meta_batch(), cfg)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    times = []
    for _ in range(3):
        batches = meta_batch()
        torch.cuda.synchronize()
        t = time.perf_counter()
        meta_gradient(m, parameters_of(m), batches, cfg)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return {"seconds": min(times), "peak_gb": (torch.cuda.max_memory_allocated() - base) / 2**30}


def phases(depth: int, k: int, seg: int) -> dict:
    torch.manual_seed(0)
    m = PDNet(PDNetConfig(depth=depth, checkpoint_segment=seg)).to(DEV)
    g = torch.Generator().manual_seed(1)
    inner, outer = (get_task("deblur").sample(torch.rand(8, 1, 64, 64, device=DEV), g)
                    for _ in range(2))
    theta = {n: v.detach().requires_grad_(True) for n, v in parameters_of(m).items()}
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()

    def now():
        return (torch.cuda.memory_allocated() - base) / MB, (
            torch.cuda.max_memory_allocated() - base) / MB

    phi, _ = inner_adapt(m, theta, inner, MetaConfig(inner_steps=k, inner_lr=1e-2),
                         create_graph=True)
    held_inner, peak_inner = now()
    loss = outer_loss(m, phi, outer)
    held_outer, peak_outer = now()
    grad_dict(loss, theta)
    return {"held_after_inner_MB": held_inner, "peak_inner_MB": peak_inner,
            "held_after_outer_fwd_MB": held_outer, "peak_outer_fwd_MB": peak_outer,
            "peak_total_MB": now()[1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phases", action="store_true", help="only the memory-by-phase table")
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for the JSON")
    args = ap.parse_args()
    if args.phases:
        configs = [(60, 1, 0), (60, 1, 10), (60, 1, 20), (20, 1, 0), (20, 1, 7), (20, 5, 0),
                   (20, 5, 7)]
        out = {f"d{d}-K{k}-seg{s}": phases(d, k, s) for d, k, s in configs}
        name = "checkpoint_memory.json"
    else:
        out = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(),
               "oracle_max_abs_diff": oracle_differences()}
        ref = hypergradient("cpu", 0, 1)
        out["hypergrad_rel_diff_vs_cpu"] = {
            f"seg{s}-w{w}": float((hypergradient(DEV, s, w) - ref).norm() / ref.norm())
            for s in (0, 2) for w in (1, 2)}
        out["maml_step"] = {f"K{k}-seg{s}-w{w}": step_stats(k, s, w) for k, s, w in
                            [(1, 0, 1), (1, 0, 2), (5, 0, 1), (5, 7, 1), (20, 0, 1)]}
        out["maml_step_depth60"] = {f"K1-seg{s}": step_stats(1, s, 1, tasks=1, depth=60)
                                    for s in (0, 10)}
        name = "gpu_check.json"
    print(json.dumps(out, indent=1), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / name).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
