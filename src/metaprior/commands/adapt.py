"""``metaprior adapt``: fine-tune a (meta-)model on a task, with or without ground truth."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from metaprior.commands.images import psnr_line
from metaprior.data import list_images, read_images
from metaprior.outputs import RunFolderError, check_output_file, write_or_keep


@dataclass(frozen=True)
class AdaptData:
    images: str | None = None  # folder of clean images: measurements simulated per step
    task: str | None = None  # task of --images (e.g. sr2, sr3, inpaint-0.7, or from --plugin)
    measurements: str | None = None  # measurement file (`metaprior measure`): adapt on it
    eval_measurements: str | None = None  # with --images: held-out measurements to score
    # choose the lr first: scored by PSNR on a folder's pictures put through the task, or by
    # the label-free loss of a measurement file held out from adaptation (no ground truth)
    lr_search: str | None = None  # pictures or held-out y: lr ×1, ×10/3, ×10 (+1 past an edge)
    patch_size: int = 64  # with --images or a --lr-search folder: patch side (0 = full images)
    batch_size: int = 8  # with --images or a --lr-search folder: patches per step
    color: bool = False  # with --images or a --lr-search folder: keep RGB


@dataclass(frozen=True)
class AdaptRun:
    model: str  # model .safetensors, checkpoint or run folder, or a model name
    out: str  # adapted model .safetensors
    ckpt_every: int = 0  # checkpoint every N steps under <out stem>.run/ (0: none)
    resume: bool = False  # continue the latest checkpoint under <out stem>.run/ exactly
    overwrite: bool = False  # replace an existing --out (and the checkpoints of <out stem>.run/)
    no_progress: bool = False  # no progress bar
    seed: int = 0  # with --images or a --lr-search folder: seed of patches and measurements
    device: str = "cpu"  # torch device: cpu or cuda


SECTIONS = {"data": AdaptData, "run": AdaptRun}
#: Options of ``adapt`` that apply to an image folder only (all but the first to ``--lr-search``'s
#: folder too).
IMAGES_ONLY = ("eval_measurements", "patch_size", "batch_size", "color")
#: ``--lr-search``: the multiples of the rule's lr tried (and one more past an edge choice).
LR_SEARCH = (1.0, 10 / 3, 10.0)
#: What ``--help`` shows where the value comes from the model being adapted.
DEFAULTS_TEXT = {
    "adapt.lr": "the model's rule for the loss, else its inner_lr (with its relative learning "
                "rates lr_scales, if any: --lr rescales them all)",
    "adapt.frozen": "the model's rule for the loss; '' holds nothing fixed",
    "adapt.precision": "the model's rule for the loss, else float32",
    "adapt.coarse_iterations": "the model's rule for the loss, else 0",
    "adapt.prox_lambda": "the model's", "adapt.optimizer": "the model's",
    "adapt.loss": "the model's recommended loss, else unsupervised"}


def check_adapt_data(given: dict, seed_given: bool = False) -> None:
    """Refuse ``adapt`` data options that the chosen data would ignore: the options of
    :data:`IMAGES_ONLY` given with ``--measurements`` (or without ``--images``), except those
    that a ``--lr-search`` folder uses, and ``--seed`` (``seed_given``) where neither draws
    patches."""
    pictures = given.get("lr_search") is not None and not Path(given["lr_search"]).is_file()
    if given.get("images") is None:
        for name in IMAGES_ONLY[:1] if pictures else IMAGES_ONLY:
            if name in given and given[name] not in (None, False):
                flag = "--" + name.replace("_", "-")
                folder = name != IMAGES_ONLY[0]  # a --lr-search folder takes the others
                where = "--images or a --lr-search folder" if folder else "--images"
                fix = "--images or --lr-search DIR" if folder else "--images"
                raise ValueError(f"{flag} applies to {where} only (with --measurements the "
                                 f"measurement file itself is adapted on and scored): drop "
                                 f"{flag} or give {fix}")
        if seed_given and not pictures:
            raise ValueError("--seed applies to --images or a --lr-search folder (it seeds "
                             "their patches and measurements): drop --seed")
    elif given.get("patch_size", AdaptData.patch_size) == 0 and "batch_size" in given:
        raise ValueError("--batch-size applies to patches: with --patch-size 0 each step adapts "
                         "on one whole image; drop --batch-size or give --patch-size")


def check_lr_search(lr_search: str, measurements: str | None, evaluation: str | None) -> None:
    """``--lr-search`` names a folder of pictures, or a measurement file of square images held
    out from both the adaptation (``--measurements``) and its scoring
    (``--eval-measurements``); else a one-line error."""
    path = Path(lr_search)
    if not path.exists():
        raise FileNotFoundError(f"--lr-search {lr_search} is neither a folder of pictures nor a "
                                f"measurement file: check the path")
    if path.is_dir():
        return
    for flag, other in (("--measurements adapted on", measurements),
                        ("--eval-measurements scored after adaptation", evaluation)):
        if other is not None and path.resolve() == Path(other).resolve():
            raise ValueError(f"--lr-search {lr_search} is the {flag}: choose the lr on "
                             f"measurements held out from both")
    from metaprior.measurements import image_shape

    h, w = image_shape(path)[-2:]
    if h != w:
        raise ValueError(f"--lr-search {lr_search} holds {h}x{w} images: the label-free lr "
                         f"search scores by the equivariant loss, which rotates images by 90°, "
                         f"so it needs square ones (or give a folder of pictures)")


def check_out_is_not_an_input(out: str | Path, inputs: dict[str, str | Path | None]) -> None:
    """Refuse an ``--out`` file that is one of the command's input files (by flag)."""
    target = Path(out).resolve()
    for flag, path in inputs.items():
        if path is not None and Path(path).resolve() == target:
            raise RunFolderError(f"--out {out} is the input {flag}: writing it would replace "
                                 f"the input; choose another --out")


