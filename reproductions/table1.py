r"""Table 1 of the paper (arXiv 2311.18710): the unseen tasks, every method side by side.

Protocol (the paper's Sec. 4; choices it leaves open are recorded in the output):

* **SR ×2**: fine-tuning data = BSDS500 train+test (random 64×64 grayscale patches, batch 8);
  test = Set3C, RGB with the three channels folded into the batch (each channel is a grayscale
  image for the operator and the network; PSNR is over the whole RGB image, peak 1).
* **MRI ×4**: fine-tuning data = the 10 ``finetune`` slices of ``fastmri/splits.json`` (whole
  320×320 slices, ``mri_batch`` per step, one fixed mask); test = the 10 ``test`` slices, PSNR
  with the ground truth's maximum as peak.

Methods: :math:`A^\dagger y`; wavelet-ℓ1, TV, TGV and DPIR (FFDNet / BM3D denoisers) with their
hyper-parameter grid-searched on fine-tuning images (:mod:`metaprior.baselines`); and PDNet from
four initialisations — the supervised- and unsupervised-inner meta-models, joint multi-task
pre-training and a random initialisation — each fine-tuned with Adam on the task's fine-tuning
data, supervised and unsupervised (the meta-models also with the equivariant-imaging loss, the
variant tried against the paper's unsupervised-MRI failure), scored on the test images after 0,
1, 2, 5, 10, 20 and ``steps`` steps (one run per curve, each on the same fine-tuning stream).
Each run's learning rate is chosen from ``lr_grid``, extended past an edge choice, on held-out
fine-tuning images (:func:`choose_lr`; MRI: 4 of the 10 ``finetune`` slices, SR: 4 BSDS500
val crops).

The paper's "PDNet" column, a PDNet trained from scratch on the task for many steps, is
:func:`train_scratch` (``python -m reproductions scratch``), evaluated here when
``scratch_models`` names it.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from metaprior.evaluate import evaluate_method
from metaprior.meta.problem import reconstruct
from metaprior.metrics import mean_std
from metaprior.pretrained import RECOMMENDED
from metaprior.tasks import TaskBatch, get_task

#: Table 1 of the paper (dB, mean ± std), for the side-by-side report.
PAPER_TABLE1 = {
    "sr2": {"wavelet": (23.84, 1.22), "tgv": (25.52, 1.33), "dpir": (27.34, 0.67),
            "meta_sup_ft_sup_50": (26.73, 0.78), "meta_unsup_ft_unsup_50": (27.36, 0.79),
            "scratch": (28.20, 0.76)},
    "mri4": {"wavelet": (28.71, 2.05), "tgv": (28.69, 2.10), "dpir": (29.12, 2.18),
             "meta_sup_ft_sup_50": (29.04, 1.89), "meta_unsup_ft_unsup_50": (27.64, 1.97),
             "scratch": (30.04, 2.08)},
}

#: The paper's initialisations (the default), and the recommended shipped model beside them.
PAPER_INITS = ("meta_sup", "meta_unsup", "joint", "random")
INITS = (*PAPER_INITS, "recommended")
#: Bump when choose_lr's fine-tuning or scoring changes: cached lr choices are then searched anew.
LR_SELECTION_VERSION = 1
LOSS_TAGS = {"supervised": "sup", "unsupervised": "unsup", "equivariant": "ei"}


@dataclass(frozen=True)
class Table1Config:
    tasks: tuple[str, ...] = ("sr2", "mri4")  # unseen tasks to evaluate
    meta_sup: str = "meta-sup-d20"  # supervised-inner meta-model (name or path)
    meta_unsup: str = "meta-unsup-d20"  # unsupervised-inner meta-model (name or path)
    joint: str = "joint-d20"  # joint multi-task pre-trained model (name or path)
    recommended: str = RECOMMENDED  # the recommended shipped model (init "recommended")
    inits: tuple[str, ...] = PAPER_INITS  # initialisations to fine-tune (any of INITS)
    steps: int = 50  # fine-tuning Adam steps (Table 1: 50)
    curve: tuple[int, ...] = (0, 1, 2, 5, 10, 20)  # also score after these steps (Fig. B.2)
    lr: float = 1e-2  # fine-tuning Adam lr when lr_grid is empty (and T1-T4's fallback lr)
    # fine-tuning lr candidates, one chosen per (initialisation, loss) on held-out fine-tuning
    # images (TaskData.val) after `steps` steps; () = use `lr` everywhere
    lr_grid: tuple[float, ...] = (3e-4, 1e-3, 3e-3, 1e-2)  # fine-tuning lr candidates
    # a choice on an end of the grid extends it there geometrically by up to this many values
    # a side (the baselines' rule, metaprior.evaluate.geometric_search); 0: the grid as given
    lr_extend: int = 4  # lr values added past an edge choice of lr_grid, per side (0: none)
    # how a ground-truth-free loss's lr is chosen: "psnr" (on the held-out images' ground
    # truth) or "label-free" (the lowest held-out label-free loss: no ground truth read)
    lr_criterion: str = "psnr"  # "psnr" | "label-free" (supervised runs: always psnr)
    # a meta-model with learned per-layer step sizes: its candidates are these multiples of its
    # learned steps instead (lr = its inner_lr × m), chosen the same way
    scale_grid: tuple[float, ...] = (0.3, 1.0, 3.0)
    prox_lambda: float = 0.0  # λ/2‖φ − θ‖² during fine-tuning (0: plain fine-tuning)
    # fine-tuning step rule of every initialisation: "" = each one's own (a meta-model's inner
    # optimizer; Adam for joint pre-training and random init), or "adam" / "sgd" for all
    optimizer: str = ""  # "" (each init's own) | "adam" | "sgd"
    batch: int = 8  # SR fine-tuning batch (64×64 patches)
    patch_size: int = 64  # SR fine-tuning patch side
    mri_batch: int = 1  # MRI fine-tuning batch (whole slices)
    variants: tuple[str, ...] = ("equivariant",)  # extra ground-truth-free losses (meta inits)
    # the fine-tuning losses of every trained init ("": supervised, unsupervised, and the
    # variants for the meta-models); e.g. supervised,equivariant to skip measurement consistency
    losses: tuple[str, ...] = ()  # fine-tuning losses of the trained inits (empty: the default)
    # dpir-bm3d is also available; it takes ~0.5 h on this machine, so it is run on its own.
    baselines: tuple[str, ...] = ("wavelet", "tv", "tgv", "dpir-ffdnet")
    drunet_checkpoint: str = ""  # DPIR's drunet_gray.pth, for a "dpir-drunet" baseline
    grid_images: int = 4  # fine-tuning images used by the baselines' grid search
    grid_crop: int = 128  # SR grid search: centre crops of this side (BSDS images)
    scratch_models: tuple[str, ...] = ()  # "task=model" from-scratch PDNets (`scratch`)
    scratch_lr: float = 1e-3  # Adam learning rate of `scratch` (the paper leaves it open)
    pdnet: bool = True  # also fine-tune the PDNets (False: baselines only, e.g. to fill the cache)
    training_tasks: bool = True  # also score the meta-models on T1-T4 (Set3C; Fig. 3 at one depth)
    # `depth` (Fig. 3 across depths): "meta_sup=MODEL" / "meta_unsup=MODEL" entries
    depth_models: tuple[str, ...] = ()
    seed: int = 0  # fine-tuning streams, random init, SR patches (the MRI mask is fixed: seed 0)
    max_test_images: int = 0  # 0 = all (Set3C: 3, MRI: 10); small values for smoke tests

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("tasks is empty: name at least one task (e.g. sr2, mri4)")
        for t in self.tasks:
            get_task(t)  # registered, parametrised (sr3, inpaint-0.7, ...) or from a plugin
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        from metaprior.baselines import DENOISERS, DPIR_ITERATIONS, GRIDS

        for name in self.baselines:
            kind, _, den = name.partition("-")
            if (kind not in GRIDS or (den and den not in DENOISERS)
                    or (kind in DPIR_ITERATIONS) != bool(den)):
                raise ValueError(f"unknown baseline {name!r}: use wavelet, tv, tgv, "
                                 f"dpir-{{{','.join(DENOISERS)}}} or dpir24-...")
        for item in self.scratch_models:
            if item.count("=") != 1 or item.split("=")[0] not in self.tasks:
                raise ValueError(f"scratch_models entries are TASK=MODEL with TASK in "
                                 f"{self.tasks}, got {item!r}")
        for item in self.depth_models:
            if item.count("=") != 1 or item.split("=")[0] not in ("meta_sup", "meta_unsup"):
                raise ValueError(f"depth_models entries are meta_sup=MODEL or meta_unsup=MODEL, "
                                 f"got {item!r}")
        if self.grid_images < 1 or self.max_test_images < 0 or self.mri_batch < 1 or \
                self.batch < 1:
            raise ValueError("grid_images, batch and mri_batch must be >= 1 and "
                             "max_test_images >= 0")
        if not set(self.inits) <= set(INITS):
            raise ValueError(f"inits must be among {INITS}, got {self.inits}")
        if set(self.losses) - set(LOSS_TAGS):
            raise ValueError(f"losses must be among {tuple(LOSS_TAGS)}, got {self.losses}")
        if set(self.variants) - {"equivariant"}:
            raise ValueError(f"variants must be among ('equivariant',), got {self.variants}")
        if any(not lr > 0 for lr in (self.lr, *self.lr_grid, *self.scale_grid)):
            raise ValueError(f"lr, lr_grid and scale_grid values must be > 0, got {self.lr}, "
                             f"{self.lr_grid}, {self.scale_grid}")
        if self.optimizer not in ("", "adam", "sgd"):
            raise ValueError(f"optimizer must be '', 'adam' or 'sgd', got {self.optimizer!r}")
        if self.lr_criterion not in ("psnr", "label-free"):
            raise ValueError(f"lr_criterion must be 'psnr' or 'label-free', got "
                             f"{self.lr_criterion!r}")
        if self.lr_extend < 0:
            raise ValueError(f"lr_extend must be >= 0, got {self.lr_extend}")
        if any(s < 0 or s > self.steps for s in self.curve):
            raise ValueError(f"curve steps must lie in [0, steps={self.steps}], got {self.curve}")


# --- data ----------------------------------------------------------------------------------

@dataclass
class TaskData:
    """Everything a task's evaluation needs."""

    name: str
    peak: float | str
    stream: Callable[[], Callable[[int], TaskBatch]]  # a fresh fine-tuning stream (every run)
    select_stream: Callable[[], Callable[[int], TaskBatch]]  # lr selection: never sees `val`
    val: list[TaskBatch]  # held-out fine-tuning images (MRI) or BSDS val crops (SR): choose_lr
    grid: list[TaskBatch]  # fine-tuning images for the baselines' grid search
    test: list[TaskBatch]  # one batch per test image
    test_names: list[str]
    about: dict


