from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from deepinv.models import Reconstructor

from metaprior import physics as ops
from metaprior.models import PDNet, PDNetConfig, conv_norm_sq
from metaprior.tasks import available_tasks, get_task


def test_361_parameters_per_layer():
    for depth in (1, 3, 20):
        model = PDNet(PDNetConfig(depth=depth))
        assert model.num_params() == 361 * depth
        assert all(sum(p.numel() for p in layer.parameters()) == 361 for layer in model.layers)
    assert isinstance(model, Reconstructor)


def test_width_is_configurable():
    assert PDNet(PDNetConfig(depth=2, width=8)).num_params() == 2 * (8 * 9 + 1)


def test_W_adjoint():
    layer = PDNet(PDNetConfig(depth=1)).layers[0].double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 9, 11, generator=g, dtype=torch.float64)
    u = torch.randn(40, 2 * 9 * 11, generator=g, dtype=torch.float64)
    with torch.no_grad():
        lhs = (layer.W(x) * u).sum()
        rhs = (x * layer.W_adjoint(u, (2, 9, 11))).sum()
        # the channel-major W is conv2d with the batch moved behind the channels
        ref = F.conv2d(x, layer.weight, padding=1).transpose(0, 1).reshape(40, -1)
        assert torch.allclose(layer.W(x), ref, atol=1e-12)
    assert abs(float(lhs - rhs)) < 1e-10 * abs(float(lhs))


def test_conv_norm_sq_bounds_power_iteration():
    torch.manual_seed(0)
    for std in (0.01, 1.0):
        w = std * torch.randn(40, 1, 3, 3, dtype=torch.float64)
        v = torch.randn(1, 1, 96, 96, dtype=torch.float64)
        for _ in range(500):
            v = F.conv_transpose2d(F.conv2d(v, w, padding=1), w, padding=1)
            n = torch.linalg.vector_norm(v)
            v = v / n
        bound = float(conv_norm_sq(w))
        assert float(n) <= bound <= 1.02 * float(n)


def test_step_sizes_satisfy_condat():
    model = PDNet(PDNetConfig(depth=4, weight_init_std=0.5))
    c = model.config
    for tau, layer in zip(model.step_sizes(1.0), model.layers, strict=True):
        assert float(tau) * (0.5 + c.gamma * float(conv_norm_sq(layer.weight))) < 1
        assert not tau.requires_grad


def test_zero_dual_is_gradient_descent():
    """With W = 0 every layer is a gradient step on ½‖Ax − y‖² with τ = 0.99/(‖A‖²/2)."""
    model = PDNet(PDNetConfig(depth=5)).double()
    with torch.no_grad():
        for layer in model.layers:
            layer.weight.zero_()
    physics = ops.gaussian_blur((1, 32, 32))
    y = physics.A(torch.rand(1, 1, 32, 32, dtype=torch.float64))
    x = physics.A_adjoint(y)
    for _ in range(5):
        x = x - 0.99 / 0.5 * physics.A_adjoint(physics.A(x) - y)
    assert torch.allclose(model(y, physics), x, atol=1e-10)


def test_last_lambda_gets_no_gradient_and_others_do():
    model = PDNet(PDNetConfig(depth=3))
    tb = get_task("inpaint").sample(torch.rand(2, 1, 16, 16), torch.Generator().manual_seed(0))
    loss = (model(tb.y, tb.physics) - tb.target).pow(2).mean()
    loss.backward()
    assert model.layers[-1].lam.grad is None
    assert all(layer.lam.grad is not None for layer in model.layers[:-1])
    assert all(layer.weight.grad.abs().sum() > 0 for layer in model.layers)


def test_colour_channels_fold_into_batch():
    model = PDNet(PDNetConfig(depth=3, weight_init_std=0.3))
    physics = ops.Decimation((3, 16, 16))
    x = torch.rand(2, 3, 16, 16)
    out = model(physics.A(x), physics)
    per_channel = torch.cat(
        [model(physics.A(x[:, c : c + 1]), ops.Decimation((1, 16, 16))) for c in range(3)], dim=1)
    assert torch.allclose(out, per_channel, atol=1e-6)


def test_functional_call_matches_module():
    model = PDNet(PDNetConfig(depth=3))
    tb = get_task("deblur").sample(torch.rand(1, 1, 32, 32), torch.Generator().manual_seed(0))
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    out = torch.func.functional_call(model, params, (tb.y, tb.physics))
    assert torch.allclose(out, model(tb.y, tb.physics), rtol=0, atol=1e-6)


