"""Hypergradients against finite differences and a dense linear solve (float64, tiny PDNet)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from metaprior.adapt import parameters_of
from metaprior.losses import data_loss
from metaprior.meta.config import MetaConfig
from metaprior.meta.implicit import conjugate_gradient, implicit_hypergradient
from metaprior.meta.joint import joint_gradient
from metaprior.meta.maml import first_order_hypergradient, maml_hypergradient
from metaprior.meta.problem import inner_adapt, outer_loss, reconstruct
from metaprior.meta.reptile import reptile_hypergradient
from metaprior.meta.step import meta_gradient, sum_hypergradients
from metaprior.models import PDNet, PDNetConfig
from metaprior.tasks import get_task


def tiny_problem(seed: int = 0):
    torch.manual_seed(seed)
    # detach_step_sizes=False: gradients are exact derivatives of the forward map, which is
    # what finite differences measure.
    model = PDNet(PDNetConfig(depth=2, width=3, weight_init_std=0.3, lam_init=0.05,
                              detach_step_sizes=False)).double()
    g = torch.Generator().manual_seed(seed)
    task = get_task("inpaint")
    inner = task.sample(torch.rand(2, 1, 8, 8, generator=g, dtype=torch.float64), g)
    outer = task.sample(torch.rand(2, 1, 8, 8, generator=g, dtype=torch.float64), g)
    inner.physics.mask = inner.physics.mask.double()
    outer.physics.mask = outer.physics.mask.double()
    return model, parameters_of(model), inner, outer


def flat(params):
    return torch.cat([p.reshape(-1) for p in params.values()])


def unflat(vec, like):
    out, i = {}, 0
    for k, p in like.items():
        out[k] = vec[i : i + p.numel()].view_as(p)
        i += p.numel()
    return out


def outer_objective(model, theta, inner, outer, config):
    phi, _ = inner_adapt(model, theta, inner, config, create_graph=False)
    with torch.no_grad():
        return float(outer_loss(model, phi, outer))


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.5), ("adam", 0.01)])
@pytest.mark.parametrize("loss", ["supervised", "unsupervised", "equivariant",
                                  "robust-equivariant"])
def test_maml_matches_finite_differences(optimizer, lr, loss):
    model, theta, inner, outer = tiny_problem()
    if loss == "robust-equivariant":  # its SURE term and noisy re-measurement need noise
        inner = dataclasses.replace(inner, noise_sigma=0.05)
    config = MetaConfig(inner_steps=2, inner_optimizer=optimizer, inner_lr=lr, inner_loss=loss,
                        prox_lambda=0.1)
    ad = flat(maml_hypergradient(model, theta, inner, outer, config).grads)
    x0, h = flat(theta).detach(), 1e-7
    fd = torch.zeros_like(x0)
    for i in range(x0.numel()):
        e = torch.zeros_like(x0)
        e[i] = h
        fp = outer_objective(model, unflat(x0 + e, theta), inner, outer, config)
        fm = outer_objective(model, unflat(x0 - e, theta), inner, outer, config)
        fd[i] = (fp - fm) / (2 * h)
    rel = float(torch.linalg.vector_norm(ad - fd) / torch.linalg.vector_norm(fd))
    assert rel <= 1e-5, rel


def test_implicit_matches_dense_solve():
    model, theta, inner, outer = tiny_problem(1)
    lam = 10.0  # (I + H/λ) well conditioned
    config = MetaConfig(inner_steps=3, inner_optimizer="sgd", inner_lr=0.05, prox_lambda=lam,
                        hypergradient="implicit", cg_iters=500, cg_tol=1e-13)
    res = implicit_hypergradient(model, theta, inner, outer, config)
    assert res.info["cg_residual"] <= 1e-12

    phi, _ = inner_adapt(model, theta, inner, config, create_graph=False)
    phi0 = flat(phi).detach()

    def f_in(vec):
        return data_loss("supervised", reconstruct(model, unflat(vec, phi), inner), inner)

    hess = torch.autograd.functional.hessian(f_in, phi0)
    phi_req = unflat(phi0.clone().requires_grad_(True), phi)
    g_out = torch.autograd.grad(outer_loss(model, phi_req, outer), list(phi_req.values()),
                                allow_unused=True)
    g_out = torch.cat([torch.zeros(p.numel(), dtype=p.dtype) if g is None else g.reshape(-1)
                       for g, p in zip(g_out, phi.values(), strict=True)])
    dense = torch.linalg.solve(torch.eye(len(phi0), dtype=torch.float64) + hess / lam, g_out)
    rel = float(torch.linalg.vector_norm(flat(res.grads) - dense) / torch.linalg.vector_norm(dense))
    assert rel <= 1e-6, rel


def test_first_order_is_outer_gradient_at_phi_k():
    model, theta, inner, outer = tiny_problem(2)
    config = MetaConfig(inner_steps=2, inner_optimizer="adam", inner_lr=0.01,
                        hypergradient="first_order")
    res = first_order_hypergradient(model, theta, inner, outer, config)
    phi, _ = inner_adapt(model, theta, inner, config, create_graph=False)
    grads = torch.autograd.grad(outer_loss(model, phi, outer), list(phi.values()),
                                allow_unused=True)
    for (k, a), b in zip(res.grads.items(), grads, strict=True):
        assert torch.equal(a, torch.zeros_like(a) if b is None else b), k


@pytest.mark.parametrize("prox", [0.0, 0.3])
def test_reptile_is_mean_gradient_along_alternating_sgd_run(prox):
    r"""With SGD, (θ − φ_K)/(Kη) is the mean of the K gradients of the supervised loss (plus
    the proximal term) taken on the inner, outer, inner, … batch; logged: the loss at θ on the
    inner batch and at φ_1 on the outer batch."""
    model, theta, inner, outer = tiny_problem(4)
    lr, steps = 0.2, 3
    config = MetaConfig(inner_steps=steps, inner_optimizer="sgd", inner_lr=lr,
                        hypergradient="reptile", prox_lambda=prox)
    res = reptile_hypergradient(model, theta, inner, outer, config)
    anchor = {k: v.detach() for k, v in theta.items()}
    phi, total, losses = dict(anchor), None, []
    for k in range(steps):
        phi = {n: v.detach().requires_grad_(True) for n, v in phi.items()}
        batch = (inner, outer)[k % 2]
        loss = data_loss("supervised", reconstruct(model, phi, batch), batch)
        loss = loss + prox / 2 * sum(((phi[n] - anchor[n]) ** 2).sum() for n in phi)
        g = torch.autograd.grad(loss, list(phi.values()), allow_unused=True)
        g = torch.cat([torch.zeros_like(p).reshape(-1) if d is None else d.reshape(-1)
                       for p, d in zip(phi.values(), g, strict=True)])
        total = g if total is None else total + g
        losses.append(float(loss.detach()))
        phi = unflat(flat(phi).detach() - lr * g, anchor)
    assert torch.allclose(flat(res.grads), total / steps, rtol=1e-10, atol=1e-12)
    assert flat(res.grads).norm() > 0
    assert (res.inner_loss, res.outer_loss) == pytest.approx(losses[:2], rel=1e-12)


def test_reptile_with_one_step_per_batch_is_not_the_joint_gradient():
    """Two SGD steps of a vanishing size give the joint gradient (the mean of the two batches'
    gradients at θ); at a finite size the second gradient is taken at φ_1, so they differ by
    O(η)."""
    model, theta, inner, outer = tiny_problem(6)
    joint = flat(joint_gradient(model, theta, inner, outer, MetaConfig(objective="joint")).grads)
    def gap(lr):
        config = MetaConfig(inner_steps=2, inner_optimizer="sgd", inner_lr=lr, prox_lambda=0.0,
                            hypergradient="reptile")
        return float((2 * flat(reptile_hypergradient(model, theta, inner, outer,
                                                     config).grads) - joint).norm())
    small, large = gap(1e-6), gap(1e-1)
    assert small < 1e-4 * float(joint.norm()) and large > 100 * small


def test_joint_gradient_is_gradient_of_summed_supervised_losses():
    """Joint pre-training: no inner step; the gradient equals central finite differences of
    L_sup(θ; train batch) + L_sup(θ; test batch)."""
    model, theta, inner, outer = tiny_problem(5)
    res = joint_gradient(model, theta, inner, outer, MetaConfig(hypergradient="joint"))
    th0, eps = flat(theta).detach(), 1e-6

    def objective(vec):
        with torch.no_grad():
            p = unflat(vec, theta)
            return float(outer_loss(model, p, inner) + outer_loss(model, p, outer))

    g = flat(res.grads)
    for i in range(0, len(th0), 5):
        e = torch.zeros_like(th0)
        e[i] = eps
        fd = (objective(th0 + e) - objective(th0 - e)) / (2 * eps)
        assert abs(fd - float(g[i])) <= 1e-6 + 1e-5 * abs(fd), i


def test_second_order_matters_for_sgd_inner_steps():
    model, theta, inner, outer = tiny_problem(3)
    config = MetaConfig(inner_steps=2, inner_optimizer="sgd", inner_lr=0.5)
    a = flat(maml_hypergradient(model, theta, inner, outer, config).grads)
    b = flat(first_order_hypergradient(model, theta, inner, outer, config).grads)
    assert float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(a)) > 1e-3


def test_meta_gradient_is_the_sum_over_tasks():
    model, theta, inner, outer = tiny_problem(4)
    config = MetaConfig(inner_steps=1)
    total, results = meta_gradient(model, theta, [(inner, outer), (outer, inner)], config)
    manual = flat(results[0].grads) + flat(results[1].grads)
    assert torch.allclose(flat(total), manual)
    assert torch.equal(flat(sum_hypergradients(results)), flat(total))


@pytest.mark.parametrize("mode", ["maml", "first_order", "implicit", "reptile", "joint"])
def test_concurrent_tasks_are_bitwise_serial(mode):
    """workers > 1 runs the tasks in threads on model replicas: same numbers, same order."""
    model, theta, inner, outer = tiny_problem(5)
    batches = [(inner, outer), (outer, inner), (inner, inner)]
    runs = [meta_gradient(model, theta, batches, MetaConfig(inner_steps=2, hypergradient=mode,
                                                             workers=w)) for w in (1, 2)]
    assert [r.task for r in runs[0][1]] == [r.task for r in runs[1][1]]
    assert torch.equal(flat(runs[0][0]), flat(runs[1][0]))
    assert [r.outer_loss for r in runs[0][1]] == [r.outer_loss for r in runs[1][1]]


def test_conjugate_gradient_solves_spd_system():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=g, dtype=torch.float64)
    m = a @ a.T + 6 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    x, res, it = conjugate_gradient(lambda v: m @ v, b, max_iter=50, tol=1e-12)
    assert res <= 1e-12 and it <= 7
    assert torch.allclose(x, torch.linalg.solve(m, b))


def test_config_errors():
    with pytest.raises(ValueError, match="hypergradient must be one of"):
        MetaConfig(hypergradient="reptile_2")
    with pytest.raises(ValueError, match="'reptile' needs inner_loss 'supervised'"):
        MetaConfig(hypergradient="reptile", inner_steps=2, inner_loss="unsupervised")
    with pytest.raises(ValueError, match="inner_steps >= 2"):
        MetaConfig(hypergradient="reptile", inner_steps=1)
    with pytest.raises(ValueError, match="prox_lambda > 0"):
        MetaConfig(hypergradient="implicit", prox_lambda=0.0)
    with pytest.raises(ValueError, match="workers must be >= 0"):
        MetaConfig(workers=-1)


def test_equivariant_loss_needs_no_ground_truth():
    from metaprior.meta.problem import inner_loss

    model, theta, inner, _ = tiny_problem(6)
    inner.target = torch.full_like(inner.target, float("nan"))
    loss = inner_loss(model, theta, theta, inner, "equivariant", 0.0).detach()
    assert torch.isfinite(loss) and float(loss) > float(
        inner_loss(model, theta, theta, inner, "unsupervised", 0.0).detach())
