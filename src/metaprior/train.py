r"""Meta-training (eq. (2) of arXiv 2311.18710): outer Adam on the sum of task hypergradients.

Each outer step draws the meta-batch of tasks, an inner batch per task from the inner pool
(BSDS500 train+test patches) and an outer batch from the outer pool (BSDS500 val patches),
computes every task's hypergradient (:mod:`metaprior.meta.step`) and takes one Adam step on
their sum. The next meta-batch is drawn in a background thread while a step runs (the same
batches as drawn serially). Every step is logged to ``log.jsonl``; checkpoints are atomic and
``resume`` continues bitwise-identically (same seed, CPU). The run's configuration is
:mod:`metaprior.train_config` (its names are importable from here too).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from metaprior import checkpoint as ckpt
from metaprior import distributed
from metaprior.config import to_dict
from metaprior.data import PatchSampler, bsds500, demo_images
from metaprior.meta.config import INNER_LR_PREFIX
from metaprior.meta.problem import check_frozen, inner_adapt, is_frozen, reconstruct
from metaprior.meta.step import meta_gradient
from metaprior.metrics import psnr
from metaprior.models import build_model
from metaprior.outputs import (
    RunFolderError,
    RunLock,
    check_writable_dir,
    clear_run,
    holds_run,
    remove_orphans,
    write_or_keep,
)
from metaprior.tasks import TaskBatch, get_task, sample_or_name
from metaprior.train_config import (  # noqa: F401 (OptimConfig, RunConfig: re-exported)
    DataConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    learning_rate,
    resume_config,
    truncate_log,
)


class TrainingDivergedError(RuntimeError):
    pass


def image_pools(config: DataConfig) -> tuple[list, list]:
    """(inner pool, outer pool) of full images."""
    if config.dataset == "bsds":
        return (bsds500(config.data_root, ("train", "test")),
                bsds500(config.data_root, ("val",)))
    images = demo_images("train", size=128)  # "demo" (DataConfig checks the name)
    return images[:6], images[6:]


def outer_groups(model: torch.nn.Module, lr: float,
                 trained: dict[str, torch.nn.Parameter]) -> list[dict]:
    """The outer optimizer's parameter groups over ``trained`` (named parameters of ``model``):
    one per relative learning rate the model declares (``model.lr_scales()``; one group at
    ``lr`` for a model that declares none)."""
    scales = model.lr_scales() if hasattr(model, "lr_scales") else {}
    groups: dict[float, list] = {}
    for name, p in trained.items():
        groups.setdefault(float(scales.get(name, 1.0)), []).append(p)
    return [{"params": ps, "base_lr": lr * s} for s, ps in groups.items()]


class MetaTrainer:
    """Holds the model, outer optimizer and all random streams of a run."""

    def __init__(self, config: TrainConfig, log=print) -> None:
        self.config = config
        self.log = log
        self.device = torch.device(distributed.rank_device(config.run.device))
        seed = config.run.seed
        self.model = build_model(config.network.architecture, config.model_config(),
                                 seed).to(self.device)
        if config.run.init_from:
            self._warm_start(config.run.init_from)
        check_frozen([k for k, _ in self.model.named_parameters()], config.meta.frozen,
                     "meta-train")
        # learned inner learning rates, as logs (positive, and Adam moves them multiplicatively)
        self.log_inner_lr = {
            name: torch.nn.Parameter(torch.tensor(math.log(config.meta.inner_lr),
                                                  device=self.device))
            for name in self.trained()} if config.meta.learn_inner_lr else {}
        self.tasks = [get_task(name) for name in config.meta.tasks]
        inner_pool, outer_pool = image_pools(config.data)
        p = config.data.patch_size
        self.inner_sampler = PatchSampler(inner_pool, p, seed=seed + 1)
        self.outer_sampler = PatchSampler(outer_pool, p, seed=seed + 2)
        self.task_rng = torch.Generator().manual_seed(seed + 3)
        groups = outer_groups(self.model, config.optim.lr, self.trained())
        if self.log_inner_lr:
            groups.append({"params": list(self.log_inner_lr.values()),
                           "base_lr": config.optim.inner_lr_lr})
        self.optimizer = torch.optim.Adam(groups, lr=config.optim.lr, foreach=False)
        self.step = 0
        self.nonfinite_streak = 0
        val_images = PatchSampler(outer_pool, p, seed=seed + 4).sample(config.data.val_batch)
        val_rng = torch.Generator().manual_seed(seed + 5)
        self.val_batches = [sample_or_name(t, val_images.to(self.device), val_rng,
                                           f"--patch-size {p}") for t in self.tasks]
        # One background thread draws the next meta-batch while a step runs; it alone touches
        # the three sampling streams, in order, so the batches are those of serial sampling.
        self._sampler = ThreadPoolExecutor(1, thread_name_prefix="metaprior-sampler")
        self._ahead: Future | None = None  # (streams before the batch, batch) drawn ahead

    def _warm_start(self, source: str) -> None:
        model, _ = ckpt.load_model(source)
        if type(model) is not type(self.model) or model.config != self.model.config:
            raise ValueError(f"--init-from {source}: its {type(model).__name__} config "
                             f"{model.config} differs from this run's {self.model.config}")
        self.model.load_state_dict(model.state_dict())

    def trained(self) -> dict[str, torch.nn.Parameter]:
        """θ: the model's parameters but the ``meta.frozen`` ones (those run as they are)."""
        return {k: p for k, p in self.model.named_parameters()
                if not is_frozen(k, self.config.meta.frozen)}

    def inner_lrs(self) -> dict[str, torch.Tensor]:
        r"""The learned inner learning rates :math:`\eta_k = e^{s_k}` (empty if not learned)."""
        return {k: s.exp() for k, s in self.log_inner_lr.items()}

    def _named_outer_params(self) -> dict[str, torch.nn.Parameter]:
        return {**self.trained(),
                **{INNER_LR_PREFIX + k: v for k, v in self.log_inner_lr.items()}}

    # --- persistence ----------------------------------------------------------------------
    def _streams(self) -> dict[str, torch.Tensor]:
        return {"rng.inner": self.inner_sampler.generator.get_state(),
                "rng.outer": self.outer_sampler.generator.get_state(),
                "rng.tasks": self.task_rng.get_state()}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        # The streams as they were before any batch drawn ahead: what a resumed run redraws.
        tensors = self._ahead.result()[0] if self._ahead else self._streams()
        tensors |= {f"log_{INNER_LR_PREFIX}{k}": v.detach() for k, v in self.log_inner_lr.items()}
        named = self._named_outer_params()
        names = dict(zip(map(id, named.values()), named, strict=True))
        for p, st in self.optimizer.state.items():
            for key, value in st.items():
                tensors[f"adam.{names[id(p)]}.{key}"] = torch.as_tensor(value)
        return tensors

    def save(self) -> Path:
        cfg = self.config
        state = {"step": self.step, "nonfinite_streak": self.nonfinite_streak,
                 "config": to_dict(cfg)}
        return ckpt.save_checkpoint(cfg.run.out, self.step, self.model, self.state_tensors(),
                                    state, model_metadata=self.model_metadata(),
                                    keep=cfg.run.keep_checkpoints)

    def model_metadata(self) -> dict:
        meta = {"meta_config": to_dict(self.config.meta), "step": self.step,
                "train_config": to_dict(self.config)}
        if self.log_inner_lr:
            meta["inner_lrs"] = self._inner_lr_values()
        return meta

    def _inner_lr_values(self) -> dict[str, float]:
        return {k: float(v.detach()) for k, v in self.inner_lrs().items()}

    def restore(self, path: Path) -> None:
        weights, tensors, state = ckpt.load_checkpoint(path)
        if self._ahead:  # a batch drawn from the streams being replaced
            self._ahead.result()
            self._ahead = None
        self.model.load_state_dict(weights)
        self.inner_sampler.generator.set_state(tensors["rng.inner"])
        self.outer_sampler.generator.set_state(tensors["rng.outer"])
        self.task_rng.set_state(tensors["rng.tasks"])
        with torch.no_grad():
            for k, v in self.log_inner_lr.items():
                v.copy_(tensors[f"log_{INNER_LR_PREFIX}{k}"])
        params = self._named_outer_params()
        self.optimizer.state.clear()
        for key, value in tensors.items():
            if key.startswith("adam."):
                pname, skey = key[len("adam."):].rsplit(".", 1)
                self.optimizer.state[params[pname]][skey] = value.to(
                    self.device if skey != "step" else "cpu")
        self.step = state["step"]
        self.nonfinite_streak = state["nonfinite_streak"]

    # --- one outer step ---------------------------------------------------------------------
    def next_meta_batch(self) -> list[tuple[TaskBatch, TaskBatch]]:
        """The meta-batch of this step. The following step's is then drawn in the background,
        overlapping its sampling (T2's TV targets: ~0.3 s) with this step's compute."""
        ahead = self._ahead or self._sampler.submit(self._draw)
        self._ahead = None
        batch = ahead.result()[1]
        if self.step + 1 < self.config.optim.steps:
            self._ahead = self._sampler.submit(self._draw)
        return batch

    def _draw(self) -> tuple[dict[str, torch.Tensor], list[tuple[TaskBatch, TaskBatch]]]:
        return self._streams(), self._sample_meta_batch()

    def _sample_meta_batch(self) -> list[tuple[TaskBatch, TaskBatch]]:
        cfg = self.config
        tasks = self.tasks
        if 0 < cfg.meta.tasks_per_step < len(tasks):
            idx = torch.randperm(len(tasks), generator=self.task_rng)[: cfg.meta.tasks_per_step]
            tasks = [tasks[int(i)] for i in idx]
        out = []
        for task in tasks:
            x_in = self.inner_sampler.sample(cfg.data.inner_batch).to(self.device)
            x_out = self.outer_sampler.sample(cfg.data.outer_batch).to(self.device)
            out.append((task.sample(x_in, self.task_rng), task.sample(x_out, self.task_rng)))
        return out

    def outer_step(self) -> dict:
        cfg = self.config
        t0 = time.perf_counter()
        lr = learning_rate(cfg.optim, self.step)
        theta = self.trained()
        lrs = {k: v.detach() for k, v in self.inner_lrs().items()} or None
        total, results = meta_gradient(self.model, theta, self.next_meta_batch(), cfg.meta, lrs)
        outer = sum(r.outer_loss for r in results)
        finite = math.isfinite(outer) and all(bool(torch.isfinite(g).all())
                                              for g in total.values())
        record = {"step": self.step, "lr": lr, "outer_loss": outer,
                  "tasks": {key: {"inner_loss": r.inner_loss, "outer_loss": r.outer_loss,
                                  **r.info} for key, r in zip(_task_keys(results), results,
                                                              strict=True)}}
        if finite:
            for name, p in theta.items():
                p.grad = total[name].to(p.dtype)
            for name, s in self.log_inner_lr.items():  # d/ds = d/dη · η with η = e^s
                s.grad = (total[INNER_LR_PREFIX + name] * lrs[name]).to(s.dtype)
            if cfg.optim.grad_clip > 0:
                record["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(
                    theta.values(), cfg.optim.grad_clip))
            for group in self.optimizer.param_groups:  # one schedule, each group's base lr
                group["lr"] = learning_rate(replace(cfg.optim, lr=group["base_lr"]), self.step)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.log_inner_lr:
                record["inner_lr"] = self._inner_lr_values()
            self.nonfinite_streak = 0
        else:
            self.nonfinite_streak += 1
            record["skipped"] = "non-finite loss or hypergradient"
            warnings.warn(f"step {self.step}: non-finite outer loss or hypergradient, step "
                          f"skipped ({self.nonfinite_streak} in a row)", RuntimeWarning,
                          stacklevel=2)
        self.step += 1
        record["seconds"] = time.perf_counter() - t0
        return record

    @torch.no_grad()
    def validate(self) -> dict:
        """PSNR (dB) on the fixed validation patches: the meta-model f_θ and the model after
        the K inner steps on that batch (the "inner" model of the paper's Fig. 3)."""
        theta = {k: v.detach() for k, v in self.trained().items()}
        out = {}
        for batch in self.val_batches:
            meta_psnr = float(psnr(reconstruct(self.model, theta, batch), batch.target).mean())
            with torch.enable_grad():
                phi, _ = inner_adapt(self.model, theta, batch, self.config.meta,
                                     create_graph=False, lrs=self.inner_lrs() or None)
            inner_psnr = float(psnr(reconstruct(self.model, phi, batch), batch.target).mean())
            out[batch.task] = {"meta_psnr": meta_psnr, "inner_psnr": inner_psnr}
        return out


