r"""Few-step adaptation of a (meta-)model to a task: the inner problem of eq. (2) of the paper
solved from :math:`\theta` on the task's own data, supervised or without ground truth.

Training from scratch (the "PDNet" baseline) is the same loop from a random initialisation
with ``prox_lambda=0``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace

import torch
from torch import nn

from metaprior.config import _coerce, check_at_least, check_positive
from metaprior.meta.inner import make_inner_optimizer
from metaprior.meta.problem import check_frozen, check_params, inner_step, is_frozen, reconstruct
from metaprior.tasks import TaskBatch
from metaprior.typing import OptState, Params

#: ``AdaptConfig.precision``: the autocast dtype of the network's forward pass in each
#: adaptation step (None: no autocast, float32).
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}


def bfloat16_is_fast(device: torch.device) -> bool:
    """Whether ``device`` has bfloat16 arithmetic: a CUDA card that supports it, or a CPU with
    AVX-512 BF16 or AMX instructions. Elsewhere oneDNN emulates bfloat16 convolutions, about
    20x slower than float32 (``docs/performance.md``)."""
    if device.type != "cpu":
        return device.type != "cuda" or torch.cuda.is_bf16_supported()
    known = [probe() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
             if (probe := getattr(torch.cpu, name, None)) is not None]
    return not known or any(known)  # a torch without these probes: not refused


@dataclass(frozen=True)
class AdaptConfig:
    r"""The adaptation rule: ``steps`` of ``optimizer`` at ``lr`` on ``loss`` + λ/2‖φ − θ‖²:
    ``supervised`` ‖f_φ(y) − x‖²; without ground truth ``unsupervised`` ‖A f_φ(y) − y‖²,
    ``equivariant`` that + the 90°-rotation equivariance term, ``robust-equivariant`` SURE at
    the task's noise level in its place (:func:`metaprior.meta.problem.inner_loss`)."""
    steps: int = 50  # optimizer steps (Table 1: 50)
    lr: float = 1e-3  # learning rate η
    loss: str = "unsupervised"  # supervised | unsupervised | equivariant | robust-equivariant
    prox_lambda: float = 0.0  # λ of λ/2‖φ − θ‖²
    optimizer: str = "adam"  # "adam" | "sgd"
    # relative learning rates: each parameter tensor's rate over ``lr`` (a meta-model's learned
    # inner lrs divided by its inner_lr, see :meth:`from_model`); None: ``lr`` for every tensor
    lr_scales: Mapping[str, float] | None = None
    # e.g. ("denoiser",): HQSNet's schedule only, faster (no gradient of the fixed weights)
    frozen: tuple[str, ...] = ()  # parameter-name prefixes held fixed during adaptation
    # bfloat16: the network under autocast; the operator, losses, φ, optimizer state in float32
    precision: str = "float32"  # bfloat16: mixed-precision steps (best with weights held fixed)
    # HQSNet: φ = θ + R⁺(φ′ − θ′), R⁺ resampling the copy's schedule back to the model's
    # iterations (:func:`coarse_problem`); steps cost about N/K as much
    coarse_iterations: int = 0  # adapt an N-iteration copy, carry its change over (0: the model)

    def __post_init__(self) -> None:
        from metaprior.losses import LOSSES

        for name in ("steps", "lr", "prox_lambda", "loss", "optimizer", "precision",
                     "coarse_iterations"):
            _coerce(AdaptConfig, name, getattr(self, name), "adapt: ")  # the field's type
        if self.lr_scales is not None and not (isinstance(self.lr_scales, Mapping) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool)
                for v in self.lr_scales.values())):
            raise ValueError(f"adapt: lr_scales must be None or a mapping of parameter names to "
                             f"numbers, got {type(self.lr_scales).__name__}")
        for name, scale in (self.lr_scales or {}).items():
            if not (math.isfinite(scale) and scale > 0):
                raise ValueError(f"adapt: lr_scales[{name!r}] must be a finite number > 0, got "
                                 f"{scale}")
        # a model file's JSON list becomes a tuple; anything else is refused
        object.__setattr__(self, "frozen", _coerce(AdaptConfig, "frozen", self.frozen,
                                                   "adapt: "))
        check_at_least("adapt", 0, steps=self.steps,  # 0: the model as it is
                       coarse_iterations=self.coarse_iterations)  # 0: the model's own
        check_positive("adapt", lr=self.lr)
        if not (math.isfinite(self.prox_lambda) and self.prox_lambda >= 0):
            raise ValueError(f"adapt: prox_lambda must be >= 0, got {self.prox_lambda}")
        if self.loss not in LOSSES:
            raise ValueError(f"adapt: loss must be one of {LOSSES}, got {self.loss!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"adapt: optimizer must be 'adam' or 'sgd', got "
                             f"{self.optimizer!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"adapt: precision must be one of {tuple(PRECISIONS)}, got "
                             f"{self.precision!r}")
        if self.precision != "float32" and self.loss == "robust-equivariant":
            raise ValueError("adapt: the robust-equivariant loss needs precision float32 (its "
                             "SURE divergence is a finite difference finer than bfloat16)")

    @classmethod
    def from_model(cls, meta: dict, **overrides) -> AdaptConfig:
        r"""The inner step rule a model was meta-trained with, read from its metadata
        (optimizer, lr, λ, inner loss, learned per-tensor learning rates), then the step rule the
        model recommends for adaptation (metadata ``adapt``: e.g. a shipped model's lr and
        label-free loss, chosen on validation operators), then ``overrides``. A rule for
        another loss, ``adapt.by_loss[loss]`` (e.g. ``{"supervised": {"lr": 1e-2}}``), replaces
        the recommended one whole when ``overrides`` asks for that loss; a loss without a rule
        of its own takes the recommended rule with its loss replaced (its lr and frozen
        parameters too). Every rule is checked whichever loss is asked for.

        With learned per-parameter rates :math:`\eta_k`, ``lr_scales`` is :math:`\eta_k/\eta_0`
        (:math:`\eta_0` = the model's ``inner_lr``), so ``lr = inner_lr`` applies exactly the
        learned steps and another ``lr`` rescales them all.
        """
        inner = meta.get("meta_config", {})
        lr = float(inner.get("inner_lr", cls.lr))
        learned = meta.get("inner_lrs")
        values = {"lr": lr, "loss": inner.get("inner_loss", cls.loss),
                  "prox_lambda": float(inner.get("prox_lambda", cls.prox_lambda)),
                  "optimizer": inner.get("inner_optimizer", cls.optimizer),
                  "lr_scales": {k: float(v) / lr for k, v in learned.items()} if learned
                  else None}
        values.update(cls._model_rule(meta, values, overrides.get("loss")))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def _model_rule(cls, meta: dict, base: dict, loss: str | None) -> dict:
        """The fields of the rule a model recommends for ``loss`` (metadata ``adapt`` and
        ``adapt.by_loss``), each rule checked on top of ``base``; one-line errors name the
        faulty entry."""
        from metaprior.losses import LOSSES

        rules = meta.get("adapt", {})
        by_loss = rules.get("by_loss", {}) if isinstance(rules, dict) else None
        if not (isinstance(by_loss, dict) and all(isinstance(r, dict) for r in by_loss.values())):
            raise ValueError(f"the model's 'adapt' metadata must be an object and its by_loss "
                             f"an object of rules by loss, got {rules!r}")
        recommended = {k: v for k, v in rules.items() if k != "by_loss"}
        known = {f.name for f in fields(cls)} - {"lr_scales"}
        for where, rule in (("adapt", recommended),
                            *((f"adapt.by_loss.{k}", r) for k, r in by_loss.items())):
            if set(rule) - known:
                raise ValueError(f"the model's {where}: unknown field "
                                 f"{sorted(set(rule) - known)[0]!r}; fields: {sorted(known)}")
        for name, rule in by_loss.items():
            if name not in LOSSES or rule.get("loss", name) != name:
                raise ValueError(f"the model's adapt.by_loss.{name}: not a loss of {LOSSES}, "
                                 f"or its rule names another loss")
            if name == recommended.get("loss"):
                raise ValueError(f"the model's adapt.by_loss repeats its recommended loss "
                                 f"{name!r}: keep that rule in 'adapt' itself")
            try:  # a bad rule fails whatever loss is asked, named as the model's
                cls(**{**base, **rule, "loss": name})
            except ValueError as e:
                raise ValueError(f"the model's adapt.by_loss.{name}: {e}") from None
        return {**by_loss[loss], "loss": loss} if loss in by_loss else recommended

    def lrs(self, model: nn.Module | None = None):
        """``lr``, or one learning rate per parameter name (``lr · lr_scales[name]``); without
        ``lr_scales``, the relative learning rates the ``model`` declares (``model.lr_scales()``,
        e.g. HQSNet's slower denoiser weights), if any."""
        scales = self.lr_scales
        if scales is None and model is not None and hasattr(model, "lr_scales"):
            scales = model.lr_scales()
        if scales is None:
            return self.lr
        return {k: self.lr * s for k, s in scales.items()}


