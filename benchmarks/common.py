"""Shared helpers for the benchmark scripts (timing, machine description, JSON output)."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))  # the repository root: reproductions
from reproductions.machine import machine_info

RESULTS = Path(__file__).resolve().parent / "results"
machine = machine_info


def timeit(fn, repeat: int = 5, warmup: int = 1, sync=None) -> float:
    """Median wall time of ``fn()`` in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if sync:
            sync()
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def gemm_gflops(n: int = 1024, dtype=torch.float32, device="cpu") -> float:
    """Measured float32 matmul rate (GFLOP/s) at size n×n×n."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    t = timeit(lambda: a @ b, repeat=5)
    return 2 * n**3 / t / 1e9


def stream_gbps(mbytes: int = 256, device="cpu") -> float:
    """Measured memory bandwidth (GB/s): a ``mbytes`` MB float32 copy into an existing buffer,
    counting the bytes read and written."""
    n = mbytes * 2**20 // 4
    a = torch.randn(n, device=device)
    b = torch.empty_like(a)
    t = timeit(lambda: b.copy_(a), repeat=5)
    return 2 * n * 4 / t / 1e9


def write_json(name: str | Path, payload: dict) -> Path:
    """Write ``payload`` atomically to ``benchmarks/results/<name>`` (or to ``name`` if it is
    a path with a folder)."""
    path = Path(name) if Path(name).parent != Path(".") else RESULTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)
    return path


def outer_step_fn(model, config, outer):
    """One metaprior outer step: the meta-batch's summed hypergradient, then ``outer.step()``
    (what ``metaprior.train.MetaTrainer.outer_step`` does, without logging)."""
    from metaprior.meta.step import meta_gradient

    def step(batches):
        total, _ = meta_gradient(model, dict(model.named_parameters()), batches, config)
        for name, p in model.named_parameters():
            p.grad = total[name]
        outer.step()
        outer.zero_grad(set_to_none=True)
    return step