def centre_crop(x: Tensor, size: int) -> Tensor:
    """The central ``size``×``size`` crop (even side, at most the image's)."""
    h, w = x.shape[-2:]
    s = min(size, h, w) // 2 * 2
    return x[..., (h - s) // 2: (h - s) // 2 + s, (w - s) // 2: (w - s) // 2 + s]


def spread(items: list, n: int) -> list:
    """``n`` items evenly spread over ``items`` (MRI: both contrasts of the split)."""
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def load_task_data(name: str, config: Table1Config, data_root=None, device="cpu") -> TaskData:
    """Fine-tuning streams, lr-selection and grid-search batches and test batches of ``name``.

    Two protocols: MRI tasks (``task.peak == "max"``: magnitude images) fine-tune on fastMRI
    knee slices and are tested on the held-out slices, the lr-selection stream leaving out
    the held-out ``val`` slices;
    every other task (``sr2`` in the paper, and any registered or user task on natural
    images) fine-tunes on BSDS500 train+test patches, chooses its lr on BSDS500 val crops and
    is tested on Set3C."""
    from metaprior.data import PatchSampler, bsds500, fastmri_knee, fastmri_split, set3c
    from metaprior.data.datasets import list_images, resolve_data_root

    task = get_task(name)
    test_g = torch.Generator().manual_seed(config.seed + 2)
    if task.peak != "max":  # natural images in [0, 1] (MRI tasks: magnitudes, peak "max")
        train = bsds500(data_root, ("train", "test"))

        def stream(images=train):
            sampler = PatchSampler(images, config.patch_size, seed=config.seed)
            g = torch.Generator().manual_seed(config.seed + 1)
            return lambda step: task.sample(sampler.sample(config.batch).to(device), g)

        select_stream = stream  # validation images come from BSDS val, not from the stream
        val_images = [centre_crop(im, config.grid_crop)
                      for im in spread(bsds500(data_root, ("val",)), config.grid_images)]
        grid_images = [centre_crop(im, config.grid_crop)
                       for im in spread(train, config.grid_images)]
        test_images = set3c(data_root)
        test_names = [p.stem for p in list_images(resolve_data_root(data_root) / "set3c")]
        about = {"finetune": "BSDS500 train+test, 400 images, random 64x64 grayscale patches",
                 "lr_selection": f"fine-tune on the same stream, validate on {len(val_images)} "
                 f"BSDS500 val images ({config.grid_crop}x{config.grid_crop} centre crops)",
                 "test": "Set3C RGB, channels folded into the batch", "peak": task.peak}
    else:
        train = fastmri_knee(data_root, "finetune")

        def stream(images=train):
            order = torch.Generator().manual_seed(config.seed)
            g = torch.Generator().manual_seed(config.seed + 1)

            def next_batch(step):
                idx = torch.randint(len(images), (config.mri_batch,), generator=order)
                return task.sample(torch.stack([images[int(i)] for i in idx]).to(device), g)
            return next_batch

        held = spread(list(range(len(train))), config.grid_images)  # PD and PDFS slices alike
        val_images = grid_images = [train[i] for i in held]
        select_stream = partial(stream, [im for i, im in enumerate(train) if i not in held])
        test_images = fastmri_knee(data_root, "test")
        split = fastmri_split(data_root)
        test_names = split["test"]
        about = {"finetune": "fastMRI knee, the 10 'finetune' slices of splits.json, whole "
                 "320x320 slices", "lr_selection": "fine-tune on the other finetune slices, "
                 f"validate on {[split['finetune'][i] for i in held]}",
                 "test": "the 10 'test' slices", "peak": f"{task.peak} of the target",
                 "mask": task.params}
    if config.max_test_images:
        test_images = test_images[: config.max_test_images]
        test_names = test_names[: config.max_test_images]
    g = torch.Generator().manual_seed(config.seed + 1)
    grid = [task.sample(im.unsqueeze(0).to(device), g) for im in grid_images]
    val_g = torch.Generator().manual_seed(config.seed + 3)
    val = [task.sample(im.unsqueeze(0).to(device), val_g) for im in val_images]
    test = [task.sample(im.unsqueeze(0).to(device), test_g) for im in test_images]
    return TaskData(name, task.peak, stream, select_stream, val, grid, test, test_names, about)


# --- scoring -------------------------------------------------------------------------------

def _summary(record: dict) -> dict:
    m, s = mean_std(record["psnr"])
    ms, ss = mean_std(record["ssim"])
    return {"psnr_mean": m, "psnr_std": s, "ssim_mean": ms, "ssim_std": ss}


# --- PDNet runs ----------------------------------------------------------------------------

def _load(name_or_path: str, device):
    from metaprior.adapt import parameters_of
    from metaprior.checkpoint import load_model

    model, meta = load_model(name_or_path, device)
    return model, parameters_of(model), meta


def finetune_curve(model, theta, data: TaskData, loss: str, steps: int, lr: float,
                   prox_lambda: float, curve: Sequence[int], visual_at: Sequence[int] = (),
                   rule=None) -> dict:
    """Fine-tune from θ for ``steps`` steps of ``rule`` (default Adam) at ``lr`` (one run) and
    score the test images after each number of steps in ``curve`` and ``steps``
    (:func:`metaprior.evaluate.finetune_and_score`).

    Returns:
        ``{"steps": {n: per-image record}, "finetune_seconds", "final_loss", "visuals"}``.
    """
    from metaprior.adapt import AdaptConfig
    from metaprior.evaluate import finetune_and_score

    cfg = replace(rule or AdaptConfig(), steps=steps, lr=lr, loss=loss, prox_lambda=prox_lambda)
    run = finetune_and_score(model, theta, data.stream(), cfg, data.test, keep=curve,
                             peak=data.peak, keep_first=visual_at)
    records = run["records"]
    visuals = {n: records[n].pop("first") for n in records if "first" in records[n]}
    return {"steps": records, "finetune_seconds": run["seconds"],
            "final_loss": run["losses"][-1] if run["losses"] else math.nan, "visuals": visuals}


def cache_entry(cache: dict, key: str, fingerprint: dict) -> dict:
    """The suite's results cache (grid searches and lr choices, one JSON file): the entry
    ``cache[key]`` if it was computed under ``fingerprint`` (what it depends on: data, seed,
    θ's bytes, solver version, ...), else ``{}``."""
    entry = cache.get(key, {})
    return entry if entry.get("fingerprint") == fingerprint else {}


def cache_store(cache: dict, key: str, fingerprint: dict, values: dict,
                cache_path: Path | None = None) -> None:
    """Store ``values`` under ``key`` with its ``fingerprint`` and write the cache atomically
    to ``cache_path`` (``None``: not kept on disk). It is saved as it grows, so a long run
    that stops keeps what it found."""
    cache[key] = {**values, "fingerprint": fingerprint}
    if cache_path is not None:
        write_json(cache_path, cache)


def write_json(path: str | Path, payload: dict, indent: int = 1) -> Path:
    """Write ``payload`` as JSON to ``path`` atomically (non-finite floats as ``null``)."""
    from metaprior.checkpoint import write_bytes_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, json.dumps(_jsonable(payload), indent=indent).encode())
    return path


