"""metaprior command line. ``metaprior <command> --help`` for each command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch

from metaprior import __version__, pretrained
from metaprior.outputs import (
    RunFolderError,
    check_output_file,
    check_writable_dir,
    write_or_keep,
)

THREADS_HELP = ("intra-op CPU threads (default 1: on small 2-core machines, OpenMP spin-waiting "
                "next to any other busy process makes small ops 10-100x slower with 2 threads)")


@dataclass(frozen=True)
class MeasureOptions:
    task: str  # task: registered (sr2, mri4), parametrised (sr3, inpaint-0.7) or from --plugin
    images: str  # folder of equal-size images
    out: str  # output .safetensors
    color: bool = False  # keep RGB (default: grayscale)
    no_ground_truth: bool = False  # store y only
    seed: int = 0  # random seed of the operator and the noise


@dataclass(frozen=True)
class AdaptData:
    images: str | None = None  # folder of clean images: measurements simulated per step
    task: str | None = None  # task of --images (e.g. sr2, sr3, inpaint-0.7, or from --plugin)
    measurements: str | None = None  # measurement file (`metaprior measure`): adapt on it
    eval_measurements: str | None = None  # with --images: held-out measurements to score
    patch_size: int = 64  # with --images: patch side (0 = full images)
    batch_size: int = 8  # with --images: patches per step
    color: bool = False  # with --images: keep RGB


@dataclass(frozen=True)
class AdaptRun:
    model: str  # model .safetensors, checkpoint or run folder, or shipped model name
    out: str  # adapted model .safetensors
    ckpt_every: int = 0  # checkpoint every N steps under <out stem>.run/ (0: none)
    resume: bool = False  # continue the latest checkpoint under <out stem>.run/ exactly
    no_progress: bool = False  # no progress bar
    seed: int = 0  # random seed of the patch stream
    device: str = "cpu"  # torch device: cpu or cuda


@dataclass(frozen=True)
class ReconstructOptions:
    model: str  # model .safetensors, run folder or shipped model name
    measurements: str  # measurement file
    out: str  # output folder of PNGs
    device: str = "cpu"  # torch device: cpu or cuda


@dataclass(frozen=True)
class DeviceOptions:
    device: str = "cpu"  # torch device: cpu or cuda


@dataclass(frozen=True)
class EvaluateOptions:
    model: str | None = None  # model .safetensors, run folder or shipped model name
    tasks: tuple[str, ...] = ("denoise", "tv", "deblur", "inpaint", "sr2", "mri4")  # task names
    images: str = "set3c"  # set3c | demo | a folder
    data_root: str | None = None  # data root (default $METAPRIOR_DATA)
    json: str | None = None  # also write the per-image PSNRs here
    adapt_steps: int = 0  # also score after N inner steps on each image (Fig. 3; 0: off)
    suite: str | None = None  # table1 | scratch | depth: the paper's protocols
    out: str | None = None  # suite JSON (default runs/<suite>.json) or scratch model
    grid_cache: str | None = None  # JSON of grid-search choices to reuse and update
    scratch_steps: int | None = None  # --suite scratch: training steps (paper: 10k)
    resume: bool = False  # --suite scratch: continue from <out stem>.run/checkpoints
    quick: bool = False  # smoke-sized suite: 2 steps, 1 test image, 1 grid image
    seed: int = 0  # random seed (and the suite's)
    device: str = "cpu"  # torch device: cpu or cuda


@dataclass(frozen=True)
class ReportOptions:
    results: str  # the JSON of metaprior evaluate --suite table1 (or --suite depth)
    figures: str | None = None  # figure folder (default: <results stem>_figures)
    markdown: str | None = None  # also rewrite the table between its markers in this file


@dataclass(frozen=True)
class LinearRun:
    out: str = "runs/linear"  # output folder
    sweep: bool = False  # also sweep the number of training placements (~8.5 min)
    preset: str = "paper"  # paper (20 Adam inner steps) or exact (exact_inner_config())


def _add_config_flag(p: argparse.ArgumentParser, sections: dict[str, type]) -> None:
    names = ", ".join(f'"{k}"' for k in sections)
    p.add_argument("--config", help=f"JSON file of options by section ({names}); flags win")
    p.add_argument("--threads", type=int, default=1, help=THREADS_HELP)


def _resolve(args, sections: dict[str, type], extra: tuple[str, ...] = ()) -> dict:
    """Every section of a command from its dataclass defaults, ``--config`` and the flags
    (in that order of precedence); the fields are also set on ``args`` by name. Sections in
    ``extra`` may appear in the file and are resolved by the command itself."""
    from metaprior.config import build_section, check_sections, load_config_file

    file_values = load_config_file(args.config)
    check_sections(file_values, (*sections, *extra))
    resolved = {name: build_section(name, cls, file_values, args)
                for name, cls in sections.items()}
    for section in resolved.values():
        for f in fields(section):
            setattr(args, f.name, getattr(section, f.name))
    args.file_values = file_values
    _check_device(getattr(args, "device", "cpu"))
    return resolved


def _check_device(device: str) -> None:
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but no CUDA device is available: use "
                         "--device cpu")


def _setup(args) -> None:
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    _check_device(getattr(args, "run.device", None) or "cpu")  # meta-train; others: _resolve


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
        "maml | first_order | implicit, or reptile's pseudo-gradient (K supervised steps on the "
        "task's two batches in turn) (or --objective joint: plain multi-task pre-training on "
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

def _image_files(folder: str) -> list[Path]:
    """The image files of an ``--images`` folder, sorted; one-line errors for a missing or
    empty folder."""
    from metaprior.data.datasets import IMAGE_SUFFIXES

    if not Path(folder).is_dir():
        raise FileNotFoundError(f"--images {folder} is not a folder of images")
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"--images {folder} holds no images (png, jpg, tif, bmp): add some or "
                         f"choose another folder")
    return files


def _read_images(folder: str, color: bool) -> list:
    from metaprior.data import load_image

    return [load_image(p, gray=not color) for p in _image_files(folder)]


#: Each command's configuration sections: one dataclass each, one flag per field.
MEASURE = {"measure": MeasureOptions}


def cmd_measure(args) -> None:
    from metaprior.measurements import save_measurements
    from metaprior.tasks import get_task

    _resolve(args, MEASURE)
    check_output_file(args.out, "--out", ".safetensors")
    task = get_task(args.task)
    files = _image_files(args.images)
    images = _read_images(args.images, args.color)
    if len({tuple(im.shape) for im in images}) > 1:
        raise ValueError(f"images in {args.images} differ in size: measure folders of "
                         f"equal-size images")
    x = torch.stack(images)
    batch = task.sample(x, torch.Generator().manual_seed(args.seed))
    path = write_or_keep(lambda out: save_measurements(
        out, batch, with_ground_truth=not args.no_ground_truth, names=[p.name for p in files],
        images=args.images), args.out, "--out", "measurement file")
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


ADAPT = {"data": AdaptData, "run": AdaptRun}


#: Options of ``adapt`` that apply to an image folder only.
IMAGES_ONLY = ("eval_measurements", "patch_size", "batch_size", "color")


def check_adapt_data(given: dict) -> None:
    """Refuse ``adapt`` data options that the chosen data would ignore: the options of
    :data:`IMAGES_ONLY` given with ``--measurements`` (or without ``--images``)."""
    if given.get("images") is None:
        for name in IMAGES_ONLY:
            if name in given and given[name] not in (None, False):
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} applies to --images only (with --measurements the "
                                 f"measurement file itself is adapted on and scored): drop "
                                 f"{flag} or give --images")


def check_out_is_not_an_input(out: str | Path, inputs: dict[str, str | Path | None]) -> None:
    """Refuse an ``--out`` file that is one of the command's input files (by flag)."""
    target = Path(out).resolve()
    for flag, path in inputs.items():
        if path is not None and Path(path).resolve() == target:
            raise RunFolderError(f"--out {out} is the input {flag}: writing it would replace "
                                 f"the input; choose another --out")