def image_stream(args, task, device, images: list[torch.Tensor] | None = None):
    """Fine-tuning streams from an image folder, read once (or from its ``images``, read
    already): each call of the returned factory starts the same seeded stream of random
    patches (or full images)."""
    from metaprior.data import PatchSampler
    from metaprior.tasks import sample_or_name

    images = read_images(args.images, args.color) if images is None else images
    if args.patch_size > 0:  # a patch the task cannot measure is named as such
        sample_or_name(task, torch.zeros(1, images[0].shape[0], args.patch_size, args.patch_size),
                       torch.Generator().manual_seed(0), f"--patch-size {args.patch_size}")
    else:  # each image measured whole: every size checked now, not when its step comes
        from metaprior.data.datasets import list_images

        files = list_images(args.images, "--images") if args.images else [None] * len(images)
        pairs = list(zip(files, images, strict=True))
        for path, image in {im.shape: (f, im) for f, im in reversed(pairs)}.values():
            sample_or_name(task, torch.zeros(1, *image.shape), torch.Generator().manual_seed(0),
                           f"{path} ({image.shape[-2]}x{image.shape[-1]} pixels)",
                           "crop it, or adapt on patches (--patch-size)")

    def fresh():
        g = torch.Generator().manual_seed(args.seed + 1)
        if args.patch_size > 0:
            sampler = PatchSampler(images, args.patch_size, seed=args.seed)
            return lambda step: task.sample(sampler.sample(args.batch_size).to(device), g)
        return lambda step: task.sample(images[step % len(images)].unsqueeze(0).to(device), g)
    return fresh