def fine_tuning_rule(meta: dict | None, config: Table1Config, loss: str | None = None):
    """The step rule an initialisation is fine-tuned with for ``loss``: the one its metadata
    records (a meta-model's inner optimizer and learned per-layer step sizes, rescaled by the
    chosen lr; a shipped model's rule for that loss, e.g. which parameters it holds fixed;
    ``meta=None`` for random init: Adam), with ``config.optimizer`` replacing the optimizer
    when set. ``None`` stands for the default rule (Adam)."""
    from metaprior.adapt import AdaptConfig

    rule = None if meta is None else AdaptConfig.from_model(meta, loss=loss)
    if config.optimizer:
        rule = replace(rule or AdaptConfig(), optimizer=config.optimizer)
    return rule


def search_grid(lr_grid, scale_grid, learned_base_lr: float | None) -> tuple[float, ...]:
    """The lr values a fine-tuning lr search starts from: ``lr_grid``, or, for a step rule with
    learned per-tensor step sizes, ``scale_grid`` multiples of its base lr (the model's
    ``inner_lr``: lr = inner_lr applies exactly the learned steps)."""
    if learned_base_lr is None:
        return tuple(lr_grid)
    return tuple(learned_base_lr * m for m in scale_grid)


def choose_lr(model, theta, data: TaskData, loss: str, prox_lambda: float,
              config: Table1Config, cache: dict, key: str, cache_path: Path | None = None,
              rule=None) -> dict:
    """The fine-tuning learning rate of one (initialisation θ, loss) pair: the value of
    ``config.lr_grid`` (for a ``rule`` with learned step sizes: ``config.scale_grid`` multiples
    of its ``lr``), extended past an edge choice by up to ``config.lr_extend`` values a side,
    whose ``config.steps``-step fine-tuning with the step rule ``rule`` (default:
    Adam) on ``data.select_stream`` scores the best mean PSNR on the held-out fine-tuning images
    ``data.val`` (never the test images); for a ground-truth-free ``loss`` with
    ``config.lr_criterion == "label-free"``, the lowest label-free loss on their measurements
    (:func:`metaprior.evaluate.label_free_loss`; their ground truth is not read).

    Scores are cached in ``cache[key]`` per lr, fingerprinted by θ's bytes and the protocol, so
    a rerun reuses them and a wider grid only runs its new values.

    Returns:
        ``{"best": lr, "grid": {lr: mean validation PSNR (or label-free loss), None where it
        diverged} for every lr tried, "at_grid_edge": bool (still on an end of the extended
        grid), "seconds": search time, cached runs included, "criterion": "psnr" or
        "label-free"}``.
    """
    import hashlib

    from metaprior.adapt import AdaptConfig
    from metaprior.evaluate import search_lr

    digest = hashlib.sha256()
    for k in sorted(theta):
        digest.update(k.encode() + theta[k].detach().cpu().numpy().tobytes())
    fingerprint = {"version": LR_SELECTION_VERSION, "steps": config.steps, "seed": config.seed,
                   "prox_lambda": prox_lambda, "theta": digest.hexdigest()[:16],
                   "data": [data.about["lr_selection"], config.batch, config.patch_size,
                            config.mri_batch, config.grid_crop]}
    rule = rule or AdaptConfig()
    criterion = ("label-free" if config.lr_criterion == "label-free" and loss != "supervised"
                 else "psnr")
    if criterion != "psnr":  # another score: another choice
        fingerprint["criterion"] = criterion
    if rule.optimizer != "adam":
        fingerprint["optimizer"] = rule.optimizer
    if rule.frozen:  # parameters held fixed: another fine-tuning, another choice
        fingerprint["frozen"] = list(rule.frozen)
    if rule.precision != "float32":
        fingerprint["precision"] = rule.precision
    if rule.coarse_iterations:  # the steps on a coarse copy: another fine-tuning
        fingerprint["coarse_iterations"] = rule.coarse_iterations
    if rule.lr_scales is not None:  # learned step sizes: the grid rescales them
        fingerprint["lr_scales"] = {k: rule.lr_scales[k] for k in sorted(rule.lr_scales)}
    entry = cache_entry(cache, key, fingerprint)
    scores = dict(entry.get("grid", {}))
    seconds = entry.get("seconds", 0.0)
    lr_grid = search_grid(config.lr_grid, config.scale_grid,
                          rule.lr if rule.lr_scales is not None else None)
    t0, cached = time.perf_counter(), len(scores)
    cfg = replace(rule, steps=config.steps, loss=loss, prox_lambda=prox_lambda)
    try:
        best, tried = search_lr(model, theta, data.select_stream, cfg, data.val, lr_grid,
                                config.lr_extend, data.peak, scores=scores, criterion=criterion)
    except FloatingPointError:
        raise FloatingPointError(f"{key}: fine-tuning diverged at every lr tried "
                                 f"({sorted(float(k) for k in scores)})") from None
    finally:
        if len(scores) > cached:  # something ran: keep it
            seconds += time.perf_counter() - t0
            cache_store(cache, key, fingerprint, {"grid": scores, "seconds": seconds},
                        cache_path)
    grid = {str(lr): v for lr, v in tried.items()}
    edge = len(grid) > 1 and best in (min(tried), max(tried))
    return {"best": best, "grid": grid, "at_grid_edge": edge, "seconds": seconds,
            "criterion": criterion}


