r"""Recipe study of meta-training: which meta-learned initialisation is a prior on operators it
never saw.

Every recipe is a meta-training run (``metaprior meta-train``, its command recorded with its
wall time and step rate); this script scores the run's model on validation operators only,
never on Set3C or the MRI test slices:

* ``sr2``: super-resolution ×2 (decimation) on BSDS500 *val* centre crops;
* ``sr4``: super-resolution ×4 on the same crops (an operator of our own, outside T1–T4 and
  the paper's unseen tasks);
* ``fourier4``: Cartesian Fourier sampling ×4 (random columns, centre fraction 0.08, mask
  seed 1, not the MRI×4 mask) of the same crops, the natural-image proxy of MRI.

For each operator: PSNR of θ itself, then fine-tuning from θ on BSDS500 train+test patches
(the Table 1 SR stream: 8 patches of 64×64 a step; 2 patches of 128×128 for ``fourier4``,
whose mask depends on the image size), supervised and without ground truth (measurement
consistency; also the equivariant loss on ``sr2``), scored after 0, 1, 5 and ``--steps``
steps, with the model's own step rule (Adam, or the SGD it was meta-trained with;
``--optimizer`` overrides it). The fine-tuning lr is chosen per (recipe, operator, loss) from
``--lr-grid`` by the PSNR after ``--steps`` steps, as Table 1 chooses it on held-out images;
every lr's curve is kept.

Usage::

    python -m reproductions.meta_prior_study score --recipe NAME --model PATH_OR_RUN \
        --about "what differs" [--command "the meta-train command"]
    python -m reproductions.meta_prior_study figure  # reproductions/figures/meta_prior_study.png

Results accumulate in ``reproductions/results/meta_prior_study.json`` (one entry per recipe).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from metaprior.adapt import AdaptConfig, parameters_of
from metaprior.checkpoint import load_model
from metaprior.data import PatchSampler, bsds500
from metaprior.evaluate import pseudo_inverse, score, search_lr
from metaprior.extras import require
from metaprior.meta.problem import reconstruct
from metaprior.metrics import mean_std
from metaprior.runtime import configure_cpu
from metaprior.tasks import mri_task, sr_task
from reproductions.machine import machine_info
from reproductions.table1 import centre_crop, spread, write_json

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "meta_prior_study.json"
FIGURE = HERE / "figures" / "meta_prior_study.png"
CROP = 128
VAL_IMAGES = 8


def operators() -> dict:
    """name -> (task, fine-tuning patch side, patches per step, losses scored)."""
    return {
        "sr2": (sr_task(2), 64, 8, ("supervised", "unsupervised", "equivariant")),
        "sr4": (sr_task(4), 64, 8, ("supervised", "unsupervised")),
        "fourier4": (replace(mri_task(4, seed=1), name="fourier4", peak=1.0), CROP, 2,
                     ("supervised", "unsupervised")),
    }


def validation_images(data_root=None) -> list[torch.Tensor]:
    """``VAL_IMAGES`` BSDS500 val images evenly spread over the split, centre-cropped."""
    return [centre_crop(im, CROP) for im in spread(bsds500(data_root, ("val",)), VAL_IMAGES)]


def score_model(model, theta, steps: int, lr_grid, data_root=None, seed: int = 0,
                log=print, rule: AdaptConfig | None = None) -> dict:
    """The per-operator scores of one initialisation θ (see the module docstring). ``rule``:
    the model's own step rule (optimizer, learned per-layer step sizes, which ``lr``
    rescales); default Adam."""
    rule = rule or AdaptConfig()
    train = bsds500(data_root, ("train", "test"))
    images = validation_images(data_root)
    keep = sorted({n for n in (0, 1, 5) if n <= steps} | {steps})
    out = {}
    for name, (task, patch, batch, losses) in operators().items():
        g = torch.Generator().manual_seed(seed + 3)
        val = [task.sample(im.unsqueeze(0), g) for im in images]

        def stream(task=task, patch=patch, batch=batch):
            sampler = PatchSampler(train, patch, seed=seed)
            gen = torch.Generator().manual_seed(seed + 1)
            return lambda step: task.sample(sampler.sample(batch), gen)

        entry = {"theta": mean_std(score(lambda b: reconstruct(model, theta, b), val))[0],
                 "pseudo_inverse": mean_std(score(pseudo_inverse, val))[0]}
        for loss in losses:
            curves: dict = {}

            def record(lr: float, run: dict | None, curves=curves) -> None:
                curves[lr] = run and {str(n): v for n, v in run["psnr"].items()}

            best, _ = search_lr(model, theta, stream,
                                replace(rule, steps=steps, loss=loss, prox_lambda=0.0), val,
                                lr_grid, keep=keep, on_run=record)
            grid = {str(lr): curves[lr] for lr in sorted(curves)}
            entry[loss] = {"best_lr": float(best), "curve": grid[str(best)], "grid": grid}
            log(f"  {name:8s} {loss:12s} theta {entry['theta']:6.2f}  "
                + "  ".join(f"{n}: {grid[str(best)][str(n)]:6.2f}" for n in keep)
                + f"  (lr {best})")
        out[name] = entry
    return out


def _load_results() -> dict:
    if OUT.exists():
        return json.loads(OUT.read_text())
    return {"recipes": {}}


def cmd_score(args) -> None:
    configure_cpu(1)  # as every command: one thread, the heap kept
    if args.model == "random":
        from metaprior.models import PDNet, PDNetConfig

        torch.manual_seed(args.seed)
        model = PDNet(PDNetConfig(depth=args.depth))
        meta = {"pdnet_config": {"depth": args.depth}}
    else:
        model, meta = load_model(args.model)
    theta = parameters_of(model)
    t0 = time.perf_counter()
    print(f"{args.recipe}: {args.model}")
    rule = AdaptConfig.from_model(meta) if "meta_config" in meta else None
    if args.optimizer is not None:
        rule = replace(rule or AdaptConfig(), optimizer=args.optimizer)
    scores = score_model(model, theta, args.steps, args.lr_grid, args.data_root, args.seed,
                         rule=rule)
    train = {}
    run = Path(args.model)
    if run.is_dir() and (run / "log.jsonl").exists():
        lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x]
        secs = [x["seconds"] for x in lines]
        train = {"steps": len(lines), "sum_of_step_seconds": round(sum(secs), 1),
                 "seconds_per_step": round(sum(secs) / max(len(secs), 1), 3),
                 "final_outer_loss_mean_last50": sum(x["outer_loss"] for x in lines[-50:])
                 / max(len(lines[-50:]), 1)}
    with open(OUT.with_suffix(".lock"), "w") as lock:  # scorers may run side by side
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = _load_results()
        results["protocol"] = {
            "validation": f"{VAL_IMAGES} BSDS500 val images, {CROP}x{CROP} centre crops",
            "operators": {k: dict(v[0].params, patch=v[1], batch=v[2])
                          for k, v in operators().items()},
            "finetune": "from theta on BSDS500 train+test patches, seed 0, no proximal term, "
                        "with the model's own step rule (Adam unless it was meta-trained "
                        "otherwise; learned per-layer step sizes rescaled by lr)",
            "steps": args.steps,
            "lr_choice": "per (recipe, operator, loss): best PSNR after `steps` steps"}
        results["machine"] = machine_info()
        results["recipes"][args.recipe] = {
            "about": args.about, "command": args.command, "model": args.model,
            "lr_grid": list(args.lr_grid), "optimizer": (rule or AdaptConfig()).optimizer,
            "meta_config": meta.get("meta_config"), "pdnet_config": meta.get("pdnet_config"),
            "inner_lrs": meta.get("inner_lrs"),
            "train": train, "scores": scores,
            "score_seconds": round(time.perf_counter() - t0, 1)}
        write_json(OUT, results, indent=2)
    print(f"wrote {OUT}")


def table(results: dict) -> str:
    """Markdown: per recipe, PSNR of θ and after 1 / 20 steps for every (operator, loss)."""
    recipes = results["recipes"]
    panels = [(op, loss) for op, (_, _, _, losses) in operators().items() for loss in losses]
    tags = {"supervised": "sup", "unsupervised": "MC", "equivariant": "EI"}
    head = "| recipe | " + " | ".join(f"{op} {tags[loss]}" for op, loss in panels) + " |"
    lines = [head, "|" + "---|" * (len(panels) + 1)]
    for name, rec in recipes.items():
        cells = []
        for op, loss in panels:
            entry = rec["scores"][op]
            curve = entry[loss]["curve"]
            last = max(curve, key=int)
            cells.append(f"{entry['theta']:.2f} / {curve['1']:.2f} / {curve[last]:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cmd_table(args) -> None:
    print(table(_load_results()))


def cmd_figure(args) -> None:
    matplotlib = require("matplotlib", "the recipe study's figure")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = _load_results()
    recipes = results["recipes"]
    panels = [(op, loss) for op, (_, _, _, losses) in operators().items() for loss in losses]
    cols, legend_cols = 4, 4
    rows = -(-len(panels) // cols)
    legend_height = 0.25 * -(-len(recipes) // legend_cols) + 0.3  # inches, below the panels
    height = 3.4 * rows + legend_height
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, height), squeeze=False)
    for ax, (op, loss) in zip(axes.flat, panels, strict=False):
        for i, (name, rec) in enumerate(recipes.items()):
            curve = rec["scores"][op][loss]["curve"]
            xs = sorted(int(n) for n in curve)
            ax.plot(xs, [curve[str(n)] for n in xs], marker="os^D"[i // 10 % 4], ms=3,
                    label=name, color=plt.cm.tab20(i % 20))  # distinct beyond 10 recipes
        ax.set_title(f"{op}, {loss}", fontsize=10)
        ax.set_xlabel("fine-tuning steps")
        ax.set_ylabel("PSNR (dB), BSDS500 val crops")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=legend_cols, fontsize=9,
               frameon=False)
    fig.tight_layout(rect=(0, legend_height / height, 1, 1))
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURE, dpi=120)
    print(f"wrote {FIGURE}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("score", help="score one recipe's model on the validation operators")
    s.add_argument("--recipe", required=True, help="name of the recipe (the JSON key)")
    s.add_argument("--model", required=True,
                   help="model file, run folder, model name, or 'random' (fresh PDNet)")
    s.add_argument("--about", default="", help="what the recipe changes")
    s.add_argument("--command", default="", help="the command that trained the model")
    s.add_argument("--steps", type=int, default=20, help="fine-tuning steps (default 20)")
    s.add_argument("--lr-grid", type=float, nargs="+", default=[3e-4, 1e-3])
    s.add_argument("--optimizer", choices=("adam", "sgd"), default=None,
                   help="fine-tune with this step rule instead of the model's own (SGD steps "
                        "are lr times the gradient: give an --lr-grid of their scale, e.g. "
                        "3e-3 1e-2 3e-2)")
    s.add_argument("--depth", type=int, default=20, help="depth of the 'random' model")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--data-root", default=None)
    s.set_defaults(fn=cmd_score)
    f = sub.add_parser("figure", help="PSNR vs fine-tuning steps per recipe")
    f.set_defaults(fn=cmd_figure)
    t = sub.add_parser("table", help="markdown table: theta / 1 step / last step per recipe")
    t.set_defaults(fn=cmd_table)
    args = parser.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
