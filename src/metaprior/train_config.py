"""The configuration of a meta-training run: its sections (``network``, ``model``, ``hqs``,
``meta``, ``data``, ``optim``, ``run``), the outer learning-rate schedule, and what a resumed
run may change and what its log keeps (:func:`resume_config`, :func:`truncate_log`).
:mod:`metaprior.train` runs it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from metaprior import checkpoint as ckpt
from metaprior.config import check_at_least, check_fits_in_memory, check_positive, from_dict
from metaprior.meta.config import MetaConfig
from metaprior.models import ARCHITECTURES, HQSNetConfig, PDNetConfig


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "bsds"  # "bsds": inner BSDS500 train+test, outer val | "demo": scikit-image
    data_root: str | None = None  # data root; default: $METAPRIOR_DATA
    patch_size: int = 64  # random grayscale crops with flips
    inner_batch: int = 8  # patches per task for the inner loss
    outer_batch: int = 8  # patches per task for the outer loss
    val_batch: int = 8  # fixed validation patches per task (from the outer pool)

    def __post_init__(self) -> None:
        if self.dataset not in ("bsds", "demo"):
            raise ValueError(f"dataset must be 'bsds' or 'demo', got {self.dataset!r}")
        check_at_least("data", 1, patch_size=self.patch_size, inner_batch=self.inner_batch,
                       outer_batch=self.outer_batch, val_batch=self.val_batch)
        for name in ("inner_batch", "outer_batch", "val_batch"):
            check_fits_in_memory(f"data: {name}", "--" + name.replace("_", "-"),
                                 getattr(self, name), self.patch_size)


@dataclass(frozen=True)
class OptimConfig:
    steps: int = 10000  # outer steps
    lr: float = 1e-3  # outer Adam learning rate
    schedule: str = "cosine"  # "cosine" (to 0 at the last step) | "constant"
    warmup_steps: int = 0  # linear warm-up
    grad_clip: float = 0.0  # clip the global hypergradient norm (0: off)
    inner_lr_lr: float = 1e-2  # outer Adam lr of the learned (log) inner learning rates

    def __post_init__(self) -> None:
        check_at_least("optim", 1, steps=self.steps)
        check_positive("optim", lr=self.lr, inner_lr_lr=self.inner_lr_lr)
        check_at_least("optim", 0, warmup_steps=self.warmup_steps)
        if not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            raise ValueError(f"optim: grad_clip must be >= 0 (0: off), got {self.grad_clip}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"optim: schedule must be 'cosine' or 'constant', got "
                             f"{self.schedule!r}")


@dataclass(frozen=True)
class RunConfig:
    out: str = "runs/meta"  # output folder: config.json, log.jsonl, checkpoints/, model
    seed: int = 0  # seed of the initialisation and of every data stream (patches, masks, noise)
    device: str = "cpu"  # torch device: cpu, cuda or cuda:N
    val_every: int = 100  # validation PSNR every N steps (0: never)
    ckpt_every: int = 100  # checkpoint every N steps (and at the end; 0: at the end only)
    keep_checkpoints: int = 2  # newest checkpoints kept (0: keep all)
    max_nonfinite: int = 5  # consecutive non-finite steps before the run stops
    init_from: str = ""  # start θ from this model (file, run, shipped name; "" = random init)
    dist_timeout: float = 600.0  # torchrun runs: seconds a rank waits for a silent peer

    def __post_init__(self) -> None:
        check_at_least("run", 0, val_every=self.val_every, ckpt_every=self.ckpt_every,
                       keep_checkpoints=self.keep_checkpoints)
        check_at_least("run", 1, max_nonfinite=self.max_nonfinite)
        check_positive("run", dist_timeout=self.dist_timeout)


@dataclass(frozen=True)
class NetworkConfig:
    architecture: str = "pdnet"  # the network trained: pdnet (eq. 7) | hqs (FFDNet prior)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"network: architecture must be one of {sorted(ARCHITECTURES)}, "
                             f"got {self.architecture!r}")


@dataclass(frozen=True)
class TrainConfig:
    model: PDNetConfig = field(default_factory=PDNetConfig)
    hqs: HQSNetConfig = field(default_factory=HQSNetConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def model_config(self):
        """The config of the network trained (section ``model`` for PDNet, ``hqs`` for
        HQSNet)."""
        return self.model if self.network.architecture == "pdnet" else self.hqs


SECTIONS = {"network": NetworkConfig, "model": PDNetConfig, "hqs": HQSNetConfig,
            "meta": MetaConfig, "data": DataConfig, "optim": OptimConfig, "run": RunConfig}

def learning_rate(config: OptimConfig, step: int) -> float:
    """Outer learning rate at (0-based) ``step``: warm-up, then cosine decay or constant."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return config.lr
    span = max(1, config.steps - config.warmup_steps)
    t = min(1.0, (step - config.warmup_steps) / span)
    return config.lr * 0.5 * (1 + math.cos(math.pi * t))