def _random_init(model, seed: int):
    """θ of a freshly initialised network of ``model``'s architecture and configuration
    (seeded)."""
    from metaprior.adapt import parameters_of

    fresh = type(model).seeded(model.config, seed)
    return parameters_of(fresh.to(next(model.parameters()).device))


# --- baselines -----------------------------------------------------------------------------

def run_baselines(data: TaskData, config: Table1Config, cache: dict, device="cpu",
                  log=print, cache_path: Path | None = None) -> tuple[dict, dict]:
    """Grid-search (or take from ``cache``, saved to ``cache_path`` as it grows) each
    baseline's hyper-parameter on the fine-tuning images, then score it on the test images."""
    from metaprior import baselines as bl
    from metaprior.evaluate import pseudo_inverse

    rows = {"pinv": evaluate_method(pseudo_inverse, data.test, data.peak, keep_first=True)}
    visuals = {"pinv": rows["pinv"].pop("first")}
    denoisers: dict = {}
    for name in config.baselines:
        kind, _, den = name.partition("-")
        if den and den not in denoisers:
            denoisers[den] = bl.make_denoiser(den, device, config.drunet_checkpoint or None)
        make = partial(_baseline, kind, denoisers.get(den))
        key = f"{data.name}/{name}"
        t0 = time.perf_counter()
        grid_values = bl.GRIDS[kind]
        fingerprint = {"grid": list(grid_values), "grid_images": config.grid_images,
                       "grid_crop": config.grid_crop, "seed": config.seed,
                       "baselines_version": bl.VERSION}
        entry = cache_entry(cache, key, fingerprint)
        if entry:
            best, grid = entry["best"], entry["grid"]
            grid_seconds = entry.get("seconds", math.nan)
        else:
            best, means = bl.grid_search(make, grid_values, data.grid, data.peak)
            grid = {str(v): m for v, m in means.items()}
            grid_seconds = time.perf_counter() - t0
            cache_store(cache, key, fingerprint, {"best": best, "grid": grid,
                                                  "seconds": grid_seconds}, cache_path)
        rec = evaluate_method(make(best), data.test, data.peak, keep_first=True)
        visuals[name] = rec.pop("first")
        tried = [float(v) for v in grid]  # the grid as extended past an edge choice
        edge = " (still at the edge of its extended grid)" if best in (min(tried), max(tried)) \
            else ""
        rows[name] = {**rec, "hyper": best, "grid": grid, "grid_seconds": grid_seconds,
                      "at_grid_edge": bool(edge)}
        log(f"  {data.name} {name:12s} {_fmt(rec)}  (hyper {best:g}{edge})")
    return rows, visuals