def _check_fine_tune_args(model, theta, next_batch, config, start) -> None:
    """One-line ``ValueError`` naming the argument of :func:`fine_tune` of the wrong kind."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"fine_tune: model must be a torch.nn.Module (e.g. from load_model), "
                         f"got {type(model).__name__}")
    if not (isinstance(theta, Mapping) and all(isinstance(v, torch.Tensor)
                                               for v in theta.values())):
        raise ValueError(f"fine_tune: theta must be a dict of tensors (parameters_of(model)), "
                         f"got {type(theta).__name__}")
    names = {k for k, _ in model.named_parameters()}
    if set(theta) != names:
        raise ValueError(f"fine_tune: theta's names {sorted(set(theta) ^ names)[:3]} do not match "
                         f"the model's parameters: use parameters_of(model)")
    check_params(model, theta, "fine_tune")
    if not callable(next_batch):
        raise ValueError(f"fine_tune: next_batch must be a function step -> TaskBatch, got "
                         f"{type(next_batch).__name__}")
    if not isinstance(config, AdaptConfig):
        raise ValueError(f"fine_tune: config must be an AdaptConfig, got "
                         f"{type(config).__name__}")
    if start is not None and not isinstance(start, AdaptState):
        raise ValueError(f"fine_tune: start must be an AdaptState or None, got "
                         f"{type(start).__name__}")
    check_rule(model, config)


def check_rule(model: nn.Module, config: AdaptConfig) -> None:
    """One-line ``ValueError`` where the step rule ``config`` does not fit ``model`` (its
    ``lr_scales``, ``frozen`` prefixes, precision, coarse iterations), before any work:
    ``metaprior adapt`` checks it before scoring or searching an lr."""
    order = [k for k, _ in model.named_parameters()]
    names = set(order)
    if config.lr_scales is not None:
        missing, unknown = names - set(config.lr_scales), set(config.lr_scales) - names
        if missing:
            raise ValueError(f"adapt: lr_scales lacks {sorted(missing)[:3]}: give every "
                             f"parameter's scale (model.lr_scales() where it has one)")
        if unknown:
            raise ValueError(f"adapt: lr_scales names parameters the model lacks: "
                             f"{', '.join(sorted(unknown)[:3])}")
    if config.precision != "float32" and not getattr(model, "mixed_precision", False):
        raise ValueError(f"adapt: precision {config.precision} needs a model whose data steps "
                         f"stay float32 under autocast (HQSNet); a {type(model).__name__} "
                         f"adapts in float32")
    device = next(model.parameters()).device
    if config.precision == "bfloat16" and not bfloat16_is_fast(device):
        raise ValueError(f"adapt: precision bfloat16 needs bfloat16 instructions (AVX-512 BF16 "
                         f"or AMX on a CPU); this {device.type} has none and would run it about "
                         f"20x slower than float32: use precision float32 (--precision "
                         f"float32)")
    if config.coarse_iterations and not hasattr(model, "resample"):
        raise ValueError(f"adapt: coarse_iterations {config.coarse_iterations} needs an unrolled "
                         f"model that can be resampled (HQSNet); a {type(model).__name__} adapts "
                         f"as it is: use 0")
    check_frozen(order, config.frozen, "adapt")


@dataclass
class AdaptResult:
    params: Params
    losses: list[float] = field(default_factory=list)
    snapshots: dict[int, Params] = field(default_factory=dict)  # step -> φ after that step


@dataclass(frozen=True)
class AdaptState:
    """Where an adaptation run stands: φ and the optimizer state after ``step`` steps
    (read-only: the run goes on from the same tensors)."""

    step: int
    phi: Params
    opt_state: OptState


def parameters_of(model: nn.Module) -> Params:
    """Detached copies of a module's parameters, requiring grad (the functional θ)."""
    return {k: p.detach().clone().requires_grad_(True) for k, p in model.named_parameters()}