def cmd_adapt(args) -> None:
    from metaprior.adapt import AdaptConfig, fine_tune, fine_tune_run, parameters_of
    from metaprior.checkpoint import load_model, resolve_model_path, save_model
    from metaprior.config import section_values
    from metaprior.measurements import load_measurements
    from metaprior.tasks import get_task

    _resolve(args, ADAPT, extra=("adapt",))
    rule = section_values("adapt", AdaptConfig, args.file_values, args)
    check_output_file(args.out, "--out", ".safetensors")
    if args.ckpt_every < 0:
        raise ValueError(f"--ckpt-every must be >= 0 (0: no checkpoints), got {args.ckpt_every}")
    if (args.images is None) == (args.measurements is None):
        raise ValueError("give exactly one of --images DIR or --measurements FILE")
    check_adapt_data(section_values("data", AdaptData, args.file_values, args))
    rule.setdefault("steps", 50)
    rule.setdefault("loss", "unsupervised")
    if rule["steps"] < 1:
        raise ValueError(f"--steps must be >= 1, got {rule['steps']}")
    if args.batch_size < 1 or args.patch_size < 0:
        raise ValueError(f"--batch-size must be >= 1 and --patch-size >= 0 (0: full images), "
                         f"got {args.batch_size} and {args.patch_size}")
    check_out_is_not_an_input(args.out, {"--model": resolve_model_path(args.model),
                                         "--measurements": args.measurements,
                                         "--eval-measurements": args.eval_measurements})
    model, meta = load_model(args.model, args.device)
    config = AdaptConfig.from_model(meta, **rule)
    if args.measurements is not None:
        data = load_measurements(args.measurements, args.device)
        task_name = data.task
        if args.task is not None and args.task != task_name:
            raise ValueError(f"--task {args.task} contradicts {args.measurements}, which holds "
                             f"measurements of task {task_name!r}: drop --task")
        if config.loss == "supervised" and data.target is None:
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
    path = write_or_keep(lambda out: save_model(
        out, model, result.params, metadata={**meta, "adapted": {"task": task_name,
                                                                 **config.__dict__}}),
        args.out, "--out", "adapted model")
    print(f"wrote {path}")