def _baseline(kind: str, denoiser, value: float):
    from metaprior import baselines as bl

    return bl.method(kind, value, denoiser)


def _fmt(rec: dict) -> str:
    m, s = mean_std(rec["psnr"])
    return f"{m:6.2f} ± {s:4.2f} dB"


# --- the suite -----------------------------------------------------------------------------

def run_table1(config: Table1Config, out: str | Path, data_root=None, device="cpu",
               grid_cache: str | Path | None = None, log=print, update_cache: bool = True
               ) -> dict:
    """Run the whole Table 1 protocol and write ``out`` (JSON) and, next to it,
    ``<stem>_visuals.safetensors`` (the first test image of every task, every method).

    Args:
        config: what to run.
        out: the results JSON path.
        data_root: data root (default ``$METAPRIOR_DATA``).
        device: torch device.
        grid_cache: JSON of earlier grid-search choices to reuse (and update).
        update_cache: write the choices made into ``grid_cache`` (False: read it only, as
            a smoke run of another protocol must not replace the committed choices).
    """
    from metaprior.adapt import AdaptConfig
    from metaprior.checkpoint import save_tensors

    t_start = time.perf_counter()
    out = Path(out)
    cache_file = Path(grid_cache) if grid_cache else None
    cache = json.loads(cache_file.read_text()) if cache_file and cache_file.is_file() else {}
    cache_path = cache_file if update_cache else None
    # "random" borrows the supervised meta-model's architecture.
    needed = [n for n in ("meta_sup", "meta_unsup", "joint", "recommended")
              if n in config.inits or (n == "meta_sup" and "random" in config.inits)]
    inits = {name: _load(getattr(config, name), device) for name in needed} if config.pdnet else {}
    results: dict = {"config": asdict(config), "tasks": {}, "paper": PAPER_TABLE1,
                     "models": {k: {"source": getattr(config, k), **_describe(v[2])}
                                for k, v in inits.items()}}
    visuals: dict[str, Tensor] = {}
    for task_name in config.tasks:
        t_task = time.perf_counter()
        data = load_task_data(task_name, config, data_root, device)
        log(f"{task_name}: {len(data.test)} test images, {len(data.grid)} grid-search images")
        rows, vis = run_baselines(data, config, cache, device, log, cache_path)
        visuals.update({f"{task_name}/{k}": v for k, v in vis.items()})
        visuals[f"{task_name}/target"] = data.test[0].target.cpu()
        runs, notes = {}, {}
        for init in config.inits if config.pdnet else ():
            if init == "random":
                model = inits["meta_sup"][0]
                theta = _random_init(model, config.seed)
            else:
                model, theta = inits[init][0], inits[init][1]
            losses = (("supervised", "unsupervised",
                       *(config.variants if init.startswith("meta") or init == "recommended"
                         else ()))
                      if not config.losses or init == "random" else config.losses)
            for loss in losses:
                rule = fine_tuning_rule(None if init == "random" else inits[init][2], config,
                                        loss)
                tag = LOSS_TAGS[loss]
                lr, chosen = config.lr, None
                prox = 0.0 if init == "random" else config.prox_lambda
                if config.lr_grid:
                    chosen = choose_lr(model, theta, data, loss, prox, config, cache,
                                       f"{task_name}/{init}_ft_{tag}/lr", cache_path, rule)
                    lr = chosen["best"]
                    unit = " dB" if chosen["criterion"] == "psnr" else " label-free loss"
                    log(f"  {task_name} {init:10s} {loss:12s} lr {lr:g} (validation " + ", ".join(
                        f"{float(k):.3g}: " + ("diverged" if v is None else f"{v:.4g}")
                        for k, v in chosen["grid"].items()) + unit + ")"
                        + (" (at the edge of its grid)" if chosen["at_grid_edge"] else ""))
                run = finetune_curve(model, theta, data, loss, config.steps, lr, prox,
                                     config.curve, visual_at=(0, 1, 20, config.steps),
                                     rule=rule)
                run["lr"] = lr
                applied = rule or AdaptConfig()
                run["optimizer"], run["frozen"] = applied.optimizer, list(applied.frozen)
                if applied.coarse_iterations:
                    run["coarse_iterations"] = applied.coarse_iterations
                if chosen is not None:
                    run["lr_selection"] = {k: chosen[k] for k in ("grid", "at_grid_edge",
                                                                  "seconds", "criterion")}
                for n, v in run.pop("visuals").items():
                    visuals[f"{task_name}/{init}_ft_{tag}_{n}"] = v
                runs[f"{init}_ft_{tag}"] = run
                start = _fmt(run["steps"][0]) if 0 in run["steps"] else "-"
                log(f"  {task_name} {init:10s} {loss:12s} 0: {start}  {config.steps}: "
                    f"{_fmt(run['steps'][config.steps])}  ({run['finetune_seconds']:.0f} s)")
        scratch = dict(item.split("=", 1) for item in config.scratch_models)
        if task_name in scratch and not _model_exists(scratch[task_name]):
            log(f"  warning: scratch model {scratch[task_name]} does not exist: column skipped")
            notes["scratch_missing"] = scratch[task_name]
        elif task_name in scratch:
            model, theta, meta = _load(scratch[task_name], device)
            steps = int(meta.get("scratch", {}).get("steps", 0))
            rec = evaluate_method(lambda b, m=model, t=theta: reconstruct(m, t, b), data.test,
                                  data.peak, keep_first=True)
            visuals[f"{task_name}/scratch"] = rec.pop("first")
            runs["scratch"] = {"steps": {steps: rec}, "source": scratch[task_name],
                               "train": meta.get("scratch", {})}
            log(f"  {task_name} scratch ({steps} steps) {_fmt(rec)}")
        results["tasks"][task_name] = {
            "about": data.about, "test_images": data.test_names, "baselines": rows,
            "pdnet": runs, "seconds": time.perf_counter() - t_task, **notes,
        }
    if config.pdnet and config.training_tasks:
        results["training_tasks"] = training_task_scores(inits, config, data_root, device, log)
    results["table"] = table_rows(results)
    results["wall_seconds"] = time.perf_counter() - t_start
    results["machine"] = {"platform": platform.platform(), "processor": platform.processor(),
                          "torch": torch.__version__, "threads": torch.get_num_threads(),
                          "device": str(device)}
    write_json(out, results)
    vis_path = out.with_name(out.stem + "_visuals.safetensors")
    save_tensors(vis_path, {k: v.to(torch.float16).contiguous() for k, v in visuals.items()},
                  {"about": "first test image of each task, every method, float16"})
    return results


