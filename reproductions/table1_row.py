"""Reproduce one row of Table 1: a baseline on SR ×2 (Set3C), beside the paper's number.

The protocol is the full one: the baseline's weight is grid-searched on BSDS500 fine-tuning
crops, never on the test images, and the grid is extended past an edge choice. Then Set3C is
scored. It needs the data root (``--data-root`` or ``METAPRIOR_DATA``). ``--quick`` runs it
on one test image and one grid image, as a check that everything is in place.

    python -m reproductions.table1_row [--baseline tgv] [--task sr2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from metaprior.cli import one_line_errors
from metaprior.runtime import configure_cpu
from reproductions.table1 import PAPER_TABLE1, Table1Config, quick_config, run_table1


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="tgv", help="wavelet, tv, tgv or dpir-ffdnet")
    ap.add_argument("--task", default="sr2", help="sr2 or mri4 (or any task name)")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--quick", action="store_true", help="one test image, one grid image")
    args = ap.parse_args(argv)
    configure_cpu(1)  # as every command: one thread, the heap kept

    base = quick_config() if args.quick else Table1Config()
    config = replace(base, tasks=(args.task,), baselines=(args.baseline,), pdnet=False,
                     training_tasks=False)
    with tempfile.TemporaryDirectory() as tmp:
        results = run_table1(config, Path(tmp) / "row.json", args.data_root,
                             log=lambda *_: None)
    row = results["tasks"][args.task]["baselines"][args.baseline]
    psnr = torch.tensor(row["psnr"])
    paper = PAPER_TABLE1.get(args.task, {}).get(args.baseline.split("-")[0])
    std = float(psnr.std()) if len(psnr) > 1 else 0.0
    print(f"{args.baseline} on {args.task}: {float(psnr.mean()):.2f} ± {std:.2f} dB over "
          f"{len(psnr)} test image(s); weight {row['hyper']:g} chosen on fine-tuning images "
          f"from {json.dumps(row['grid'])}")
    if paper:
        print(f"the paper: {paper[0]:.2f} ± {paper[1]:.2f} dB")
    return row


if __name__ == "__main__":
    one_line_errors(main)
