"""Meta-training recipes: learned per-layer inner learning rates (Meta-SGD / MAML++), the outer
loss that also scores θ (MAML++'s multi-step loss), warm start, and how a model's learned step
rule reaches adaptation. Hypergradients against finite differences (float64, tiny PDNet)."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace

import pytest
import torch

from metaprior import train
from metaprior.adapt import AdaptConfig, fine_tune
from metaprior.checkpoint import load_model, load_tensors, save_model
from metaprior.meta.config import INNER_LR_PREFIX, MetaConfig
from metaprior.meta.inner import adam, sgd
from metaprior.meta.maml import first_order_hypergradient, maml_hypergradient
from metaprior.meta.problem import inner_adapt, outer_loss
from test_hypergradients import flat, tiny_problem, unflat
from test_train import tiny_config


def meta_objective_value(model, theta, lrs, inner, outer, config):
    phi, _ = inner_adapt(model, theta, inner, config, create_graph=False, lrs=lrs)
    with torch.no_grad():
        value = outer_loss(model, phi, outer)
        if config.outer_theta_weight:
            value = value + config.outer_theta_weight * outer_loss(model, theta, outer)
    return float(value)


def finite_differences(f, x0, h=1e-7):
    fd = torch.zeros_like(x0)
    for i in range(x0.numel()):
        e = torch.zeros_like(x0)
        e[i] = h
        fd[i] = (f(x0 + e) - f(x0 - e)) / (2 * h)
    return fd


def rel_err(a, b):
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.5), ("adam", 0.01)])
def test_learned_learning_rates_match_finite_differences(optimizer, lr):
    """d L_outer(φ_K(θ, η)) / dη_k for one learning rate per parameter tensor, K = 2."""
    model, theta, inner, outer = tiny_problem()
    config = MetaConfig(inner_steps=2, inner_optimizer=optimizer, inner_lr=lr,
                        prox_lambda=0.1, learn_inner_lr=True)
    g = torch.Generator().manual_seed(3)
    lrs = {k: lr * (0.5 + torch.rand((), generator=g, dtype=torch.float64)) for k in theta}
    result = maml_hypergradient(model, theta, inner, outer, config, lrs=lrs)
    ad = torch.stack([result.grads[INNER_LR_PREFIX + k] for k in theta])
    names = list(theta)

    def f(vec):
        return meta_objective_value(model, theta, dict(zip(names, vec, strict=True)), inner,
                                    outer, config)

    fd = finite_differences(f, torch.stack([lrs[k] for k in names]))
    assert rel_err(ad, fd) <= 1e-5
    # the θ part is unchanged by learning the rates
    fd_theta = finite_differences(
        lambda v: meta_objective_value(model, unflat(v, theta), lrs, inner, outer, config),
        flat(theta).detach())
    ad_theta = flat({k: result.grads[k] for k in theta})
    assert rel_err(ad_theta, fd_theta) <= 1e-5


@pytest.mark.parametrize("weight", [0.5, 2.0])
def test_theta_scored_outer_loss_matches_finite_differences(weight):
    model, theta, inner, outer = tiny_problem(2)
    config = MetaConfig(inner_steps=1, inner_optimizer="adam", inner_lr=0.01,
                        outer_theta_weight=weight)
    ad = flat(maml_hypergradient(model, theta, inner, outer, config).grads)
    fd = finite_differences(
        lambda v: meta_objective_value(model, unflat(v, theta), None, inner, outer, config),
        flat(theta).detach())
    assert rel_err(ad, fd) <= 1e-5


def test_theta_scored_first_order_adds_the_gradient_at_theta():
    model, theta, inner, outer = tiny_problem(1)
    base = MetaConfig(inner_steps=1, inner_optimizer="sgd", inner_lr=0.1,
                      hypergradient="first_order")
    plain = first_order_hypergradient(model, theta, inner, outer, base).grads
    scored = first_order_hypergradient(model, theta, inner, outer,
                                       replace(base, outer_theta_weight=3.0)).grads
    at_theta = {k: v.detach().requires_grad_(True) for k, v in theta.items()}
    g = torch.autograd.grad(outer_loss(model, at_theta, outer), list(at_theta.values()),
                            allow_unused=True)  # λ_K never reaches the output
    for (k, v), gk in zip(plain.items(), g, strict=True):
        gk = torch.zeros_like(v) if gk is None else gk
        torch.testing.assert_close(scored[k], v + 3.0 * gk, rtol=1e-12, atol=1e-14)


def test_per_tensor_learning_rates_equal_a_global_one_when_all_equal():
    params = {"a": torch.randn(3, dtype=torch.float64), "b": torch.randn(2, dtype=torch.float64)}
    grads = {k: torch.randn_like(v) for k, v in params.items()}
    for make in (sgd, adam):
        one, per = make(0.03), make({"a": 0.03, "b": 0.03})
        u1, _ = one.update(grads, one.init(params), params)
        u2, _ = per.update(grads, per.init(params), params)
        for k in params:
            assert torch.equal(u1[k], u2[k])
        half = make({"a": 0.03, "b": 0.015})
        u3, _ = half.update(grads, half.init(params), params)
        torch.testing.assert_close(u3["b"], 0.5 * u1["b"])
    with pytest.raises(ValueError, match="lr must be > 0"):
        adam({"a": 0.1, "b": 0.0})


def test_recipe_config_errors():
    with pytest.raises(ValueError, match="learn_inner_lr needs hypergradient 'maml'"):
        MetaConfig(learn_inner_lr=True, hypergradient="first_order")
    with pytest.raises(ValueError, match="outer_theta_weight must be a finite number >= 0"):
        MetaConfig(outer_theta_weight=-1.0)


def test_learned_learning_rates_train_save_resume_and_reach_adaptation(tmp_path):
    """The rates move, are saved in the model's metadata, resume bitwise, and
    AdaptConfig.from_model applies exactly them."""
    cfg = tiny_config(tmp_path / "ref", steps=4, learn_inner_lr=True)
    cfg = replace(cfg, optim=replace(cfg.optim, inner_lr_lr=0.1))
    ref = train.meta_train(cfg, progress=False, log=lambda *_: None)
    model, meta = load_model(ref)
    lrs = meta["inner_lrs"]
    assert set(lrs) == set(dict(model.named_parameters()))
    assert any(abs(math.log(v / cfg.meta.inner_lr)) > 1e-3 for v in lrs.values())
    log = [json.loads(x) for x in (tmp_path / "ref" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["inner_lr"] == pytest.approx(lrs, rel=1e-6)

    # resume from the step-2 checkpoint of a copy: the same rates, weights and Adam moments
    half = tmp_path / "half"
    shutil.copytree(tmp_path / "ref", half)
    shutil.rmtree(half / "checkpoints" / "step_0000004")
    (half / "checkpoints" / "latest").write_text("step_0000002")
    out = train.meta_train(replace(cfg, run=replace(cfg.run, out=str(half))), resume=True,
                           progress=False, log=lambda *_: None)
    a, b = load_tensors(ref), load_tensors(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert load_model(out)[1]["inner_lrs"] == lrs

    rule = AdaptConfig.from_model(meta, steps=1)
    assert rule.lr == cfg.meta.inner_lr
    steps = rule.lrs()
    assert steps == pytest.approx(lrs, rel=1e-12)
    # a different lr rescales every learned rate by the same factor
    scaled = replace(rule, lr=2 * rule.lr).lrs()
    assert all(scaled[k] == pytest.approx(2 * steps[k]) for k in steps)


def test_adaptation_uses_the_per_tensor_learning_rates():
    model, theta, inner, _ = tiny_problem()
    theta = {k: v.detach() for k, v in theta.items()}
    names = list(theta)
    scales = {k: (0.0 if i == 0 else 1.0) + 1e-30 for i, k in enumerate(names)}
    cfg = AdaptConfig(steps=1, lr=0.05, loss="supervised", optimizer="sgd", lr_scales=scales)
    phi = fine_tune(model, theta, lambda step: inner, cfg).params
    # the first tensor's learning rate is ~0: it does not move; the others do
    torch.testing.assert_close(phi[names[0]], theta[names[0]])
    assert not torch.equal(phi[names[1]], theta[names[1]])


def test_warm_start(tmp_path):
    src = tiny_config(tmp_path / "src", steps=2)
    model_path = train.meta_train(src, progress=False, log=lambda *_: None)
    warm = tiny_config(tmp_path / "warm", steps=1)
    warm = replace(warm, run=replace(warm.run, init_from=str(model_path)))
    trainer = train.MetaTrainer(warm, log=lambda *_: None)
    expected = load_tensors(model_path)
    assert all(torch.equal(p, expected[k]) for k, p in trainer.model.named_parameters())
    other, _ = load_model(model_path)
    bad = tmp_path / "bad.safetensors"
    save_model(bad, type(other)(replace(other.config, depth=3)))
    wrong = replace(warm, run=replace(warm.run, init_from=str(bad)))
    with pytest.raises(ValueError, match="init-from"):
        train.MetaTrainer(wrong, log=lambda *_: None)