def _set3c(config: Table1Config, data_root, device) -> list[Tensor]:
    from metaprior.data import set3c

    images = [im.to(device) for im in set3c(data_root)]
    return images[: config.max_test_images] if config.max_test_images else images


def training_task_entry(model, theta, meta: dict, images: Sequence[Tensor], config: Table1Config
                        ) -> dict:
    """One model on T1–T4 (Set3C): A⁺y, θ itself and the "inner" model, one step of the
    model's own inner loss (its inner optimizer and lr, no proximal term) on each image's
    measurements.

    Returns:
        ``{"depth", "inner": AdaptConfig fields, "rows": per-task per-image PSNRs}``.
    """
    from metaprior.adapt import AdaptConfig
    from metaprior.evaluate import task_table
    from metaprior.tasks import TRAIN_TASKS

    inner = meta.get("meta_config", {})
    adapt = AdaptConfig.from_model(meta, steps=1, lr=inner.get("inner_lr", config.lr),
                                   loss=inner.get("inner_loss", "supervised"), prox_lambda=0.0)
    rows = task_table(model, theta, TRAIN_TASKS, images, config.seed, adapt)
    return {"depth": model.config.depth, "inner": asdict(adapt), "rows": rows}


def _log_rows(prefix: str, rows: list[dict], log) -> None:
    for r in rows:
        log(f"  {prefix} {r['task']:8s} meta {mean_std(r['model'])[0]:6.2f}  inner "
            f"{mean_std(r['adapted'])[0]:6.2f} dB")


