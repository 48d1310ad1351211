"""Contract tests over one shared operator list (deepinv OPERATORS style): adjointness,
pseudo-inverse, norm bound and second-order autograd for every task operator."""

from __future__ import annotations

import pytest
import torch

from metaprior import physics as ops
from metaprior.tasks import available_tasks, get_task

SHAPE = (2, 1, 32, 32)


def make(name: str, device, dtype=torch.float64):
    """Operator ``name`` for images of SHAPE, plus a random image, in ``dtype``."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(SHAPE, generator=g, dtype=dtype).to(device)
    extra = {
        "mri_odd": lambda: ops.mri((1, 32, 31), seed=3, device=device),
        "mri_rgb": lambda: ops.mri((3, 32, 32), seed=3, device=device),
        "inpaint_rgb": lambda: get_task("inpaint").make_physics((2, 3, 32, 32), g, device),
    }
    if name in extra:
        physics = extra[name]()
        shape = {"mri_odd": (2, 1, 32, 31)}.get(name, (2, 3, 32, 32))
        x = torch.randn(shape, generator=g, dtype=dtype).to(device)
    else:
        physics = get_task(name).make_physics(SHAPE, g, device)
    # Operators keep their float32 buffers (BlurFFT's are complex: never cast them to real);
    # float64 images promote every result to float64 / complex128.
    return physics.to(device), x


OPERATORS = [*available_tasks(), "mri_odd", "mri_rgb", "inpaint_rgb"]


def inner(a, b):
    return torch.real(torch.vdot(a.flatten(), b.flatten()))


@pytest.mark.parametrize("name", OPERATORS)
def test_adjointness(name, device):
    physics, x = make(name, device)
    y = physics.A(x)
    v = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(2)).to(device)
    lhs, rhs = inner(physics.A(x), v), inner(x, physics.A_adjoint(v))
    assert abs(lhs - rhs) <= 1e-5 * abs(lhs)
    assert not physics.A_adjoint(v).is_complex()


@pytest.mark.parametrize("name", OPERATORS)
def test_pseudo_inverse(name, device):
    physics, x = make(name, device)
    ax = physics.A(x)
    err = torch.linalg.vector_norm(physics.A(physics.A_dagger(ax)) - ax)
    assert err <= 1e-5 * torch.linalg.vector_norm(ax)


@pytest.mark.parametrize("name", OPERATORS)
def test_prox_l2_is_optimal(name, device):
    """prox_l2(z, y, γ) zeroes the gradient Aᵀ(Ax − y) + (x − z)/γ (exact or deepinv's CG)."""
    physics, x = make(name, device)
    y = physics.A(x)
    z = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(4)).to(device)
    gamma = 0.7
    p = physics.prox_l2(z, y, gamma)
    residual = physics.A_adjoint(physics.A(p) - y) + (p - z) / gamma
    assert torch.linalg.vector_norm(residual) <= 1e-4 * torch.linalg.vector_norm(z / gamma)


@pytest.mark.parametrize("name", OPERATORS)
def test_norm_at_most_one(name, device):
    physics, x = make(name, device)
    v = x / torch.linalg.vector_norm(x)
    for _ in range(200):
        v = physics.A_adjoint_A(v)
        n = torch.linalg.vector_norm(v)
        v = v / n
    assert float(n) <= 1 + 1e-3
    assert float(n) <= ops.operator_norm_sq(physics, x) + 1e-6


@pytest.mark.parametrize("name", OPERATORS)
def test_second_order_autograd(name, device):
    """d/dx <grad_x ½‖Ax - y‖², v> = AᵀA v, through create_graph=True."""
    physics, x = make(name, device)
    y = physics.A(torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(4))
                  .to(device))
    x = x.clone().requires_grad_(True)
    loss = 0.5 * (physics.A(x) - y).abs().pow(2).sum()
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    v = torch.randn_like(x)
    (hv,) = torch.autograd.grad((g * v).sum(), x)
    expected = physics.A_adjoint_A(v)
    assert torch.allclose(hv, expected, rtol=1e-5, atol=1e-6)  # float32 operator buffers


def test_mri_mask_is_fastmri_like():
    m = ops.column_mask(320, acceleration=4, center_fraction=0.08, seed=0)
    assert m.shape == (320,)
    assert int(m.sum()) == 320 // 4
    centre = m[160 - 12 : 160 + 13]  # int(0.08 * 320) = 25 centre columns
    assert bool((centre == 1).all())
    assert torch.equal(m, ops.column_mask(320, seed=0))
    assert not torch.equal(m, ops.column_mask(320, seed=1))


def test_mri_pseudo_inverse_is_not_adjoint_for_asymmetric_mask():
    physics = ops.mri((1, 32, 32), seed=0)
    x = torch.randn(1, 1, 32, 32)
    y = physics.A(x)
    assert not torch.allclose(physics.A_dagger(y), physics.A_adjoint(y), atol=1e-3)


def test_decimation_rejects_odd_size():
    with pytest.raises(ValueError, match="multiple of the SR factor"):
        ops.Decimation((1, 33, 32))


def test_blur_kernel_normalised():
    k = ops.gaussian_kernel(1.6, 25)
    assert k.shape == (1, 1, 25, 25)
    assert abs(float(k.sum()) - 1) < 1e-6


def test_blur_rejects_small_images():
    with pytest.raises(ValueError, match="smaller than the blur kernel"):
        ops.gaussian_blur((1, 16, 16))


def test_grad2d_adjoint():
    g = torch.Generator().manual_seed(0)
    x, ph, pv = (torch.randn(2, 1, 7, 9, generator=g, dtype=torch.float64) for _ in range(3))
    dh, dv = ops.grad2d(x)
    assert abs(float((dh * ph + dv * pv).sum() - (x * ops.grad2d_adjoint(ph, pv)).sum())) < 1e-12


def test_prox_tv_certified_and_matches_deepinv():
    """Our FISTA-dual prox reaches its duality-gap tolerance and agrees with deepinv's
    Chambolle–Pock TVDenoiser (run to tight convergence) within the certified bound."""
    from deepinv.models import TVDenoiser

    g = torch.Generator().manual_seed(0)
    y = torch.rand(2, 1, 24, 24, generator=g, dtype=torch.float64)
    tol = 1e-9
    x = ops.prox_tv(y, 0.1, tol=tol, max_iter=5000)
    ref = TVDenoiser(n_it_max=20000, crit=1e-12)(y, ths=0.1)
    rmse = (x - ref).pow(2).flatten(1).mean(1).sqrt()
    assert bool((rmse <= (2 * tol) ** 0.5).all())


def test_prox_tv_optimality():
    """x = prox(y) minimises ½‖x−y‖² + w TV(x): random perturbations never do better."""
    g = torch.Generator().manual_seed(1)
    y = torch.rand(1, 1, 16, 16, generator=g, dtype=torch.float64)

    def objective(z):
        dh, dv = ops.grad2d(z)
        return 0.5 * (z - y).pow(2).sum() + 0.1 * torch.sqrt(dh**2 + dv**2).sum()

    x = ops.prox_tv(y, 0.1, tol=1e-12, max_iter=20000)
    fx = objective(x)
    for _ in range(20):
        d = 1e-3 * torch.randn(y.shape, generator=g, dtype=torch.float64)
        assert objective(x + d) >= fx - 1e-12