def coarse_problem(model: nn.Module, theta: Params, iterations: int
                   ) -> tuple[nn.Module, Params, Callable[[Params], Params]]:
    r"""The cheaper problem behind ``AdaptConfig.coarse_iterations``: a copy of the unrolled
    ``model`` with ``iterations`` iterations (``model.with_iterations``), θ resampled to it
    (:math:`\theta' = R\theta`, ``model.resample``), and the map
    carrying parameters :math:`\varphi'` adapted there back to the model's own iterations,

    .. math::
        \varphi = \theta + R^{+}(\varphi' - \theta'),

    with :math:`R^{+}` the resampling back (linear; weights shared by all iterations are
    carried as they are). Without a change, :math:`\varphi = \theta` exactly. A step of the
    copy costs about ``iterations``/K of one of the model. The proximal term of
    ``AdaptConfig.prox_lambda`` is taken on the copy's parameters, :math:`\tfrac\lambda2
    \|\varphi' - \theta'\|^2`.

    Returns:
        (the copy, θ', the map :math:`\varphi' \mapsto \varphi`).
    """
    _check_fine_tune_args(model, theta, lambda _s: None, AdaptConfig(
        coarse_iterations=iterations), None)
    own = model.config.iterations
    if not 1 <= iterations <= own:
        raise ValueError(f"adapt: coarse_iterations {iterations} must be in [1, {own}] (the "
                         f"model's iterations); 0 adapts the model itself")
    with torch.no_grad():
        coarse_theta = {k: v.detach().clone().requires_grad_(v.requires_grad)
                        for k, v in model.resample(theta, iterations).items()}

    def carry(phi: Params) -> Params:
        with torch.no_grad():
            change = model.resample({k: phi[k] - coarse_theta[k] for k in phi}, own)
            return {k: theta[k].detach() + change[k] for k in phi}

    with torch.random.fork_rng(devices=[]):  # building the copy draws weights it replaces
        return model.with_iterations(iterations), coarse_theta, carry