def training_task_scores(inits: dict, config: Table1Config, data_root, device, log=print
                         ) -> dict:
    """The paper's Fig. 3 at the shipped depth: on Set3C, each meta-model θ and the "inner" model
    (one step of its own inner loss on each test image's measurements) for T1–T4."""
    images = _set3c(config, data_root, device)
    out = {}
    for name in (n for n in ("meta_sup", "meta_unsup") if n in config.inits):
        model, theta, meta = inits[name]
        out[name] = training_task_entry(model, theta, meta, images, config)
        _log_rows(name, out[name]["rows"], log)
    return out


def run_depth_sweep(config: Table1Config, out: str | Path, data_root=None, device="cpu",
                    log=print) -> dict:
    """The paper's Fig. 3: every model of ``config.depth_models`` on T1–T4 (Set3C), θ and the
    inner model, grouped by inner loss and sorted by depth; written to ``out`` (JSON).
    ``python -m reproductions report --results OUT`` draws PSNR against depth."""
    if not config.depth_models:
        raise ValueError("depth needs depth_models in --config: "
                         "[\"meta_sup=MODEL\", \"meta_unsup=MODEL\", ...]")
    t_start = time.perf_counter()
    images = _set3c(config, data_root, device)
    sweep: dict[str, list] = {}
    for item in config.depth_models:
        name, source = item.split("=", 1)
        model, theta, meta = _load(source, device)
        t0 = time.perf_counter()
        entry = training_task_entry(model, theta, meta, images, config)
        entry.update(source=source, seconds=time.perf_counter() - t0, **_describe(meta))
        sweep.setdefault(name, []).append(entry)
        _log_rows(f"{name} depth {entry['depth']:3d}", entry["rows"], log)
    for entries in sweep.values():
        entries.sort(key=lambda e: e["depth"])
    results = {"suite": "depth", "config": asdict(config), "depth_sweep": sweep,
               "test_images": "Set3C, RGB folded into the batch",
               "wall_seconds": time.perf_counter() - t_start,
               "machine": {"platform": platform.platform(), "torch": torch.__version__,
                           "threads": torch.get_num_threads(), "device": str(device)}}
    write_json(out, results)
    return results


def _model_exists(name_or_path: str) -> bool:
    from metaprior.checkpoint import resolve_model_path

    try:
        resolve_model_path(name_or_path)
    except FileNotFoundError:
        return False
    return True


def _describe(meta: dict) -> dict:
    keep = ("architecture", "model_config", "pdnet_config", "meta_config", "step")
    return {k: meta[k] for k in keep if k in meta}


def table_rows(results: dict) -> dict:
    """The summary table: ``{task: {column: {psnr_mean, psnr_std, ssim_mean, ...}}}``."""
    table = {}
    for task, r in results["tasks"].items():
        row = {name: {**_summary(rec), "sec_per_image": rec["sec_per_image"]}
               for name, rec in r["baselines"].items()}
        for name, run in r["pdnet"].items():
            for n, rec in run["steps"].items():
                row[f"{name}_{n}" if name != "scratch" else "scratch"] = {
                    **_summary(rec), "sec_per_image": rec["sec_per_image"]}
        table[task] = row
    return table


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def quick_config(**overrides) -> Table1Config:
    """A minutes-long smoke configuration of the same protocol (tests, ``--quick``)."""
    base = Table1Config(steps=2, curve=(0, 1), lr_grid=(1e-3, 1e-2), batch=2, patch_size=32,
                        variants=(), grid_images=1, grid_crop=64, max_test_images=1,
                        lr_extend=1)
    return replace(base, **overrides)


def train_scratch(task_name: str, config: Table1Config, steps: int, out: str | Path,
                  data_root=None, device="cpu", depth: int = 20, resume: bool = False,
                  ckpt_every: int = 500, log=print, overwrite: bool = False) -> Path:
    """The paper's "PDNet" baseline: a depth-``depth`` PDNet trained from a random
    initialisation on ``task_name``'s fine-tuning stream (the one Table 1 fine-tunes on),
    supervised Adam at ``config.scratch_lr``; written to ``out`` (.safetensors).

    It is a long supervised adaptation run (:func:`metaprior.adapt_run.fine_tune_run`), checkpointed
    under ``<out stem>.run/checkpoints``; ``resume`` continues the latest checkpoint (the same
    task, lr, seed, depth and stream; ``steps`` may exceed the first run's, to extend it);
    ``overwrite`` starts afresh over earlier checkpoints.
    """
    from metaprior.adapt import AdaptConfig
    from metaprior.adapt_run import fine_tune_run
    from metaprior.checkpoint import save_model
    from metaprior.models import PDNet, PDNetConfig

    if steps < 1:
        raise ValueError(f"--scratch-steps must be >= 1, got {steps}")
    out = Path(out)
    recipe = {"task": task_name, "seed": config.seed, "depth": depth,
              "stream": [config.batch, config.patch_size, config.mri_batch]}
    data = load_task_data(task_name, replace(config, max_test_images=1), data_root, device)
    model = PDNet(PDNetConfig(depth=depth)).to(device)
    theta = _random_init(model, config.seed + 7)

    def progress(state, loss: float) -> None:
        if state.step % 100 == 0 or state.step == steps:
            log(f"  {task_name} scratch step {state.step}/{steps} loss {loss:.3e}")

    run = fine_tune_run(model, theta, data.stream(),
                        AdaptConfig(steps=steps, lr=config.scratch_lr, loss="supervised"),
                        out.with_name(out.stem + ".run"), recipe, ckpt_every, resume,
                        callback=progress, log=lambda line: log(f"  {line}"),
                        overwrite=overwrite)
    meta = {"scratch": {"task": task_name, "steps": steps, "lr": config.scratch_lr,
                        "seed": config.seed, "seconds": run.seconds,
                        "data": data.about["finetune"], "resumed_at": run.resumed_at},
            "meta_config": {"inner_steps": 0, "inner_lr": config.scratch_lr}}
    return save_model(out, model, run.params, metadata=meta)