def choose_lr(args, model, theta, task_name: str, rule, stream) -> tuple[float, dict, str]:
    """``--lr-search``: the lr of :data:`LR_SEARCH` × the rule's chosen by
    :func:`metaprior.evaluate.search_lr`: on a measurement file, held out from adaptation, by
    the lowest label-free loss after adapting on the data (``stream()``: a fresh stream of
    them); on a folder of pictures, by the best PSNR on them after adapting on patches of them
    (measured by the task). Returns it, every lr's score and the criterion."""
    import argparse

    from metaprior.evaluate import search_lr, task_batches
    from metaprior.measurements import load_measurements
    from metaprior.tasks import get_task

    lrs = [rule.lr * m for m in LR_SEARCH]
    if Path(args.lr_search).is_file():
        held = load_measurements(args.lr_search, args.device)
        if held.task != task_name:
            raise ValueError(f"--lr-search {args.lr_search} holds measurements of task "
                             f"{held.task!r}, the adaptation is to {task_name!r}: give held-out "
                             f"measurements of the same task")
        print(f"choosing the lr by the label-free loss of {held.y.shape[0]} held-out "
              f"measurement(s) in {args.lr_search}: {len(LR_SEARCH)}+ runs of {rule.steps} "
              f"steps ...")
        best, tried = search_lr(model, theta, stream, rule, [held], lrs, extend=1,
                                criterion="label-free")
        print("lr " + ", ".join(f"{lr:.3g}: " + ("diverged" if v is None else f"loss {v:.4g}")
                                for lr, v in tried.items()) + f" -> {best:.3g}")
        return best, tried, "label-free"
    task = get_task(task_name)
    pictures = read_images(args.lr_search, args.color, "--lr-search")
    search = argparse.Namespace(**{**vars(args), "images": args.lr_search})
    print(f"choosing the lr on {len(pictures)} picture(s) of {args.lr_search}: "
          f"{len(LR_SEARCH)}+ runs of {rule.steps} steps ...")
    held = task_batches(task, [im.to(args.device) for im in pictures], seed=args.seed + 2)
    best, tried = search_lr(model, theta, image_stream(search, task, args.device, pictures),
                            rule, held, lrs, extend=1, peak=task.peak)
    print("lr " + ", ".join(f"{lr:.3g}: " + ("diverged" if v is None else f"{v:.2f} dB")
                            for lr, v in tried.items()) + f" -> {best:.3g}")
    return best, tried, "psnr"


def digest(files: list[Path]) -> str:
    """SHA-256 of the names and bytes of ``files``: what a resumed run checks its data by."""
    import hashlib

    h = hashlib.sha256()
    for path in files:
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def adapt_rule(meta: dict, given: dict):
    """The step rule: the flags and file values ``given``, else the model's own
    (:meth:`~metaprior.adapt.AdaptConfig.from_model`), except the loss: the one the model
    recommends for adaptation, else :class:`~metaprior.adapt.AdaptConfig`'s (never the
    model's supervised inner loss: ``adapt`` has no ground truth unless told)."""
    from metaprior.adapt import AdaptConfig

    recommended = meta.get("adapt") if isinstance(meta.get("adapt"), dict) else {}
    given = {"loss": recommended.get("loss", AdaptConfig.loss), **given}
    return AdaptConfig.from_model(meta, **given)


def data_stream(args):
    """``(task name, stream, evaluation batch or None)`` of ``--measurements`` or ``--images``;
    ``stream()`` starts a fresh fine-tuning stream ``step -> batch``."""
    from metaprior.measurements import load_measurements
    from metaprior.tasks import get_task

    if args.measurements is not None:
        data = load_measurements(args.measurements, args.device)
        if args.task is not None and args.task != data.task:
            raise ValueError(f"--task {args.task} contradicts {args.measurements}, which holds "
                             f"measurements of task {data.task!r}: drop --task")
        return (data.task, lambda: (lambda step: data),
                data if data.target is not None else None)
    task = get_task(args.task)
    evaluation = (load_measurements(args.eval_measurements, args.device)
                  if args.eval_measurements else None)
    if evaluation is not None and evaluation.task != task.name:
        raise ValueError(f"--eval-measurements {args.eval_measurements} holds measurements of "
                         f"task {evaluation.task!r}, the adaptation is to {task.name!r}: give "
                         f"measurements of the same task")
    return task.name, image_stream(args, task, args.device), evaluation


