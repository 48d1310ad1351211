"""What keeping freed memory (``metaprior.keep_freed_memory``, every command's set-up) does
to adaptation: the recommended model's label-free rule (its schedule, the equivariant loss,
8 patches of 64², SR ×2), ``--steps`` steps in a fresh process with glibc's own heap
thresholds and in one with the heap kept, alternating, ``--pairs`` pairs side by side.
Each run records every step's wall time, CPU time in kernel mode and minor page faults; the
summary is the median over the steps between the first (which faults its memory in either
way) and the last (which also reconstructs, ``fine_tune``'s final check).
Writes ``benchmarks/results/heap.json``.

    python benchmarks/bench_heap.py [--steps 6] [--pairs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import torch

from common import machine, write_json

RUN = """
import json, resource, sys, time, torch
import metaprior as mp
from metaprior.data import demo_images
from metaprior.pretrained import RECOMMENDED
torch.set_num_threads(1)
if sys.argv[1] == "kept":
    assert mp.keep_freed_memory()
model, meta = mp.load_model(RECOMMENDED)
rule = mp.AdaptConfig.from_model(meta, steps=int(sys.argv[2]))
task = mp.get_task("sr2")
batch = task.sample(torch.stack(demo_images("train", size=64)), torch.Generator().manual_seed(0))
steps = []
last = [time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)]


def record(state, loss):
    now, usage = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    steps.append({"wall_s": now - last[0], "sys_s": usage.ru_stime - last[1].ru_stime,
                  "minor_faults": usage.ru_minflt - last[1].ru_minflt})
    last[:] = [now, usage]


mp.fine_tune(model, mp.parameters_of(model), lambda step: batch, rule, callback=record)
print(json.dumps(steps))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--out", default="heap.json")
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torch.set_num_threads(1)  # as in the runs, for the machine record
    runs = {"default": [], "kept": []}
    for pair in range(args.pairs):
        for mode, rs in runs.items():
            out = subprocess.run([sys.executable, "-c", RUN, mode, str(args.steps)], env=env,
                                 capture_output=True, text=True, check=True)
            rs.append(json.loads(out.stdout.splitlines()[-1]))
            print(f"pair {pair} {mode:7s} " + ", ".join(
                f"{r['wall_s']:.1f} s/{r['minor_faults']:,}" for r in rs[-1]), flush=True)
    summary = {mode: {key: statistics.median(step[key] for run in rs for step in run[1:-1])
                      for key in ("wall_s", "sys_s", "minor_faults")}
               for mode, rs in runs.items()}
    summary["speedup"] = summary["default"]["wall_s"] / summary["kept"]["wall_s"]
    print(f"median step (first and last left out): {summary['default']['wall_s']:.2f} s "
          f"default, {summary['kept']['wall_s']:.2f} s kept: {summary['speedup']:.2f}x")
    payload = {"steps": args.steps, "pairs": args.pairs, "machine": machine(),
               "runs": runs, "median_step": summary}
    print(f"wrote {write_json(args.out, payload)}")

if __name__ == "__main__":
    main()
