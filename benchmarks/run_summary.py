"""Summarise a finished meta-training run (``metaprior meta-train --out RUN``) as a results
JSON: wall time, outer-step times, outer loss per window and the validation trajectory.

The wall time is from ``RUN/config.json`` (written at start) to ``RUN/model.safetensors``
(written at the end), so it includes start-up, validation and checkpoints.

Usage::

    python benchmarks/run_summary.py runs/bsds-d20-fo-2000 \
        --out reproductions/results/meta_train_d20_fo2000.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_json


def summarise(run: Path, window: int = 250) -> dict:
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line]
    model = run / "model.safetensors"
    if not log or not model.is_file():
        raise SystemExit(f"{run}: no log.jsonl or model.safetensors; is the run finished?")
    seconds = [r["seconds"] for r in log]
    return {
        "run": str(run),
        "config": json.loads((run / "config.json").read_text()),
        "steps": len(log),
        "skipped_steps": sum("skipped" in r for r in log),
        "wall_minutes": (model.stat().st_mtime - (run / "config.json").stat().st_mtime) / 60,
        "step_seconds": {"median": statistics.median(seconds), "mean": statistics.mean(seconds),
                         "sum_minutes": sum(seconds) / 60},
        "outer_loss_per_window": {f"{a}-{min(a + window, len(log)) - 1}": statistics.mean(
            r["outer_loss"] for r in log[a:a + window]) for a in range(0, len(log), window)},
        "val": {r["step"]: r["val"] for r in log if "val" in r},
        "machine": machine(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", required=True, help="file name under benchmarks/results/")
    args = ap.parse_args()
    summary = summarise(args.run)
    path = write_json(args.out, summary)
    print(f"{summary['steps']} steps in {summary['wall_minutes']:.1f} min "
          f"(median step {summary['step_seconds']['median']:.2f} s); wrote {path}")


if __name__ == "__main__":
    main()