RECONSTRUCT = {"reconstruct": ReconstructOptions}


def cmd_reconstruct(args) -> None:
    from metaprior.adapt import parameters_of
    from metaprior.checkpoint import load_model
    from metaprior.measurements import load_measurements, measurement_sources
    from metaprior.meta.problem import reconstruct

    _resolve(args, RECONSTRUCT)
    out = check_writable_dir(args.out, "--out")
    names, images = measurement_sources(args.measurements) if Path(
        args.measurements).is_file() else (None, None)
    check_not_among_inputs(out, names, images)
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
    pngs = dict(zip(output_names(names, len(x_hat)), x_hat.clamp(0, 1).cpu(), strict=True))
    write_or_keep(lambda folder: write_pngs(folder, pngs), out, "--out", "reconstructions")
    print(f"wrote {len(x_hat)} image(s) to {out}")
    if batch.target is not None:
        print(f"PSNR: {_psnr_line(model, parameters_of(model), batch)}")


def write_png_atomic(path: Path, image: torch.Tensor) -> None:
    """Write a (C, H, W) image in [0, 1] as an 8-bit PNG, through a temporary file beside
    ``path`` and a rename."""
    from PIL import Image

    arr = (image.permute(1, 2, 0).squeeze(-1).numpy() * 255).round().astype("uint8")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        Image.fromarray(arr).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_pngs(folder: Path, images: dict[str, torch.Tensor]) -> Path:
    """Write each ``{name: image}`` into ``folder`` (created if needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        write_png_atomic(folder / name, image)
    return folder


def output_names(names: list[str] | None, n: int) -> list[str]:
    """The PNG names of ``n`` reconstructions: ``recon_<input stem>.png`` where the input
    names are known (``recon_<input name with dots as _>.png`` where two stems clash), else
    ``recon_000.png``, ``recon_001.png``, ..."""
    if names is None:
        return [f"recon_{i:03d}.png" for i in range(n)]
    stems = [Path(a).stem for a in names]
    if len(set(stems)) < len(stems):
        stems = [a.replace(".", "_") for a in names]
    return [f"recon_{s}.png" for s in stems]


def check_not_among_inputs(out: Path, names: list[str] | None, images: Path | None) -> None:
    """Refuse an output folder that is, or is inside, the folder the measured images were
    read from, or that holds files of the measured images' names: reconstructions written
    there would be taken in by the next ``measure`` of it."""
    target = out.resolve()
    if images is not None and (target == images or images in target.parents):
        raise RunFolderError(f"--out {out} is inside {images}, the folder of the measured "
                             f"images: choose another folder")
    found = [a for a in names or () if (out / a).is_file()]
    if found:
        raise RunFolderError(f"--out {out} holds the measured images ({found[0]}, ...): "
                             f"choose another folder")


def _add_command(sub, name: str, sections: dict[str, type], func, help: str,
                 description: str | None = None, **flag_options) -> argparse.ArgumentParser:
    """A subcommand whose options are the fields of its sections' dataclasses."""
    from metaprior.config import add_dataclass_arguments

    p = sub.add_parser(name, help=help, description=description or help)
    _add_config_flag(p, sections)
    add_dataclass_arguments(p, sections, **flag_options)
    p.set_defaults(func=func)
    return p


