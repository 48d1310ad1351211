"""metaprior command line. ``metaprior <command> --help`` for each command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from metaprior import __version__, pretrained
from metaprior.outputs import RunFolderError, check_output_file, check_writable_dir

THREADS_HELP = ("intra-op CPU threads (default 1: on small 2-core machines, OpenMP spin-waiting "
                "next to any other busy process makes small ops 10-100x slower with 2 threads)")


def _common(p: argparse.ArgumentParser, seed: bool = True, device: bool = True) -> None:
    if device:
        p.add_argument("--device", default="cpu", help="torch device: cpu or cuda (default cpu)")
    if seed:
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--threads", type=int, default=1, help=THREADS_HELP)


def _setup(args) -> None:
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    device = getattr(args, "device", None) or getattr(args, "run.device", None) or "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but no CUDA device is available: use "
                         "--device cpu")


# --- meta-train -------------------------------------------------------------------------------

def cmd_meta_train(args) -> None:
    from metaprior.config import build_config, explicit_values, load_config_file
    from metaprior.train import TrainConfig, meta_train

    file_values = load_config_file(args.config)
    config = build_config(TrainConfig, file_values, args)
    meta_train(config, resume=args.resume, progress=not args.no_progress,
               steps=getattr(args, "optim.steps"), overwrite=args.overwrite,
               given=explicit_values(TrainConfig, file_values, args))


def _add_meta_train(sub) -> None:
    from metaprior.config import add_dataclass_arguments
    from metaprior.train import SECTIONS

    p = sub.add_parser(
        "meta-train", help="meta-train PDNet on the training tasks (bilevel, eq. 2)",
        description="Meta-train a PDNet. Each outer step: per task, K inner steps on BSDS "
        "train+test patches, supervised outer loss on BSDS val patches, hypergradient by "
        "maml | first_order | implicit (or --objective joint: plain multi-task pre-training on "
        "the same batches, no inner step); outer Adam on their sum. Writes OUT/config.json, "
        "OUT/log.jsonl, OUT/checkpoints/, OUT/model.safetensors.")
    p.add_argument("--config", help="JSON file of overrides: {\"model\": {...}, \"meta\": {...}}")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoints/latest with its saved configuration "
                   "(--steps may extend it and --device move it; any other option that differs "
                   "from the saved value is refused)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (its files are removed only once "
                   "the new configuration and data have loaded); without it, or --resume, a "
                   "folder holding a run is refused")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    add_dataclass_arguments(p, SECTIONS)
    p.set_defaults(func=cmd_meta_train)


# --- measure / adapt / reconstruct ----------------------------------------------------------

def _read_images(folder: str, color: bool) -> list:
    from metaprior.data import list_images, load_image

    if not Path(folder).is_dir():
        raise FileNotFoundError(f"--images {folder} is not a folder of images")
    images = [load_image(p, gray=not color) for p in list_images(folder)]
    if not images:
        raise ValueError(f"--images {folder} holds no images (png, jpg, tif, bmp)")
    return images


def cmd_measure(args) -> None:
    from metaprior.measurements import save_measurements
    from metaprior.tasks import get_task

    check_output_file(args.out, "--out", ".safetensors")
    task = get_task(args.task)
    images = _read_images(args.images, args.color)
    if len({tuple(im.shape) for im in images}) > 1:
        raise ValueError(f"images in {args.images} differ in size: measure folders of "
                         f"equal-size images")
    x = torch.stack(images)
    batch = task.sample(x, torch.Generator().manual_seed(args.seed))
    path = save_measurements(args.out, batch, with_ground_truth=not args.no_ground_truth)
    print(f"wrote {path}: y {tuple(batch.y.shape)} {batch.y.dtype}, task {args.task}")


def _batches_from_images(args, task, device):
    """Fine-tuning stream from an image folder: random patches (or full images)."""
    from metaprior.data import PatchSampler

    images = _read_images(args.images, args.color)
    g = torch.Generator().manual_seed(args.seed + 1)
    if args.patch_size > 0:
        sampler = PatchSampler(images, args.patch_size, seed=args.seed)
        return lambda step: task.sample(sampler.sample(args.batch_size).to(device), g)
    return lambda step: task.sample(images[step % len(images)].unsqueeze(0).to(device), g)


def _psnr_line(model, params, batch) -> str:
    from metaprior.meta.problem import reconstruct
    from metaprior.metrics import mean_std, psnr

    with torch.no_grad():
        values = psnr(reconstruct(model, params, batch), batch.target, args_peak(batch))
    m, s = mean_std(values)
    return f"{m:.2f} ± {s:.2f} dB"


def args_peak(batch) -> float | str:
    return "max" if batch.task.startswith("mri") else 1.0


def cmd_adapt(args) -> None:
    from metaprior.adapt import AdaptConfig, fine_tune, fine_tune_run, parameters_of
    from metaprior.checkpoint import load_model, save_model
    from metaprior.measurements import load_measurements
    from metaprior.tasks import get_task

    check_output_file(args.out, "--out", ".safetensors")
    if args.ckpt_every < 0:
        raise ValueError(f"--ckpt-every must be >= 0 (0: no checkpoints), got {args.ckpt_every}")
    if (args.images is None) == (args.measurements is None):
        raise ValueError("give exactly one of --images DIR or --measurements FILE")
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.batch_size < 1 or args.patch_size < 0:
        raise ValueError(f"--batch-size must be >= 1 and --patch-size >= 0 (0: full images), "
                         f"got {args.batch_size} and {args.patch_size}")
    model, meta = load_model(args.model, args.device)
    config = AdaptConfig.from_model(meta, steps=args.steps, lr=args.lr, loss=args.loss,
                                    prox_lambda=args.prox_lambda)
    if args.measurements is not None:
        data = load_measurements(args.measurements, args.device)
        task_name = data.task
        if args.loss == "supervised" and data.target is None:
            raise ValueError(f"{args.measurements} has no ground truth: use --loss unsupervised")

        def next_batch(step):
            return data

        evaluation = data if data.target is not None else None
    else:
        if args.task is None:
            raise ValueError("--images needs --task NAME")
        task = get_task(args.task)
        task_name = task.name
        next_batch = _batches_from_images(args, task, args.device)
        evaluation = (load_measurements(args.eval_measurements, args.device)
                      if args.eval_measurements else None)
    theta = parameters_of(model)
    if evaluation is not None:
        print(f"before: {_psnr_line(model, theta, evaluation)}")
    from tqdm import tqdm

    with tqdm(total=config.steps, desc="adapt", unit="step", disable=args.no_progress,
              dynamic_ncols=True) as bar:
        def progress(state, loss):
            bar.n = state.step
            bar.set_postfix(loss=f"{loss:.4g}")
            bar.refresh()

        if args.ckpt_every or args.resume:
            recipe = {"model": args.model, "task": task_name, "seed": args.seed,
                      "data": ({"measurements": args.measurements} if args.measurements else
                               {"images": args.images, "patch_size": args.patch_size,
                                "batch_size": args.batch_size, "color": args.color})}
            result = fine_tune_run(model, theta, next_batch, config,
                                   Path(args.out).with_name(Path(args.out).stem + ".run"),
                                   recipe, args.ckpt_every, args.resume, callback=progress,
                                   log=bar.write)
        else:
            result = fine_tune(model, theta, next_batch, config, callback=progress)
    if evaluation is not None:
        print(f"after {config.steps} {config.loss} steps: "
              f"{_psnr_line(model, result.params, evaluation)}")
    path = save_model(args.out, model, result.params,
                      metadata={**meta, "adapted": {"task": task_name, **config.__dict__}})
    print(f"wrote {path}")


def cmd_reconstruct(args) -> None:
    from metaprior.adapt import parameters_of
    from metaprior.checkpoint import load_model
    from metaprior.measurements import load_measurements
    from metaprior.meta.problem import reconstruct

    out = check_writable_dir(args.out, "--out")
    model, meta = load_model(args.model, args.device)
    batch = load_measurements(args.measurements, args.device)
    adapted_to = meta.get("adapted", {}).get("task") if isinstance(meta.get("adapted"),
                                                                    dict) else None
    if adapted_to and adapted_to != batch.task:
        print(f"warning: the model was adapted to task {adapted_to!r}, the measurements are "
              f"of task {batch.task!r}", file=sys.stderr)
    with torch.no_grad():
        x_hat = reconstruct(model, parameters_of(model), batch)
    if not bool(torch.isfinite(x_hat).all()):
        raise FloatingPointError("reconstruction is not finite; nothing written")
    out.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    written = set()
    for i, img in enumerate(x_hat.clamp(0, 1).cpu()):
        arr = (img.permute(1, 2, 0).squeeze(-1).numpy() * 255).round().astype("uint8")
        tmp = out / f".recon_{i:03d}.png.tmp-{os.getpid()}"
        Image.fromarray(arr).save(tmp, format="PNG")
        os.replace(tmp, out / f"recon_{i:03d}.png")
        written.add(f"recon_{i:03d}.png")
    for stale in out.glob("recon_*.png"):  # an earlier, larger batch's extra images
        if stale.name not in written:
            stale.unlink()
    print(f"wrote {len(x_hat)} image(s) to {out}")
    if batch.target is not None:
        print(f"PSNR: {_psnr_line(model, parameters_of(model), batch)}")


def _add_io(sub) -> None:
    p = sub.add_parser("measure", help="simulate measurements of a task from an image folder")
    p.add_argument("--task", required=True, help="task name: registered (sr2, mri4, ...), "
                   "parametrised (sr3, mri8, inpaint-0.7, ...) or from --plugin")
    p.add_argument("--images", required=True, help="folder of equal-size images")
    p.add_argument("--out", required=True, help="output .safetensors")
    p.add_argument("--color", action="store_true", help="keep RGB (default: grayscale)")
    p.add_argument("--no-ground-truth", action="store_true", help="store y only")
    _common(p, device=False)
    p.set_defaults(func=cmd_measure)

    p = sub.add_parser("adapt", help="fine-tune a (meta-)model on a task, with or without "
                       "ground truth")
    p.add_argument("--model", required=True,
                   help="model .safetensors, checkpoint folder, meta-train output folder or "
                   f"shipped model name ({', '.join(pretrained.available())})")
    p.add_argument("--images", help="folder of clean images: measurements simulated per step")
    p.add_argument("--task", help="task of --images (e.g. sr2, sr3, inpaint-0.7, or one "
                   "registered by --plugin)")
    p.add_argument("--measurements", help="measurement file (`metaprior measure`): adapt on it")
    p.add_argument("--eval-measurements", help="with --images: held-out measurement file to "
                   "score before/after")
    p.add_argument("--steps", type=int, default=50, help="Adam steps (default 50)")
    p.add_argument("--loss", choices=["supervised", "unsupervised", "equivariant"],
                   default="unsupervised",
                   help="inner loss (default unsupervised: measurement consistency, no ground "
                   "truth; equivariant: plus the 90°-rotation equivariant-imaging term, no ground "
                   "truth either)")
    p.add_argument("--lr", type=float, default=None, help="default: the model's inner_lr "
                   "(with learned per-layer step sizes, --lr rescales them all)")
    p.add_argument("--prox-lambda", type=float, default=None,
                   help="λ of λ/2‖φ−θ‖² (default: the model's prox_lambda)")
    p.add_argument("--patch-size", type=int, default=64, help="with --images; 0 = full images")
    p.add_argument("--batch-size", type=int, default=8, help="with --images (default 8)")
    p.add_argument("--color", action="store_true", help="with --images: keep RGB")
    p.add_argument("--out", required=True, help="adapted model .safetensors")
    p.add_argument("--ckpt-every", type=int, default=0,
                   help="for long runs: checkpoint the adapted weights and optimizer state every "
                   "N steps under <out stem>.run/checkpoints (default 0: none)")
    p.add_argument("--resume", action="store_true",
                   help="continue the latest checkpoint under <out stem>.run/checkpoints, exactly "
                   "as an unbroken run (same model, data, loss and lr; --steps may grow)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _common(p)
    p.set_defaults(func=cmd_adapt)

    p = sub.add_parser("reconstruct", help="apply a model to a measurement file, write PNGs")
    p.add_argument("--model", required=True,
                   help="model .safetensors, run folder or shipped model name")
    p.add_argument("--measurements", required=True, help="measurement file")
    p.add_argument("--out", required=True, help="output folder")
    _common(p, seed=False)
    p.set_defaults(func=cmd_reconstruct)


# --- demo / linear --------------------------------------------------------------------------

def cmd_demo(args) -> None:
    from metaprior.demo import DemoConfig, run_demo

    check_writable_dir(args.out, "--out")
    run_demo(DemoConfig(seed=args.seed, out=args.out), device=args.device)


def _table1_config(args):
    from dataclasses import replace

    from metaprior.config import load_config_file, replace_from_dict
    from metaprior.experiments.table1 import Table1Config, quick_config

    config = quick_config() if args.quick else Table1Config()
    overrides = load_config_file(args.suite_config) if args.suite_config else {}
    if "seed" in overrides:
        raise ValueError("--suite-config: give the seed with --seed, not in the JSON")
    if "lr" in overrides and overrides.get("lr_grid", True):
        raise ValueError("--suite-config: lr is used only with \"lr_grid\": [] (otherwise each "
                         "run's lr is chosen from lr_grid on held-out fine-tuning images)")
    config = replace_from_dict(config, overrides, "--suite-config")
    if args.suite_tasks:
        config = replace(config, tasks=tuple(args.suite_tasks.split(",")))
    if args.scratch_models:
        config = replace(config, scratch_models=tuple(args.scratch_models.split(",")))
    return replace(config, seed=args.seed)


#: Where each JSON-writing suite puts its results when --out is not given.
SUITE_OUT = {"table1": "runs/table1.json", "depth": "runs/training_tasks_depth.json"}


def cmd_evaluate_suite(args) -> None:
    from metaprior.experiments.table1 import run_depth_sweep, run_table1, train_scratch

    config = _table1_config(args)
    if args.suite == "scratch":
        if len(config.tasks) != 1 or args.scratch_steps is None:
            raise ValueError("--suite scratch needs one --suite-tasks TASK and --scratch-steps N")
        if not (args.out or "").endswith(".safetensors"):
            raise ValueError("--suite scratch writes a model: give --out PATH.safetensors")
        path = train_scratch(config.tasks[0], config, args.scratch_steps, args.out,
                             args.data_root, args.device, resume=args.resume)
        print(f"wrote {path}")
        return
    out = args.out or SUITE_OUT[args.suite]
    check_output_file(out, "--out", ".json")
    if args.suite == "depth":
        results = run_depth_sweep(config, out, args.data_root, args.device)
    else:
        results = run_table1(config, out, args.data_root, args.device, args.grid_cache)
    print(f"wrote {out} ({results['wall_seconds'] / 60:.1f} min); "
          f"figures: metaprior report --results {out}")


def cmd_evaluate(args) -> None:
    from metaprior.adapt import AdaptConfig, parameters_of
    from metaprior.checkpoint import load_model
    from metaprior.evaluate import load_eval_images, summarize, task_table

    if args.resume and args.suite != "scratch":
        raise ValueError("--resume continues a --suite scratch run only")
    if args.suite:
        return cmd_evaluate_suite(args)
    if args.model is None:
        raise ValueError("evaluate needs --model (or --suite table1)")
    if args.adapt_steps < 0:
        raise ValueError(f"--adapt-steps must be >= 0 (0: no adaptation), got "
                         f"{args.adapt_steps}")
    if args.json:
        check_output_file(args.json, "--json", ".json")
    model, meta = load_model(args.model, args.device)
    images = [im.to(args.device) for im in load_eval_images(args.images, args.data_root)]
    adapt = None
    if args.adapt_steps:
        adapt = AdaptConfig.from_model(meta, steps=args.adapt_steps)
    rows = task_table(model, parameters_of(model), args.tasks.split(","), images, args.seed,
                      adapt)
    extra = f" {'adapted (dB)':>15s}" if adapt else ""
    print(f"{'task':10s} {'A^+ y (dB)':>15s} {'model (dB)':>15s}{extra}   [{args.images}, "
          f"{len(images)} images, peak 1]")
    for r in rows:
        extra = f" {summarize(r['adapted']):>15s}" if adapt else ""
        print(f"{r['task']:10s} {summarize(r['pseudo_inverse']):>15s} "
              f"{summarize(r['model']):>15s}{extra}")
    if adapt:
        print(f"adapted: {adapt.steps} {adapt.loss} {adapt.optimizer} steps (lr {adapt.lr}, "
              f"λ {adapt.prox_lambda}) on each image's own measurements"
              + (" and ground truth" if adapt.loss == "supervised" else ""))
    if args.json:
        from metaprior.checkpoint import write_bytes_atomic

        write_bytes_atomic(args.json, json.dumps(rows, indent=1).encode())


def cmd_report(args) -> None:
    from metaprior.experiments.report import write_report

    results = Path(args.results)
    if not results.is_file():
        raise FileNotFoundError(f"--results {args.results} does not exist: run "
                                f"metaprior evaluate --suite table1 (or --suite depth) first")
    figures = args.figures or str(results.with_name(results.stem + "_figures"))
    target = f"the table in {args.markdown} and " if args.markdown else ""
    print(f"rewriting {target}the figures in {figures}/ from {args.results}")
    for path in write_report(results, figures, args.markdown or None):
        print(f"wrote {path}")


def cmd_linear(args) -> None:
    from dataclasses import replace

    from metaprior.experiments.linear import (
        LinearExperimentConfig,
        exact_inner_config,
        run_linear_experiment,
    )

    if args.inner_solver == "exact":
        config = exact_inner_config(seed=args.seed)
    else:
        config = LinearExperimentConfig(seed=args.seed)
    check_writable_dir(args.out, "--out")
    if args.outer_steps is not None:
        if args.outer_steps < 1:
            raise ValueError(f"--outer-steps must be >= 1, got {args.outer_steps}")
        config = replace(config, outer_steps=args.outer_steps)
    result = run_linear_experiment(config, Path(args.out), sweep=args.sweep)
    print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=1)[:4000])
    print(f"wrote {Path(args.out) / 'figure2.png'} and {Path(args.out) / 'linear.json'}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metaprior", description=__doc__)
    parser.add_argument("--version", action="version", version=f"metaprior {__version__}")
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                        help="a Python file run before the command, e.g. one that registers "
                        "your own operators as tasks (metaprior.register_task); repeatable")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="meta-train on scikit-image's pictures, adapt to SR x2 "
                       "without ground truth, print a PSNR table (no data root needed)")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    _common(p)
    p.set_defaults(func=cmd_demo)
    _add_meta_train(sub)
    _add_io(sub)
    p = sub.add_parser("evaluate", help="PSNR of a model on each task (Set3C, the demo "
                       "pictures or a folder)")
    p.add_argument("--model", default=None,
                   help="model .safetensors, run folder or shipped model name")
    p.add_argument("--tasks", default="denoise,tv,deblur,inpaint,sr2,mri4",
                   help="comma-separated task names: registered, parametrised (sr3, mri8, "
                   "inpaint-0.7, ...) or registered by --plugin")
    p.add_argument("--images", default="set3c", help="set3c | demo | a folder (default set3c)")
    p.add_argument("--data-root", default=None, help="data root (default $METAPRIOR_DATA)")
    p.add_argument("--json", default=None, help="also write the per-image PSNRs here")
    p.add_argument("--adapt-steps", type=int, default=0,
                   help="also score after N steps of the model's inner problem on each test "
                   "image (the paper's Fig. 3 inner model; default 0: off)")
    g = p.add_argument_group("suites (the paper's Table 1 and Fig. 3; need the data root)")
    g.add_argument("--suite", choices=["table1", "scratch", "depth"], default=None,
                   help="table1: the Table 1 protocol: SR x2 and MRI x4, baselines with grid "
                   "search on fine-tuning images, shipped meta-models / joint pre-training / "
                   "random init fine-tuned 0-50 steps, supervised and unsupervised; scratch: "
                   "train the paper's from-scratch PDNet for one task (--scratch-steps) and "
                   "write it to --out (.safetensors); depth: the paper's Fig. 3, the "
                   "meta-models listed as depth_models in --suite-config scored on T1-T4 "
                   "(Set3C), theta and one inner step")
    g.add_argument("--out", default=None,
                   help="suite results JSON (default runs/table1.json, or "
                   "runs/training_tasks_depth.json for --suite depth); table1 also writes the "
                   "first test image of every method to <stem>_visuals.safetensors")
    g.add_argument("--grid-cache", default=None,
                   help="JSON of grid-search choices to reuse and update (e.g. "
                   "benchmarks/results/table1_grid.json)")
    g.add_argument("--suite-tasks", default=None,
                   help="comma-separated tasks for the suite (default sr2,mri4; mri* tasks use "
                   "the fastMRI knee protocol, any other task the BSDS500 / Set3C one)")
    g.add_argument("--scratch-steps", type=int, default=None,
                   help="--suite scratch: training steps (paper: 10k)")
    g.add_argument("--resume", action="store_true",
                   help="--suite scratch: continue from the latest checkpoint under "
                   "<out stem>.run/checkpoints (written every 500 steps)")
    g.add_argument("--scratch-models", default=None,
                   help="table1: comma-separated TASK=MODEL from-scratch PDNets to score as "
                   "the paper's PDNet column (e.g. sr2=runs/scratch-sr2.safetensors)")
    g.add_argument("--suite-config", default=None,
                   help="JSON of Table1Config overrides (see "
                   "metaprior.experiments.table1.Table1Config)")
    g.add_argument("--quick", action="store_true",
                   help="smoke-sized protocol: 2 steps, 1 test image, 1 grid image")
    _common(p)
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("report", help="rebuild the Table 1 figures (fine-tuning curves, "
                       "visual comparisons) and the RESULTS.md table from the suite's JSON "
                       "(or, from a --suite depth JSON, the Fig. 3 depth plot and its table)")
    p.add_argument("--results", required=True,
                   help="the JSON of metaprior evaluate --suite table1 (or --suite depth)")
    p.add_argument("--figures", default=None,
                   help="figure folder (default: <results stem>_figures beside the JSON)")
    p.add_argument("--markdown", default=None,
                   help="also rewrite the table1 (or depth) section between its markers in "
                   "this markdown file (e.g. docs/RESULTS.md; default: none)")
    p.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("linear", help="linear Gaussian toy of the paper's Sec. 3: meta-train θy on "
                       "masks of area A, fine-tune without ground truth on area B, Fig. 2 + JSON")
    p.add_argument("--out", default="runs/linear", help="output folder (default runs/linear)")
    p.add_argument("--outer-steps", type=int, default=None, help="outer steps (default 180)")
    p.add_argument("--sweep", action="store_true",
                   help="also sweep the number of training placements (1, 4, 8, all; ~8.5 min)")
    p.add_argument("--inner-solver", choices=["adam", "exact"], default="adam",
                   help="adam: 20 Adam inner steps (the paper, default); exact: the inner "
                   "problem solved in closed form with the settings of exact_inner_config()")
    _common(p, device=False)
    p.set_defaults(func=cmd_linear)
    return parser


def load_plugin(path: str) -> None:
    """Run the Python file ``path`` (its tasks register themselves), with a one-line error
    if it is missing or fails."""
    import importlib.util

    file = Path(path)
    if not file.is_file() or file.suffix != ".py":
        raise FileNotFoundError(f"--plugin {path} is not a .py file")
    spec = importlib.util.spec_from_file_location(f"metaprior_plugin_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's code: report it in one line, whatever it raised
        raise RuntimeError(f"--plugin {path} failed: {type(e).__name__}: {e}") from None


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        for path in args.plugin:
            load_plugin(path)
        _setup(args)
        args.func(args)
    except (ValueError, OSError, FloatingPointError, RuntimeError, RunFolderError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        message = lines[0][:500] if lines else type(e).__name__  # one line, whatever e holds
        raise SystemExit(f"error: {message}") from None


if __name__ == "__main__":
    sys.exit(main())