def fine_tune(
    model: nn.Module, theta: Params, next_batch: Callable[[int], TaskBatch],
    config: AdaptConfig, callback: Callable[[AdaptState, float], None] | None = None,
    keep: Sequence[int] = (), start: AdaptState | None = None, check_finite: bool = True,
) -> AdaptResult:
    r""":math:`\min_\phi \mathcal L(f_\phi) + \frac\lambda2\|\phi-\theta\|^2` (``config``'s rule,
    :class:`AdaptConfig`) approximately, by ``config.steps`` optimizer steps from θ.

    Args:
        model: the architecture (its own parameters are not used or changed).
        theta: initial parameters θ (kept as the proximal anchor).
        next_batch: ``next_batch(step)`` returns the step's :class:`TaskBatch`.
        config: steps, learning rate, loss kind, λ, optimizer, frozen parameters, precision,
            coarse iterations (then ``callback``'s and ``start``'s states hold the copy's
            parameters, :func:`coarse_problem`; the result and snapshots the model's).
        callback: called as ``callback(state, loss)`` after each step (``state.step`` steps
            done), e.g. to checkpoint a long run.
        keep: also return the parameters after these numbers of steps (0 = θ itself).
        start: resume from this state (θ stays the anchor). ``next_batch`` is still called for
            the steps already done, so a stateful stream draws what an unbroken run draws.
        check_finite: after the last step (or on resuming at it), reconstruct its batch with
            the final weights and raise ``FloatingPointError`` if that is not finite (before
            the last ``callback``); False only to time steps alone.

    Returns:
        the adapted parameters, the loss of every step and the kept snapshots (with ``start``:
        of the steps after it).
    """
    _check_fine_tune_args(model, theta, next_batch, config, start)
    if config.coarse_iterations:
        return _fine_tune_coarse(model, theta, next_batch, config, callback, keep, start,
                                 check_finite)
    if start is not None and any(start.phi[k].shape != v.shape for k, v in theta.items()):
        raise ValueError("fine_tune: start's parameters do not have theta's shapes (with "
                         "coarse_iterations, a state holds the coarse copy's parameters)")
    opt = make_inner_optimizer(config.optimizer, config.lrs(model))
    anchor = {k: v.detach() for k, v in theta.items()}
    first = start.step if start is not None else 0
    phi = {k: v.detach().clone().requires_grad_(not is_frozen(k, config.frozen))
           for k, v in (start.phi if start is not None else theta).items()}
    state = start.opt_state if start is not None else opt.init(phi)
    batch = None
    for step in range(first):  # replay the stream
        batch = next_batch(step)
    if check_finite and batch is not None and first == config.steps:  # resumed at the end
        _check_reconstruction(model, phi, batch, config.steps)
    losses = []
    snapshots = {0: dict(anchor)} if 0 in keep else {}
    dtype = PRECISIONS[config.precision]
    for step in range(first, config.steps):
        batch = next_batch(step)
        if not isinstance(batch, TaskBatch):
            raise ValueError(f"fine_tune: next_batch({step}) must return a TaskBatch (e.g. "
                             f"task.sample(x)), got {type(batch).__name__}")
        if config.loss == "supervised" and batch.target is None:
            raise ValueError(f"fine_tune: the supervised loss needs ground truth, and "
                             f"next_batch({step}) holds measurements alone: use a label-free "
                             f"loss (equivariant) or batches with targets")
        phi, state, loss = inner_step(model, phi, anchor, state, batch, opt, config.loss,
                                      config.prox_lambda, draw=step, autocast=dtype)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite {config.loss} loss at adaptation step "
                                     f"{step}: lower --lr (AdaptConfig.lr)")
        if not all(bool(torch.isfinite(v).all()) for v in phi.values()):
            raise FloatingPointError(f"non-finite weights after adaptation step {step}: "
                                     f"lower --lr (AdaptConfig.lr)")
        if check_finite and step + 1 == config.steps:  # finite weights, inf or NaN output
            _check_reconstruction(model, phi, batch, config.steps)
        losses.append(float(loss))
        if step + 1 in keep:
            snapshots[step + 1] = {k: v.detach().clone() for k, v in phi.items()}
        if callback is not None:
            callback(AdaptState(step + 1, phi, state), float(loss))
    return AdaptResult({k: v.detach() for k, v in phi.items()}, losses, snapshots)