def cmd_adapt(args) -> None:
    from tqdm import tqdm

    from metaprior.adapt import AdaptConfig, check_rule, fine_tune, parameters_of
    from metaprior.adapt_run import fine_tune_run
    from metaprior.checkpoint import (
        complete_checkpoints,
        load_model,
        resolve_model_path,
        save_model,
    )
    from metaprior.config import check_fits_in_memory, resolve, section_values

    resolve(args, SECTIONS, extra=("adapt",))
    if args.ckpt_every < 0:
        raise ValueError(f"--ckpt-every must be >= 0 (0: no checkpoints), got {args.ckpt_every}")
    if args.resume and args.overwrite:
        raise ValueError("--resume continues the checkpoints of <out stem>.run/, --overwrite "
                         "replaces them: give one of them")
    if (args.images is None) == (args.measurements is None):
        raise ValueError("give exactly one of --images DIR or --measurements FILE")
    check_adapt_data(section_values("data", AdaptData, args.file_values, args),
                     "seed" in section_values("run", AdaptRun, args.file_values, args))
    if args.batch_size < 1 or args.patch_size < 0:
        raise ValueError(f"--batch-size must be >= 1 and --patch-size >= 0 (0: full images), "
                         f"got {args.batch_size} and {args.patch_size}")
    check_fits_in_memory("--batch-size", "--batch-size", args.batch_size, args.patch_size)
    if args.lr_search is not None:
        check_lr_search(args.lr_search, args.measurements, args.eval_measurements)
    check_out_is_not_an_input(args.out, {"--model": resolve_model_path(args.model),
                                         "--measurements": args.measurements,
                                         "--eval-measurements": args.eval_measurements,
                                         "--lr-search": args.lr_search})
    check_output_file(args.out, "--out", ".safetensors", overwrite=args.overwrite or args.resume)
    given = section_values("adapt", AdaptConfig, args.file_values, args)
    if given.get("steps", 1) < 1:
        raise ValueError(f"--steps must be >= 1, got {given['steps']}")
    if args.images is not None and args.task is None:
        raise ValueError("--images needs --task NAME")
    model, meta = load_model(args.model, args.device)
    config = adapt_rule(meta, given)
    check_rule(model, config)  # before the model is scored or an lr searched
    task_name, stream, evaluation = data_stream(args)
    if config.loss == "supervised" and args.measurements and evaluation is None:
        raise ValueError(f"{args.measurements} has no ground truth: use --loss unsupervised")
    theta = parameters_of(model)
    searched, criterion = {}, None
    if args.lr_search is not None:
        lr, searched, criterion = choose_lr(args, model, theta, task_name, config, stream)
        config = replace(config, lr=lr)
    if evaluation is not None:
        print(f"before: {psnr_line(model, theta, evaluation)}")
    with tqdm(total=config.steps, desc="adapt", unit="step", disable=args.no_progress,
              dynamic_ncols=True) as bar:
        def progress(state, loss):
            bar.n = state.step
            bar.set_postfix(loss=f"{loss:.4g}")
            bar.refresh()

        run_dir = Path(args.out).with_name(Path(args.out).stem + ".run")
        # checkpoints there belong to --out: refused or, with --overwrite, replaced by this run's
        if args.ckpt_every or args.resume or complete_checkpoints(run_dir):
            recipe = {"model": args.model, "task": task_name, "seed": args.seed,
                      "data": ({"measurements": args.measurements} if args.measurements else
                               {"images": args.images, "patch_size": args.patch_size,
                                "batch_size": args.batch_size, "color": args.color})}
            recipe["data"]["sha256"] = digest([Path(args.measurements)] if args.measurements
                                              else list_images(args.images, "--images"))
            recipe["model_sha256"] = digest([resolve_model_path(args.model)])
            result = fine_tune_run(model, theta, stream(), config, run_dir,
                                   recipe, args.ckpt_every, args.resume, callback=progress,
                                   log=bar.write, overwrite=args.overwrite)
        else:
            result = fine_tune(model, theta, stream(), config, callback=progress)
    if evaluation is not None:
        print(f"after {config.steps} {config.loss} steps: "
              f"{psnr_line(model, result.params, evaluation)}")
    path = write_or_keep(lambda out: save_model(
        out, model, result.params, metadata={**meta, "adapted": {
            "task": task_name, **config.__dict__,
            **({"lr_search": {str(k): v for k, v in searched.items()},
                "lr_search_criterion": criterion} if searched else {})}}),
        args.out, "--out", "adapted model")
    print(f"wrote {path}")
