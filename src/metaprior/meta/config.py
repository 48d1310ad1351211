"""The bilevel problem's settings: which tasks, which inner problem, which hypergradient."""

from __future__ import annotations

import math
from dataclasses import dataclass

from metaprior.config import check_at_least, check_positive
from metaprior.losses import LOSSES

HYPERGRADIENTS = ("maml", "first_order", "implicit", "reptile")
#: What the outer step optimises: the bilevel problem of eq. (2), or joint multi-task
#: pre-training (no inner problem, hence no hypergradient; the non-meta baseline).
OBJECTIVES = ("bilevel", "joint")

#: Prefix of the learned inner learning rates among the hypergradients (``inner_lr.<name>``;
#: also in checkpoints, ``log_inner_lr.<name>``).
INNER_LR_PREFIX = "inner_lr."


@dataclass(frozen=True)
class MetaConfig:
    """The bilevel problem and how its hypergradient is computed (the paper's Sec. 3 and 4.2)."""

    tasks: tuple[str, ...] = ("denoise", "tv", "deblur", "inpaint")  # training family T1–T4
    tasks_per_step: int = 0  # tasks sampled per outer step; 0 = all of ``tasks``
    inner_loss: str = "supervised"  # "supervised" | "unsupervised"
    inner_steps: int = 1  # K (the paper uses 1 Adam step for PDNet)
    inner_optimizer: str = "adam"  # "adam" | "sgd"
    inner_lr: float = 3e-4  # inner learning rate η, also adaptation's default lr
    # Held fixed in both loops, as AdaptConfig.frozen in adaptation: meta-train what adapts.
    frozen: tuple[str, ...] = ()  # parameter-name prefixes held fixed (e.g. denoiser)
    # One inner learning rate per parameter tensor (W_k and λ_k of each layer), started at
    # inner_lr (Meta-SGD / MAML++'s per-layer rates), saved as the model's ``inner_lrs``;
    # adaptation then uses them (``AdaptConfig.lr_scales``).
    learn_inner_lr: bool = False  # learn per-layer inner learning rates (maml only)
    prox_lambda: float = 1e-2  # λ of λ/2‖φ − θ‖² (no effect with K = 1 from φ = θ)
    objective: str = "bilevel"  # "bilevel" (meta-learning) | "joint" (joint pre-training)
    hypergradient: str = "maml"  # bilevel: "maml" | "first_order" | "implicit" | "reptile"
    cg_iters: int = 20  # implicit: conjugate-gradient iterations
    cg_tol: float = 1e-6  # implicit: relative residual at which CG stops
    # MAML++'s multi-step loss at step 0: θ must reconstruct well before any inner step too.
    outer_theta_weight: float = 0.0  # w in L_outer(φ_K) + w·L_outer(θ) (0: φ_K only)
    # Tasks of a meta-batch run concurrently, each thread on its own model replica; results
    # are bitwise those of one thread.
    workers: int = 0  # threads over a meta-batch's tasks (0: one per core free of intra-op threads)

    def __post_init__(self) -> None:
        if self.hypergradient == "joint":  # model files may spell objective="joint" so
            object.__setattr__(self, "objective", "joint")
            object.__setattr__(self, "hypergradient", "maml")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.hypergradient not in HYPERGRADIENTS:
            raise ValueError(f"hypergradient must be one of {HYPERGRADIENTS}, "
                             f"got {self.hypergradient!r}")
        if self.inner_loss not in LOSSES:
            raise ValueError(f"inner_loss must be one of {LOSSES}, got {self.inner_loss!r}")
        check_at_least("meta", 1, inner_steps=self.inner_steps)
        if self.hypergradient == "implicit" and "equivariant" in self.inner_loss:
            raise ValueError(f"hypergradient 'implicit' supports the supervised and unsupervised "
                             f"inner losses; use maml or first_order with {self.inner_loss!r}")
        if self.hypergradient == "implicit" and self.prox_lambda <= 0:
            raise ValueError("hypergradient 'implicit' needs prox_lambda > 0 (iMAML solves "
                             "(I + H/λ) v = g)")
        if self.hypergradient == "reptile" and self.objective == "bilevel" and (
                self.inner_loss != "supervised" or self.inner_steps < 2):
            raise ValueError("hypergradient 'reptile' needs inner_loss 'supervised' and "
                             "inner_steps >= 2 (it moves θ towards weights fitted to the task's "
                             f"ground truth), got {self.inner_loss!r} and {self.inner_steps}")
        if not self.tasks:
            raise ValueError("tasks is empty: name at least one registered task")
        if self.learn_inner_lr and (self.hypergradient != "maml" or self.objective != "bilevel"):
            raise ValueError("learn_inner_lr needs hypergradient 'maml' (the learning rates get "
                             "their hypergradient by differentiating through the inner steps)")
        check_at_least("meta", 0, workers=self.workers)
        if not (math.isfinite(self.outer_theta_weight) and self.outer_theta_weight >= 0):
            raise ValueError(f"meta: outer_theta_weight must be a finite number >= 0 (0: off), "
                             f"got {self.outer_theta_weight}")
        check_positive("meta", inner_lr=self.inner_lr)
        if not (math.isfinite(self.cg_tol) and self.cg_tol > 0):
            raise ValueError(f"meta: cg_tol must be a finite number > 0, got {self.cg_tol}")
        if self.tasks_per_step > len(self.tasks):
            raise ValueError(f"meta: tasks_per_step must be <= the {len(self.tasks)} task(s) of "
                             f"tasks (0: all), got {self.tasks_per_step}")
        if self.tasks_per_step < 0 or self.cg_iters < 1 or not self.prox_lambda >= 0:
            raise ValueError(f"tasks_per_step must be >= 0, cg_iters >= 1 and prox_lambda >= 0, "
                             f"got {self.tasks_per_step}, {self.cg_iters}, {self.prox_lambda}")
