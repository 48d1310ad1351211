"""Operator and PDNet timings.

For a 256×256 grayscale image: the time of A, Aᵀ and one PDNet layer for every registered
task; then one depth-20 PDNet forward (256×256 and the training batch 8 × 64×64), side by
side with the textbook ``conv2d`` / ``conv_transpose2d`` PDNet (the oracle of
``tests/test_pdnet.py``), against this machine's two lower bounds for it: its convolution
FLOPs at the measured float32 matmul rate, and its unavoidable memory traffic (the
``width``-channel dual variable read and written once per layer) at the measured memory
bandwidth. Writes ``benchmarks/results/operators.json`` and prints a table.

    python benchmarks/bench_operators.py [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from common import gemm_gflops, machine, stream_gbps, timeit, write_json
from metaprior.models import PDNet, PDNetConfig
from metaprior.tasks import available_tasks, get_task

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_pdnet import _oracle_forward as textbook_forward


def conv_flops(model: PDNet, shape) -> int:
    """Multiply-adds ×2 of W and Wᵀ over all layers (the last layer skips its dual W)."""
    b, c, h, w = shape
    per_conv = 2 * model.config.width * model.config.kernel_size**2 * b * c * h * w
    return per_conv * (2 * model.config.depth - 1)


def dual_traffic_bytes(model: PDNet, shape, itemsize: int = 4) -> int:
    """The dual variable (width × pixels) read and written once per layer."""
    b, c, h, w = shape
    return 2 * model.config.width * b * c * h * w * itemsize * model.config.depth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    torch.manual_seed(0)
    info = machine()
    print(f"# {info['cpu']} | {info['cuda'] or 'cpu'} | torch {info['torch']} | "
          f"{args.threads} thread(s)")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 256, 256, device=dev)
    one_layer = PDNet(PDNetConfig(depth=2)).to(dev)
    rows = []
    for name in available_tasks():
        tb = get_task(name).sample(x, g)
        p = tb.physics
        t_a = timeit(lambda p=p: p.A(x), repeat=20, sync=sync)
        t_at = timeit(lambda p=p, y=tb.y: p.A_adjoint(y), repeat=20, sync=sync)
        with torch.no_grad():
            t_layer = timeit(lambda tb=tb: one_layer(tb.y, tb.physics), repeat=10, sync=sync) / 2
        rows.append({"task": name, "A_ms": 1e3 * t_a, "At_ms": 1e3 * t_at,
                     "layer_ms": 1e3 * t_layer})
    print(f"{'task':10s} {'A (ms)':>8s} {'At (ms)':>8s} {'layer (ms)':>11s}   [256x256]")
    for r in rows:
        print(f"{r['task']:10s} {r['A_ms']:8.3f} {r['At_ms']:8.3f} {r['layer_ms']:11.3f}")

    gflops, gbps = gemm_gflops(device=dev), stream_gbps(device=dev)
    model = PDNet(PDNetConfig(depth=20)).to(dev)
    forwards = []
    for shape in [(1, 1, 256, 256), (8, 1, 64, 64)]:
        tb = get_task("deblur").sample(torch.rand(shape, device=dev), g)
        with torch.no_grad():
            t_text = timeit(lambda tb=tb: textbook_forward(model, tb.y, tb.physics), repeat=5,
                            sync=sync)
            t = timeit(lambda tb=tb: model(tb.y, tb.physics), repeat=5, sync=sync)
        flops = conv_flops(model, shape)
        flop_bound = flops / gflops / 1e9
        memory_bound = dual_traffic_bytes(model, shape) / gbps / 1e9
        forwards.append({"shape": list(shape), "depth": 20, "seconds": t,
                         "textbook_seconds": t_text, "speedup_vs_textbook": t_text / t,
                         "conv_gflop": flops / 1e9, "achieved_gflops": flops / t / 1e9,
                         "fraction_of_gemm_rate": flops / t / 1e9 / gflops,
                         "flop_bound_seconds": flop_bound, "memory_bound_seconds": memory_bound,
                         "times_machine_bound": t / max(flop_bound, memory_bound)})
    print(f"\nmeasured float32 matmul rate (1024^3): {gflops:.1f} GFLOP/s; memory bandwidth "
          f"(256 MB copy): {gbps:.1f} GB/s")
    print(f"{'PDNet forward, depth 20':24s} {'ours (s)':>9s} {'textbook':>9s} {'speedup':>8s} "
          f"{'FLOP bnd':>9s} {'mem bnd':>8s} {'x bound':>8s}")
    for f in forwards:
        print(f"{'x'.join(map(str, f['shape'])):24s} {f['seconds']:9.4f} "
              f"{f['textbook_seconds']:9.4f} {f['speedup_vs_textbook']:7.2f}x "
              f"{f['flop_bound_seconds']:9.4f} {f['memory_bound_seconds']:8.4f} "
              f"{f['times_machine_bound']:7.1f}x")
    path = write_json("operators.json", {"machine": info, "device": str(dev),
                                         "operators_256": rows, "gemm_gflops": gflops,
                                         "memory_gbps": gbps,
                                         "pdnet_forward": forwards})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
