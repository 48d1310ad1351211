"""HQSNet with more iterations at test time, before any adaptation.

``HQSNet.with_iterations(K)`` resamples a model's learned schedule (log σ_k, log γ_k) to K
iterations with the same denoiser. For ``hqs-families`` (trained at 8) and for the untrained
DPIR schedule (``hqs-dpir``: deepinv's DPIR at noise level 0.01), each K is scored on the
grid-search crops (BSDS500 train) and on the validation crops (BSDS500 val; for ``sr2`` the
Table 1 fine-tuning images) of :mod:`reproductions.solver_validation`'s operators, in float32
or (``--precision bfloat16``) under bfloat16 autocast:

    python -m reproductions.solver_iterations --operators sr2,val-diffraction,val-blocks,\
val-sr3,val-radial --out reproductions/results/solver_iterations.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from pathlib import Path

import torch

import metaprior as mp
from metaprior.checkpoint import write_bytes_atomic
from metaprior.evaluate import score
from metaprior.meta.problem import reconstruct
from metaprior.metrics import mean_std
from reproductions.solver_validation import (
    add_shared_args,
    load,
    operator_data,
    with_test_options,
)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="hqs-families,hqs-dpir")
    ap.add_argument("--operators", default="sr2,val-diffraction,val-blocks,val-sr3,val-radial")
    ap.add_argument("--iterations", default="8,16,24")
    ap.add_argument("--precision", default="float32",
                    help="comma list of float32 and bfloat16: the reconstruction under "
                         "torch.autocast (HQSNet keeps its data steps float32)")
    add_shared_args(ap)
    args = ap.parse_args(argv)
    args.patch_size, args.batch = 60, 8  # the fine-tuning stream's (unused here)
    mp.configure_cpu(1)  # as every command: one thread, the heap kept
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {"operators": {}}
    results["command"] = "python -m reproductions.solver_iterations " + " ".join(
        sys.argv[1:] if argv is None else argv)
    for op in args.operators.split(","):
        data = operator_data(op, args)
        entry = results["operators"].setdefault(op, {})
        for name in args.models.split(","):
            model = load(name)[0]
            for k, precision in itertools.product(
                    (int(v) for v in args.iterations.split(",")), args.precision.split(",")):
                net = with_test_options(model, k, args.dihedral)
                theta = mp.parameters_of(net)
                dtype = {"float32": None, "bfloat16": torch.bfloat16}[precision]

                def method(b, net=net, theta=theta, dtype=dtype):
                    if dtype is None:
                        return reconstruct(net, theta, b)
                    with torch.autocast(b.y.device.type, dtype=dtype):
                        return reconstruct(net, theta, b).float()

                t0 = time.perf_counter()
                row = {part: mean_std(score(method, data[part], data["peak"]))[0]
                       for part in ("grid", "val")}
                row["seconds"] = time.perf_counter() - t0
                tag = (f"{name}@{k}" + ("/dihedral" if args.dihedral else "")
                       + (f"/{precision}" if precision != "float32" else ""))
                entry[tag] = row
                print(f"{op} {tag}: grid {row['grid']:.2f} val {row['val']:.2f} "
                      f"({row['seconds']:.0f} s)", flush=True)
        results["machine"] = {"platform": platform.platform(), "threads": 1,
                              "torch": torch.__version__}
        out.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(out, json.dumps(results, indent=1).encode())
    return results


if __name__ == "__main__":
    main()