def _task_keys(results) -> list[str]:
    """Log keys of a meta-batch's tasks: the task name, with ``#2``, ``#3``… for a task that
    appears more than once (e.g. ``--tasks deblur-mix,deblur-mix,...``)."""
    seen: dict[str, int] = {}
    keys = []
    for r in results:
        seen[r.task] = seen.get(r.task, 0) + 1
        keys.append(r.task if seen[r.task] == 1 else f"{r.task}#{seen[r.task]}")
    return keys


def meta_train(config: TrainConfig, resume: bool = False, log=print, progress: bool = True,
               steps: int | None = None, overwrite: bool = False,
               given: dict | None = None) -> Path:
    """Run (or resume) meta-training; returns the path of the final model file.

    With ``resume``, the configuration saved in the run's last checkpoint is used; ``steps``
    (if given) extends the run, and ``given`` (explicitly requested ``"section.field"``
    values) must agree with it except for ``optim.steps`` and ``run.device``. A folder that
    already holds a run is refused unless ``resume`` or ``overwrite``; with ``overwrite`` the
    earlier run's files are removed only after the new run's configuration and data loaded.
    The folder is locked (:class:`metaprior.outputs.RunLock`) while the run writes.
    """
    if resume and overwrite:
        raise ValueError("--resume continues the run in --out, --overwrite replaces it: give "
                         "one of them")
    out = check_writable_dir(config.run.out, "--out")
    if resume and not out.is_dir():
        raise FileNotFoundError(f"--resume: {out} does not exist: there is no run to resume")
    joined = distributed.launched() and not distributed.active()
    distributed.setup(config.run.device, config.run.dist_timeout)
    main = distributed.is_main()
    try:
        with RunLock(out) if main else contextlib.nullcontext():
            # Phase 1, rank 0: folder checks under the lock, configuration, data (the other
            # ranks wait, so they never read a folder rank 0 is about to refuse).
            trainer = latest = None
            with _agreed("checking --out and loading the run"):
                if main:
                    remove_orphans(out)
                    remove_orphans(ckpt.checkpoint_dir(out))
                    if resume:
                        config, latest = resume_config(out, given or {}, steps)
                    elif holds_run(out) and not overwrite:
                        raise RunFolderError(f"--out {out} already holds a run: continue it "
                                             f"with --resume, replace it with --overwrite, or "
                                             f"choose another --out")
                    trainer = MetaTrainer(config, log)  # validates tasks, data, warm start
            # Phase 2, the other ranks: the same state (read from the shared run folder).
            with _agreed("loading the run on every rank"):
                if not main:
                    if resume:
                        config, latest = resume_config(out, given or {}, steps)
                    trainer = MetaTrainer(config, log=lambda *_: None)
                if resume:
                    trainer.restore(latest)
            if main:
                if resume:
                    truncate_log(out / "log.jsonl", trainer.step)
                    log(f"resumed from {latest} at step {trainer.step}")
                elif overwrite:
                    clear_run(out)
                ckpt.write_bytes_atomic(out / "config.json",
                                        json.dumps(to_dict(config), indent=1).encode())
            return _train_loop(trainer, out, progress and main)
    finally:
        if joined:
            distributed.teardown()