def _add_io(sub) -> None:
    from metaprior.adapt import AdaptConfig

    _add_command(sub, "measure", MEASURE, cmd_measure,
                 "simulate measurements of a task from an image folder")
    shipped = ", ".join(pretrained.available())
    _add_command(sub, "adapt", {"adapt": AdaptConfig, **ADAPT}, cmd_adapt,
                 "fine-tune a (meta-)model on a task, with or without ground truth",
                 f"Fine-tune a model (shipped: {shipped}) on a task from a measurement file "
                 "or an image folder. The step rule (lr, λ, optimizer, learned per-layer steps) "
                 "is the model's own unless given; the loss is unsupervised (measurement "
                 "consistency) unless given: supervised, or equivariant (plus the "
                 "90°-rotation equivariant-imaging term, no ground truth either).",
                 exclude={"adapt": ("lr_scales",)},
                 defaults_text={"adapt.lr": "the model's inner_lr (with learned per-layer step "
                                "sizes, --lr rescales them all)",
                                "adapt.prox_lambda": "the model's", "adapt.optimizer":
                                "the model's", "adapt.loss": "unsupervised"})
    _add_command(sub, "reconstruct", RECONSTRUCT, cmd_reconstruct,
                 "apply a model to a measurement file, write PNGs")


# --- demo / linear --------------------------------------------------------------------------

def _demo_sections() -> dict[str, type]:
    from metaprior.demo import DemoConfig

    return {"demo": DemoConfig, "run": DeviceOptions}


def cmd_demo(args) -> None:
    from metaprior.demo import run_demo

    config = _resolve(args, _demo_sections())["demo"]
    check_writable_dir(config.out, "--out")
    run_demo(config, device=args.device)


def _table1_config(args):
    from metaprior.config import build_section, load_config_file, replace_from_dict
    from metaprior.experiments.table1 import Table1Config, quick_config

    config = quick_config() if args.quick else Table1Config()
    overrides = load_config_file(args.suite_config) if args.suite_config else {}
    if "seed" in overrides or "seed" in args.file_values.get("suite", {}):
        raise ValueError("the suite's seed: give the seed with --seed, not in a config file")
    if "lr" in overrides and overrides.get("lr_grid", True):
        raise ValueError("--suite-config: lr is used only with \"lr_grid\": [] (otherwise each "
                         "run's lr is chosen from lr_grid on held-out fine-tuning images)")
    config = replace_from_dict(config, overrides, "--suite-config")
    config = build_section("suite", Table1Config, args.file_values, args, base=config)
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


EVALUATE = {"evaluate": EvaluateOptions}
SUITES = ("table1", "scratch", "depth")


def cmd_evaluate(args) -> None:
    from metaprior.adapt import AdaptConfig, parameters_of
    from metaprior.checkpoint import load_model
    from metaprior.evaluate import load_eval_images, summarize, task_table

    _resolve(args, EVALUATE, extra=("suite",))
    if args.suite is not None and args.suite not in SUITES:
        raise ValueError(f"--suite must be one of {', '.join(SUITES)}, got {args.suite!r}")
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
    rows = task_table(model, parameters_of(model), list(args.tasks), images, args.seed, adapt)
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


REPORT = {"report": ReportOptions}


def cmd_report(args) -> None:
    from metaprior.experiments.report import write_report

    _resolve(args, REPORT)
    results = Path(args.results)
    if not results.is_file():
        raise FileNotFoundError(f"--results {args.results} does not exist: run "
                                f"metaprior evaluate --suite table1 (or --suite depth) first")
    figures = args.figures or str(results.with_name(results.stem + "_figures"))
    target = f"the table in {args.markdown} and " if args.markdown else ""
    print(f"rewriting {target}the figures in {figures}/ from {args.results}")
    for path in write_report(results, figures, args.markdown or None):
        print(f"wrote {path}")


def _linear_sections() -> dict[str, type]:
    from metaprior.experiments.linear import LinearExperimentConfig

    return {"linear": LinearExperimentConfig, "run": LinearRun}


