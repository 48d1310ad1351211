"""Functional inner optimizers reproduce torch.optim numerics and stay differentiable."""

from __future__ import annotations

import pytest
import torch

from metaprior.meta.inner import adam, apply_updates, make_inner_optimizer, sgd


def _quadratic_grads(params):
    return {k: 2 * v + 0.3 * v.pow(3) for k, v in params.items()}


@pytest.mark.parametrize("name,torch_opt", [
    ("sgd", lambda p: torch.optim.SGD(p, lr=0.05)),
    ("sgd_momentum", lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
    ("adam", lambda p: torch.optim.Adam(p, lr=0.05, foreach=False)),
])
def test_matches_torch_optim(name, torch_opt):
    g = torch.Generator().manual_seed(0)
    init = {"a": torch.randn(3, 4, generator=g, dtype=torch.float64),
            "b": torch.randn(5, generator=g, dtype=torch.float64)}
    ref = {k: v.clone().requires_grad_(True) for k, v in init.items()}
    opt_ref = torch_opt(list(ref.values()))
    ours = {"sgd": sgd(0.05), "sgd_momentum": sgd(0.05, 0.9), "adam": adam(0.05)}[name]
    params = dict(init)
    state = ours.init(params)
    for _ in range(7):
        grads = _quadratic_grads(params)
        updates, state = ours.update(grads, state, params)
        params = apply_updates(params, updates)
        opt_ref.zero_grad()
        for k, p in ref.items():
            p.grad = _quadratic_grads({k: p.detach()})[k]
        opt_ref.step()
    for k in init:
        assert torch.allclose(params[k], ref[k].detach(), rtol=1e-12, atol=1e-14)


def test_no_in_place_and_differentiable():
    theta = torch.tensor([0.5, -1.0], dtype=torch.float64, requires_grad=True)
    opt = adam(0.1)
    params = {"w": theta}
    state = opt.init(params)
    for _ in range(3):
        (g,) = torch.autograd.grad((params["w"] ** 2).sum(), params["w"], create_graph=True)
        updates, state = opt.update({"w": g}, state, params)
        params = apply_updates(params, updates)
    (hyper,) = torch.autograd.grad(params["w"].sum(), theta)
    assert torch.isfinite(hyper).all() and hyper.abs().sum() > 0
    assert theta.detach().tolist() == [0.5, -1.0]


def test_bad_arguments():
    with pytest.raises(ValueError, match="lr must be > 0"):
        adam(0.0)
    with pytest.raises(ValueError, match="'sgd' or 'adam'"):
        make_inner_optimizer("rmsprop", 0.1)


def test_adam_differentiable_through_zero_gradient_entries():
    """A gradient entry that is exactly 0 (e.g. the last λ of PDNet) must not make the
    second-order derivative NaN (d√v/dv at v = 0)."""
    theta = torch.tensor([0.5, 0.0], dtype=torch.float64, requires_grad=True)
    opt = adam(0.1)
    params = {"w": theta}
    state = opt.init(params)
    (g,) = torch.autograd.grad((params["w"][0] ** 2), params["w"], create_graph=True)
    updates, state = opt.update({"w": g}, state, params)
    (hyper,) = torch.autograd.grad(apply_updates(params, updates)["w"].sum(), theta)
    assert torch.isfinite(hyper).all()