def test_symmetric_clip_gradients():
    from metaprior.models.pdnet import symmetric_clip

    g = torch.Generator().manual_seed(0)
    v = torch.randn(3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    lam = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    ref_v = v.detach().clone().requires_grad_(True)
    ref_lam = lam.detach().clone().requires_grad_(True)
    w = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    (symmetric_clip(v, lam) * w).sum().backward()
    (torch.minimum(torch.maximum(ref_v, -ref_lam), ref_lam) * w).sum().backward()
    assert torch.equal(symmetric_clip(v, lam), torch.clamp(v, -0.7, 0.7))
    assert torch.allclose(v.grad, ref_v.grad) and torch.allclose(lam.grad, ref_lam.grad)
    assert torch.autograd.gradgradcheck(lambda a, b: symmetric_clip(a, b), (v, lam))


def test_double_backward_gradgradcheck():
    """MAML differentiates PDNet twice: check second derivatives at tiny size."""
    torch.manual_seed(0)
    model = PDNet(PDNetConfig(depth=2, width=3, weight_init_std=0.3, lam_init=0.05)).double()
    physics = ops.inpainting(ops.bernoulli_mask((1, 1, 6, 6), 0.5,
                                                torch.Generator().manual_seed(0)).double())
    y = physics.A(torch.rand(1, 1, 6, 6, dtype=torch.float64))
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in model.parameters())
    taus = model.step_sizes(1.0)  # held fixed: Condat's rule is detached by design

    def f(*ps):
        return torch.func.functional_call(model, dict(zip(names, ps, strict=True)), (y, physics),
                                          {"step_sizes": taus})

    assert torch.autograd.gradgradcheck(f, params, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", available_tasks())
def test_untrained_pdnet_finite_on_real_image(name, device):
    """Zero training, a real (scikit-image camera) image, every task: finite output."""
    from metaprior.data import demo_images

    x = demo_images("test", size=64)[0].unsqueeze(0).to(device)
    tb = get_task(name).sample(x, torch.Generator().manual_seed(0))
    model = PDNet(PDNetConfig(depth=10)).to(device)
    with torch.no_grad():
        out = model(tb.y, tb.physics)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert bool(torch.isfinite(out).all())


def test_complex_adjoint_rejected():
    import deepinv as dinv

    class Bad(dinv.physics.LinearPhysics):
        def A(self, x, **kw):
            return torch.fft.fft2(x)

        def A_adjoint(self, y, **kw):
            return torch.fft.ifft2(y)

    with pytest.raises(ValueError, match="real image"):
        PDNet(PDNetConfig(depth=1))(torch.rand(1, 1, 4, 4), Bad())


def _oracle_forward(model, y, physics):
    """Textbook PDNet with conv2d / conv_transpose2d: the reference of the fast layer."""
    aty = physics.A_adjoint(y)
    b, c, h, w = aty.shape
    x, u = aty, aty.new_zeros(b * c, model.config.width, h, w)
    for k, (layer, tau) in enumerate(zip(model.layers, model.step_sizes(1.0), strict=True)):
        wtu = F.conv_transpose2d(u, layer.weight, padding=1).view(b, c, h, w)
        x_next = x - tau * (physics.A_adjoint_A(x) - aty + wtu)
        if k < len(model.layers) - 1:
            lam = layer.lam.abs()
            v = u + F.conv2d((2 * x_next - x).view(b * c, 1, h, w), layer.weight, padding=1)
            u = torch.minimum(torch.maximum(v, -lam), lam)
        x = x_next
    return x


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("name", ["deblur", "inpaint", "mri4"])
def test_fast_layer_matches_conv2d_oracle(name, dtype, tol):
    torch.manual_seed(0)
    model = PDNet(PDNetConfig(depth=6, weight_init_std=0.2, lam_init=0.05)).to(dtype)
    tb = get_task(name).sample(torch.rand(2, 1, 32, 32, dtype=dtype),
                               torch.Generator().manual_seed(0))
    with torch.no_grad():
        out, ref = model(tb.y, tb.physics), _oracle_forward(model, tb.y, tb.physics)
    assert float((out - ref).abs().max()) <= tol


def test_gradient_checkpointing_is_exact_to_second_order():
    """checkpoint_segment recomputes activations; values, gradients and MAML hypergradients
    are unchanged."""
    from metaprior.adapt import parameters_of
    from metaprior.meta.config import MetaConfig
    from metaprior.meta.maml import maml_hypergradient

    results = []
    for seg in (0, 2):
        torch.manual_seed(0)
        model = PDNet(PDNetConfig(depth=5, width=6, weight_init_std=0.3, lam_init=0.05,
                                  checkpoint_segment=seg)).double()
        g = torch.Generator().manual_seed(0)
        task = get_task("inpaint")
        inner = task.sample(torch.rand(2, 1, 8, 8, generator=g, dtype=torch.float64), g)
        outer = task.sample(torch.rand(2, 1, 8, 8, generator=g, dtype=torch.float64), g)
        res = maml_hypergradient(model, parameters_of(model), inner, outer,
                                 MetaConfig(inner_steps=2, inner_optimizer="sgd", inner_lr=0.3))
        results.append(torch.cat([v.reshape(-1) for v in res.grads.values()]))
    assert torch.allclose(results[0], results[1], rtol=1e-10, atol=1e-14)