#: Values a resumed run may change (the rest come from its saved configuration).
RESUMABLE = ("optim.steps", "run.out", "run.device", "run.dist_timeout")


def check_extends(steps: int | None, total: int, done: int) -> None:
    """``--resume --steps`` may only extend a run: refuse ``steps`` below the run's own total
    (the lr schedule spans that total, so a shorter one would not be the run it resumes) or
    below the steps its checkpoint has done."""
    if steps is not None and steps < max(total, done):
        raise ValueError(f"--steps {steps} is below the run's {total} steps (its checkpoint is "
                         f"at step {done}): --resume only extends a run; give --steps "
                         f"{max(total, done)} or more, or drop --steps")


def resume_config(out: Path, given: dict, steps: int | None) -> tuple[TrainConfig, Path]:
    """The saved configuration of the run in ``out`` and its latest checkpoint; an explicitly
    ``given`` value that differs from the saved one is an error (only :data:`RESUMABLE`
    values may change)."""
    latest = ckpt.latest_checkpoint(out)
    if latest is None and (unnamed := ckpt.unnamed_checkpoints(out)):
        raise FileNotFoundError(unnamed)
    if latest is None and not (out / "config.json").is_file():
        raise FileNotFoundError(f"--resume: {out} holds no run (no config.json): drop --resume "
                                f"to start one, in another --out if its files are not a run's")
    if latest is None:
        raise FileNotFoundError(f"--resume: no checkpoint under {out / 'checkpoints'} (a run "
                                f"stopped before its first checkpoint): start it again with "
                                f"--overwrite instead of --resume")
    state = ckpt.read_state(latest)
    saved = state["config"]
    check_extends(steps, saved["optim"]["steps"], state["step"])
    for key, value in given.items():
        section, name = key.split(".")
        old = saved.get(section, {}).get(name)
        if key not in RESUMABLE and (list(value) if isinstance(value, tuple) else value) != old:
            raise ValueError(f"--resume continues the saved run, whose {key} is {old!r}, not "
                             f"{value!r}: drop --{name.replace('_', '-')} or its --config "
                             f"entry (only --steps, --device and --dist-timeout may change) "
                             f"or start a new run in another --out")
    if steps is not None:
        saved["optim"]["steps"] = steps
    if "run.device" in given:
        saved["run"]["device"] = given["run.device"]
    saved["run"]["out"] = str(out)
    return from_dict(TrainConfig, saved), latest


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines of steps >= ``step`` (written after the checkpoint we resume from), and
    a last line torn by a kill mid-write; a damaged line elsewhere is an error naming it."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    keep = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # torn by a kill: the checkpoint has the state, drop the fragment
            raise ValueError(f"{path} line {i + 1} is not JSON: repair or remove that line, "
                             f"then --resume") from None
        if record.get("step", -1) < step:
            keep.append(line)
    ckpt.write_bytes_atomic(path, "".join(line + "\n" for line in keep).encode())