def _fine_tune_coarse(model, theta, next_batch, config, callback, keep, start, check_finite
                      ) -> AdaptResult:
    """:func:`fine_tune` with ``config.coarse_iterations``: the steps on the coarse copy, the
    finite check on the model itself with the carried parameters (before the last
    ``callback``, as without the option)."""
    coarse, coarse_theta, carry = coarse_problem(model, theta, config.coarse_iterations)
    last: list[TaskBatch] = []

    def record(step: int) -> TaskBatch:
        last[:] = [next_batch(step)]
        return last[0]

    def on_step(state: AdaptState, loss: float) -> None:
        if check_finite and state.step == config.steps:
            _check_reconstruction(model, carry(state.phi), last[0], config.steps)
        if callback is not None:
            callback(state, loss)

    result = fine_tune(coarse, coarse_theta, record, replace(config, coarse_iterations=0),
                       on_step, keep, start, check_finite=False)
    if check_finite and start is not None and start.step == config.steps and last:
        _check_reconstruction(model, carry(result.params), last[0], config.steps)  # resumed
    return AdaptResult(carry(result.params), result.losses,
                       {n: carry(p) for n, p in result.snapshots.items()})


def _check_reconstruction(model: nn.Module, phi: Params, batch: TaskBatch, steps: int) -> None:
    """``FloatingPointError`` if the model with ``phi`` reconstructs ``batch`` with an inf or
    a NaN (finite weights can still overflow the network)."""
    with torch.no_grad():
        if not bool(torch.isfinite(reconstruct(model, phi, batch)).all()):
            raise FloatingPointError(f"the adapted model's reconstruction is not finite after "
                                     f"{steps} steps (diverged): lower --lr (AdaptConfig.lr)")


def load_into(model: nn.Module, params: Params) -> nn.Module:
    """Copy ``params`` into ``model``'s parameters (in place) and return it."""
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(params[k])
    return model