# --- result checks -------------------------------------------------------------------------

def check_results(results: dict) -> None:
    """A Table 1 suite's JSON is complete: every configured method of every task scored on
    every test image, each run's lr the held-out best of its grid, every number finite.
    Raises ``ValueError`` naming the first entry that is not."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"table1 results: {what}")

    config = results["config"]
    for task in config["tasks"]:
        r = results["tasks"][task]
        need(len(r["test_images"]) >= 1, f"{task}: no test images")
        baselines = r["baselines"]
        need("pinv" in baselines, f"{task}: no pseudo-inverse row")
        for name in config["baselines"]:
            rec = baselines[name]
            need(bool(str(rec["hyper"])) and bool(rec["grid"]), f"{task}/{name}: no grid")
            need(all(math.isfinite(v) for v in rec["grid"].values()),
                 f"{task}/{name}: non-finite grid score")
        if config["pdnet"]:
            for init in config.get("inits", PAPER_INITS):
                losses = config.get("losses") if init != "random" else None
                for tag in [LOSS_TAGS[k] for k in losses] if losses else ("sup", "unsup"):
                    run = r["pdnet"][f"{init}_ft_{tag}"]
                    need(str(config["steps"]) in run["steps"],
                         f"{task}/{init}_ft_{tag}: no score after {config['steps']} steps")
            for name, run in r["pdnet"].items():
                if config.get("lr_grid") and name != "scratch":  # chosen on held-out images
                    grid = run["lr_selection"]["grid"]
                    tried = sorted(map(float, grid))
                    need(run["lr"] in tried, f"{task}/{name}: lr not in its selection grid")
                    meta = (results.get("models", {}).get(name.rsplit("_ft_", 1)[0], {})
                            .get("meta_config") or {})
                    base = search_grid(config["lr_grid"],
                                       config.get("scale_grid", Table1Config.scale_grid),
                                       meta["inner_lr"] if meta.get("learn_inner_lr") else None)
                    need(set(base) <= set(tried),
                         f"{task}/{name}: lr selection grid lacks values of its start grid "
                         f"{list(base)}")
                    # lr_extend values a side at most (a config without it: none)
                    need(len(tried) - len(base) <= 2 * config.get("lr_extend", 0),
                         f"{task}/{name}: lr selection grid extends past lr_extend")
                    valid = [v for v in grid.values() if v is not None]
                    label_free = run["lr_selection"].get("criterion") == "label-free"
                    need(grid[str(run["lr"])] == (min(valid) if label_free else max(valid)),
                         f"{task}/{name}: lr is not the held-out best")
        for name, rec in [*baselines.items(),
                          *((f"{k}@{n}", v) for k, run in r["pdnet"].items()
                            for n, v in run["steps"].items())]:
            need(len(rec["psnr"]) == len(r["test_images"]) == len(rec["ssim"]),
                 f"{task}/{name}: not one score per test image")
            need(all(math.isfinite(v) for v in rec["psnr"] + rec["ssim"]),
                 f"{task}/{name}: non-finite score")
            need(math.isfinite(rec["sec_per_image"]), f"{task}/{name}: non-finite time")
    for task, row in results["table"].items():
        for name, v in row.items():
            need(all(math.isfinite(v[k]) for k in ("psnr_mean", "psnr_std", "ssim_mean")),
                 f"table {task}/{name}: non-finite summary")


def check_depth_results(results: dict, n_images: int) -> None:
    """A ```depth``` JSON is complete: T1–T4 rows for every model, sorted by depth,
    ``n_images`` finite scores each. Raises ``ValueError`` naming the first gap."""
    if results.get("suite") != "depth":
        raise ValueError("depth results: not the JSON of `depth`")
    for name, entries in results["depth_sweep"].items():
        if name not in ("meta_sup", "meta_unsup"):
            raise ValueError(f"depth results: unknown model kind {name!r}")
        depths = [e["depth"] for e in entries]
        if depths != sorted(depths):
            raise ValueError(f"depth results: {name} not sorted by depth")
        for e in entries:
            if [r["task"] for r in e["rows"]] != ["denoise", "tv", "deblur", "inpaint"]:
                raise ValueError(f"depth results: {name} depth {e['depth']}: not T1-T4")
            for r in e["rows"]:
                for key in ("pseudo_inverse", "model", "adapted"):
                    if len(r[key]) != n_images or not all(math.isfinite(v) for v in r[key]):
                        raise ValueError(f"depth results: {name} depth {e['depth']} "
                                         f"{r['task']} {key}: not {n_images} finite scores")