def cmd_linear(args) -> None:
    from metaprior.config import build_section
    from metaprior.experiments.linear import (
        LinearExperimentConfig,
        exact_inner_config,
        run_linear_experiment,
    )

    _resolve(args, {"run": LinearRun}, extra=("linear",))
    if args.preset not in ("paper", "exact"):
        raise ValueError(f"--preset must be paper or exact, got {args.preset!r}")
    base = exact_inner_config() if args.preset == "exact" else LinearExperimentConfig()
    config = build_section("linear", LinearExperimentConfig, args.file_values, args, base=base)
    check_writable_dir(args.out, "--out")
    if config.outer_steps < 1:
        raise ValueError(f"--outer-steps must be >= 1, got {config.outer_steps}")
    result = run_linear_experiment(config, Path(args.out), sweep=args.sweep)
    print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=1)[:4000])
    print(f"wrote {Path(args.out) / 'figure2.png'} and {Path(args.out) / 'linear.json'}")


def build_parser() -> argparse.ArgumentParser:
    from metaprior.experiments.table1 import Table1Config

    parser = argparse.ArgumentParser(prog="metaprior", description=__doc__)
    parser.add_argument("--version", action="version", version=f"metaprior {__version__}")
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                        help="a Python file run before the command, e.g. one that registers "
                        "your own operators as tasks (metaprior.register_task); repeatable")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_command(sub, "demo", _demo_sections(), cmd_demo,
                 "meta-train on scikit-image's pictures, adapt to SR x2 without ground truth, "
                 "print a PSNR table (no data root needed)")
    _add_meta_train(sub)
    _add_io(sub)
    p = _add_command(
        sub, "evaluate", {**EVALUATE, "suite": Table1Config}, cmd_evaluate,
        "PSNR of a model on each task (Set3C, the demo pictures or a folder), or one of the "
        "paper's protocols (--suite)",
        "PSNR of a model on each task. With --suite (need the data root): table1, the Table 1 "
        "protocol (SR x2 and MRI x4, or --suite-tasks; baselines grid-searched on fine-tuning "
        "images; the meta-models, joint pre-training and random init fine-tuned 0-50 steps, "
        "supervised and without ground truth); scratch, the paper's from-scratch PDNet for "
        "one task (--scratch-steps, written to --out .safetensors, --resume continues it); "
        "depth, the paper's Fig. 3 for the models in the suite's depth_models. The suite's "
        "options (Table1Config) are the --suite-* flags, a --suite-config JSON of them, or "
        "the config file's \"suite\" section.",
        prefixes={"suite": "suite-"}, exclude={"suite": ("seed",)})
    p.add_argument("--suite-config", default=None,
                   help="JSON of Table1Config fields (metaprior.experiments.table1); the "
                   "--suite-* flags win")
    _add_command(sub, "report", REPORT, cmd_report,
                 "rebuild the Table 1 figures (fine-tuning curves, visual comparisons) and "
                 "its markdown table from the suite's JSON (or, from a --suite depth JSON, "
                 "the Fig. 3 depth plot and its table)")
    _add_command(sub, "linear", _linear_sections(), cmd_linear,
                 "linear Gaussian toy of the paper's Sec. 3: meta-train θy on masks of area A, "
                 "fine-tune without ground truth on area B, Fig. 2 + JSON")
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


def _switches(parser: argparse.ArgumentParser) -> set[str]:
    """The ``--flag`` strings of every ``--flag/--no-flag`` switch of the commands."""
    found = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _switches(sub)
        elif isinstance(action, argparse.BooleanOptionalAction):
            found.add(action.option_strings[0])
    return found


def legacy_bool_values(argv: list[str], switches: set[str]) -> list[str]:
    """Command lines of earlier versions, where a bool option took a value
    (``--learn-inner-lr true``), as switches (``--learn-inner-lr``, ``--no-learn-inner-lr``)."""
    out: list[str] = []
    for token in argv:
        value = token.lower()
        if out and out[-1] in switches and value in ("true", "false"):
            if value == "false":
                out[-1] = "--no-" + out[-1][2:]
            continue
        out.append(token)
    return out


def one_line_errors(func, *args):
    """``func(*args)``, with a bad input (``ValueError``, ``OSError``, a failed run) reported as
    ``error: <one line>`` and exit status 1 instead of a traceback: what every command and the
    example scripts do."""
    try:
        return func(*args)
    except (ValueError, OSError, FloatingPointError, RuntimeError, RunFolderError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        message = lines[0][:500] if lines else type(e).__name__  # one line, whatever e holds
        raise SystemExit(f"error: {message}") from None


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(legacy_bool_values(argv, _switches(parser)))

    def run() -> None:
        for path in args.plugin:
            load_plugin(path)
        _setup(args)
        args.func(args)

    one_line_errors(run)


if __name__ == "__main__":
    sys.exit(main())