@contextlib.contextmanager
def _agreed(what: str):
    """Run the block on every rank, then agree that it succeeded everywhere (a rank that
    failed raises its own error; the others a one-line one naming ``what``)."""
    try:
        yield
    except BaseException:
        distributed.agree(False, what)
        raise
    distributed.agree(True, what)


def _train_loop(trainer: MetaTrainer, out: Path, progress: bool) -> Path:
    """The outer steps; rank 0 alone logs, validates, checkpoints and writes the model."""
    config, run, main = trainer.config, trainer.config.run, distributed.is_main()
    bar = tqdm(total=config.optim.steps, initial=trainer.step, disable=not progress,
               desc="meta-train", unit="step", dynamic_ncols=True)
    with open(out / "log.jsonl", "a") if main else contextlib.nullcontext() as log_file:
        while trainer.step < config.optim.steps:
            record = trainer.outer_step()
            if trainer.nonfinite_streak >= run.max_nonfinite:  # the same on every rank
                if main:
                    log_file.write(json.dumps(record) + "\n")
                last = ckpt.latest_checkpoint(out)
                raise TrainingDivergedError(
                    f"{trainer.nonfinite_streak} non-finite steps in a row at step "
                    f"{trainer.step - 1}: stopped; last good checkpoint: {last} (lower --lr or "
                    f"--inner-lr)")
            if not main:
                continue
            if run.val_every and trainer.step % run.val_every == 0:
                record["val"] = trainer.validate()
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
            due = (run.ckpt_every and trainer.step % run.ckpt_every == 0) or \
                trainer.step == config.optim.steps
            if due and trainer.nonfinite_streak == 0:  # only good states are checkpointed
                trainer.save()
            bar.set_postfix(loss=f"{record['outer_loss']:.4g}",
                            s_per_step=f"{record['seconds']:.2f}")
            bar.update(1)
    bar.close()
    final = out / "model.safetensors"
    if main:
        write_or_keep(lambda path: ckpt.save_model(path, trainer.model,
                                                   metadata=trainer.model_metadata()),
                      final, "--out", "final model")
        trainer.log(f"wrote {final}")
    distributed.barrier()  # every rank returns once the model is written
    return final
