"""PSNR on the validation operators against fine-tuning steps and against fine-tuning wall
time: every model run of one or more ``reproductions.solver_validation`` result files, one
column per operator, with the classical solvers of those files as horizontal lines (their
seconds per image in the legend).

    python -m reproductions.validation_curves \
        reproductions/results/solver_meta_vs_joint_dpir24.json \
        reproductions/results/solver_validation_200.json \
        --out reproductions/figures/validation_curves.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from metaprior.extras import require

BASELINE_STYLES = {"tv": ":", "tgv": (0, (1, 3)), "wavelet": (0, (3, 3)),
                   "dpir-ffdnet": "--", "dpir24-ffdnet": (0, (6, 2, 1, 2))}


def merged(paths: list[Path]) -> dict[str, dict]:
    """``{operator: {"baselines": {...}, "models": {...}}}`` over the files, in their order (a
    later file's entry of the same name replaces an earlier one)."""
    out: dict[str, dict] = {}
    for path in paths:
        results = json.loads(path.read_text())
        if "operators" not in results:
            raise ValueError(f"{path} is not a result file of reproductions.solver_validation "
                             f"(no 'operators')")
        for op, entry in results["operators"].items():
            slot = out.setdefault(op, {"baselines": {}, "models": {}})
            slot["baselines"].update(entry.get("baselines", {}))
            slot["models"].update(entry.get("models", {}))
    return out


def draw(operators: dict[str, dict], path: Path) -> Path:
    """The figure: row 1 PSNR against steps (log axis, step 0 drawn at 0.5), row 2 against
    ``step × s_per_step`` of each run."""
    require("matplotlib", "the validation curves")
    from matplotlib.figure import Figure

    names = list(operators)
    fig = Figure(figsize=(4.2 * len(names), 7.6))
    axes = fig.subplots(2, len(names), squeeze=False)
    for column, op in enumerate(names):
        by_steps, by_time = axes[0, column], axes[1, column]
        for tag, run in operators[op]["models"].items():
            steps = sorted(int(s) for s in run["psnr"])
            psnrs = [run["psnr"][str(s)] for s in steps]
            label = f"{tag.split('/')[0]} (lr {run['lr']:g}, {run['s_per_step']:.2g} s/step)"
            by_steps.plot([max(s, 0.5) for s in steps], psnrs, marker="o", label=label)
            by_time.plot([s * run["s_per_step"] for s in steps], psnrs, marker="o",
                         label=label)
        for name, row in operators[op]["baselines"].items():
            seconds = row.get("sec_per_image")
            label = f"{name} ({seconds:.2g} s/image)" if seconds else name
            for ax in (by_steps, by_time):
                ax.axhline(row["psnr"], color="gray", ls=BASELINE_STYLES.get(name, "-."),
                           label=label)
        by_steps.set_xscale("log")
        by_steps.set_title(op)
        by_steps.set_xlabel("fine-tuning steps (0 drawn at 0.5)")
        by_time.set_xlabel("fine-tuning wall time (s, one thread)")
        for ax in (by_steps, by_time):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6, loc="lower right")
    for row in axes:
        row[0].set_ylabel("PSNR (dB), validation images")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", type=Path, help="solver_validation result files")
    ap.add_argument("--out", type=Path, required=True, help="the PNG written")
    args = ap.parse_args(argv)
    path = draw(merged(args.results), args.out)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
