"""Unit tests of the small modules: losses, config, checkpoint files, adaptation."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

import metaprior as mp
from metaprior import checkpoint as ckpt
from metaprior import losses
from metaprior.config import build_config, explicit_values, replace_from_dict
from metaprior.train import TrainConfig

# --- losses --------------------------------------------------------------------------------

def test_losses_are_the_stated_formulas():
    g = torch.Generator().manual_seed(0)
    x, t = torch.rand(2, 1, 8, 8, generator=g), torch.rand(2, 1, 8, 8, generator=g)
    assert float(losses.supervised_loss(x, t)) == pytest.approx(
        float(((x - t) ** 2).sum()) / (2 * x.numel()))
    batch = mp.get_task("sr2").sample(t, g)
    mc = losses.measurement_consistency_loss(x, batch.y, batch.physics)
    ax = x[..., ::2, ::2]
    assert float(mc) == pytest.approx(float(((ax - batch.y) ** 2).sum()) / (2 * batch.y.numel()),
                                      rel=1e-6)
    # blind to the kernel of A: changing x off the sampled grid leaves it unchanged
    off = x.clone()
    off[..., 1::2, :] += 1.0
    assert float(losses.measurement_consistency_loss(off, batch.y, batch.physics)) == \
        pytest.approx(float(mc), rel=1e-6)
    phi = {"a": torch.ones(3), "b": torch.zeros(2)}
    theta = {"a": torch.zeros(3), "b": torch.ones(2)}
    assert float(losses.proximal_term(phi, theta, 0.5)) == pytest.approx(0.25 * 5)


def test_rotation_and_loss_kinds():
    x = torch.arange(4.0).view(1, 1, 2, 2)
    assert torch.equal(losses.rotate(losses.rotate(losses.rotate(losses.rotate(x)))), x)
    with pytest.raises(ValueError, match="square images"):
        losses.rotate(torch.zeros(1, 1, 2, 3))
    batch = mp.get_task("denoise").sample(torch.rand(1, 1, 8, 8))
    assert float(losses.data_loss("supervised", batch.target, batch)) == 0.0
    with pytest.raises(ValueError, match="needs the model"):
        losses.data_loss("equivariant", batch.target, batch)


@pytest.mark.parametrize("complex_", [False, True])
def test_sure_is_an_unbiased_estimate_of_the_measurement_risk(complex_):
    # For a fixed linear estimator f(y) = W A^T y, the mean of SURE over noise draws equals
    # the mean of ½‖A f(y) − A x‖² / M (the risk in the range of A), with no ground truth used.
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 12, 12, generator=g)
    physics = (mp.physics.RealMRI((torch.rand(12, 12, generator=g) < 0.4).float(), (1, 12, 12))
               if complex_ else mp.get_task("sr2").sample(x, g).physics)
    kernel = torch.full((1, 1, 3, 3), 1 / 9)

    def f(y):
        aty = physics.A_adjoint(y)
        return 0.8 * torch.nn.functional.conv2d(aty, kernel, padding=1) + 0.2 * aty

    sigma, diffs, biased = 0.1, [], []
    ax = physics.A(x)
    for _ in range(600):
        y = ax + sigma * torch.randn(ax.shape, generator=g, dtype=ax.dtype)
        probe = torch.randn((torch.view_as_real(y) if complex_ else y).shape, generator=g)
        sure = losses.sure_loss(f(y), y, physics, sigma, f, probe)
        risk = 0.5 * (physics.A(f(y)) - ax).abs().pow(2).mean()
        mc = losses.measurement_consistency_loss(f(y), y, physics)
        diffs.append(float(sure - risk))
        biased.append(float(mc - risk))
    for d, unbiased in ((torch.tensor(diffs), True), (torch.tensor(biased), False)):
        z = abs(float(d.mean())) / (float(d.std()) / len(d) ** 0.5)
        assert z < 4 if unbiased else z > 8  # consistency is biased by the noise, SURE not


def test_robust_equivariant_loss_is_equivariant_without_noise_and_deterministic():
    from metaprior.meta.problem import inner_loss

    model = mp.PDNet(mp.PDNetConfig(depth=2, width=3))
    theta = mp.parameters_of(model)
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    task = mp.get_task("denoise")
    noisy = task.sample(x, torch.Generator().manual_seed(2))
    assert noisy.noise_sigma == task.noise_sigma > 0
    clean = dataclasses.replace(noisy, noise_sigma=0.0)
    assert torch.equal(inner_loss(model, theta, theta, clean, "robust-equivariant", 0.0),
                       inner_loss(model, theta, theta, clean, "equivariant", 0.0))
    first = inner_loss(model, theta, theta, noisy, "robust-equivariant", 0.0)
    assert torch.equal(first, inner_loss(model, theta, theta, noisy, "robust-equivariant", 0.0))
    assert not torch.equal(first, inner_loss(model, theta, theta, noisy, "equivariant", 0.0))
    # the next step on the same measurements draws a new probe and new noise
    assert not torch.equal(first, inner_loss(model, theta, theta, noisy, "robust-equivariant",
                                             0.0, draw=1))


# --- config --------------------------------------------------------------------------------

def test_config_type_checks_and_lossless_conversions():
    cfg = build_config(TrainConfig, {"optim": {"lr": 1}, "meta": {"tasks": ["tv", "sr2"]}})
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.meta.tasks == ("tv", "sr2")
    for bad, match in (({"model": {"depth": 2.5}}, "model.depth must be of type int"),
                       ({"run": {"seed": "0"}}, "run.seed must be of type int"),
                       ({"meta": {"tasks": ["tv", 3]}}, "must be a list of names"),
                       ({"data": {"patch_size": 0}}, "patch_size must be >= 1"),
                       ({"optim": {"lr": float("nan")}}, "lr must be a finite number")):
        with pytest.raises(ValueError, match=match):
            build_config(TrainConfig, bad)


def test_explicit_values_and_flat_replacement():
    from metaprior.cli import build_parser

    args = build_parser().parse_args(["meta-train", "--depth", "3", "--steps", "7"])
    given = explicit_values(TrainConfig, {"run": {"seed": 4}}, args)
    assert given == {"model.depth": 3, "optim.steps": 7, "run.seed": 4}
    base = mp.AdaptConfig()
    assert replace_from_dict(base, {"steps": 3, "lr": 1}).lr == 1.0
    with pytest.raises(ValueError, match="unknown field"):
        replace_from_dict(base, {"stepz": 3})
    with pytest.raises(ValueError, match="steps must be of type int"):
        replace_from_dict(base, {"steps": "3"})


# --- checkpoint files ----------------------------------------------------------------------

def test_model_files_round_trip_with_metadata_and_no_temporaries(tmp_path):
    model = mp.PDNet.seeded(mp.PDNetConfig(depth=2, width=4), seed=1)
    path = mp.save_model(tmp_path / "m.safetensors", model,
                         metadata={"note": "x", "nested": {"a": [1, 2]}})
    loaded, meta = mp.load_model(path)
    assert loaded.config == model.config and meta["nested"] == {"a": [1, 2]}
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), loaded.parameters(),
                                                 strict=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    with pytest.raises(ValueError, match=r"end in \.safetensors"):
        mp.save_model(tmp_path / "m.pt", model)


def test_checkpoints_keep_the_newest_and_point_latest_at_a_complete_one(tmp_path):
    model = mp.PDNet(mp.PDNetConfig(depth=1, width=2))
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, model, {"t": torch.tensor([float(step)])},
                             {"step": step}, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert names == ["step_0000002", "step_0000003"]
    latest = ckpt.latest_checkpoint(tmp_path)
    _, tensors, state = ckpt.load_checkpoint(latest)
    assert state == {"step": 3} and float(tensors["t"]) == 3.0
    (tmp_path / "checkpoints" / "latest").write_text("step_0000009")  # dangling pointer
    assert ckpt.latest_checkpoint(tmp_path) is None


def test_write_bytes_atomic_replaces_whole_files(tmp_path):
    target = tmp_path / "f.json"
    ckpt.write_bytes_atomic(target, b"old")
    ckpt.write_bytes_atomic(target, json.dumps({"new": 1}).encode())
    assert json.loads(target.read_text()) == {"new": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]
    assert not any(".tmp-" in n for n in os.listdir(tmp_path))


# --- adaptation ----------------------------------------------------------------------------

def test_fine_tune_lowers_its_loss_keeps_snapshots_and_leaves_the_model_alone():
    model = mp.PDNet.seeded(mp.PDNetConfig(depth=2), seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    batch = mp.get_task("inpaint").sample(torch.rand(2, 1, 16, 16, generator=g), g)
    theta = mp.parameters_of(model)
    rule = mp.AdaptConfig(steps=6, lr=1e-2, loss="supervised")
    result = mp.fine_tune(model, theta, lambda step: batch, rule, keep=(0, 3, 6))
    assert result.losses[-1] < result.losses[0]
    assert set(result.snapshots) == {0, 3, 6}
    assert all(torch.equal(result.snapshots[0][k], theta[k]) for k in theta)
    assert all(torch.equal(result.snapshots[6][k], result.params[k]) for k in theta)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())



def test_search_lr_without_ground_truth_ranks_lrs_by_the_held_out_label_free_loss():
    """``search_lr(criterion="label-free")`` adapts at each lr on the stream and keeps the lr
    whose parameters give the lowest robust-equivariant loss on the held-out measurements;
    their ground truth is never read (here it is NaN)."""
    from metaprior.meta.problem import inner_loss

    model = mp.PDNet.seeded(mp.PDNetConfig(depth=2), seed=0)
    theta = mp.parameters_of(model)
    task = mp.get_task("denoise")
    g = torch.Generator().manual_seed(0)
    train = task.sample(torch.rand(2, 1, 16, 16, generator=g), g)
    held = task.sample(torch.rand(2, 1, 16, 16, generator=g), g)
    held = dataclasses.replace(held, target=torch.full_like(held.target, float("nan")))
    rule = mp.AdaptConfig(steps=3, loss="robust-equivariant")
    lrs = (1e-4, 1e-2, 1.0)
    best, tried = mp.search_lr(model, theta, lambda: lambda step: train, rule, [held], lrs,
                               criterion="label-free")
    expected = {}
    for lr in lrs:
        phi = mp.fine_tune(model, theta, lambda step: train,
                           dataclasses.replace(rule, lr=lr)).params
        value = mp.label_free_loss(model, phi, [held])
        with torch.no_grad():
            assert value == float(inner_loss(model, phi, phi, held, "robust-equivariant", 0.0))
        expected[lr] = value
    assert set(tried) >= set(lrs) and all(tried[lr] == expected[lr] for lr in lrs)
    assert best == min(tried, key=lambda lr: tried[lr])
    with pytest.raises(ValueError, match="criterion must be"):
        mp.search_lr(model, theta, lambda: lambda step: train, rule, [held], lrs,
                     criterion="ssim")

def test_adapt_config_from_model_metadata_and_its_bounds():
    meta = {"meta_config": {"inner_lr": 3e-4, "inner_loss": "unsupervised", "prox_lambda": 0.01,
                            "inner_optimizer": "sgd"}}
    rule = mp.AdaptConfig.from_model(meta, steps=4)
    assert (rule.lr, rule.loss, rule.optimizer, rule.steps) == (3e-4, "unsupervised", "sgd", 4)
    assert mp.AdaptConfig.from_model({}, lr=None).lr == mp.AdaptConfig.lr
    for bad in ({"lr": 0.0}, {"steps": -1}, {"loss": "l1"}, {"optimizer": "lbfgs"},
                {"prox_lambda": -1.0}):
        with pytest.raises(ValueError):
            dataclasses.replace(rule, **bad)


def test_joint_pretraining_is_an_objective_not_a_hypergradient():
    from metaprior.meta.config import MetaConfig
    from metaprior.meta.joint import joint_gradient
    from metaprior.meta.step import task_hypergradient

    cfg = MetaConfig(objective="joint")
    legacy = MetaConfig(hypergradient="joint")  # the earlier spelling, kept for old configs
    assert (legacy.objective, legacy.hypergradient) == ("joint", "maml")
    with pytest.raises(ValueError, match="objective must be one of"):
        MetaConfig(objective="reptile")
    with pytest.raises(ValueError, match="learn_inner_lr needs"):
        MetaConfig(objective="joint", learn_inner_lr=True)
    model = mp.PDNet.seeded(mp.PDNetConfig(depth=2), seed=0)
    g = torch.Generator().manual_seed(0)
    task = mp.get_task("denoise")
    inner, outer = (task.sample(torch.rand(2, 1, 16, 16, generator=g), g) for _ in range(2))
    theta = mp.parameters_of(model)
    a = task_hypergradient(model, theta, inner, outer, cfg)
    b = joint_gradient(model, theta, inner, outer, cfg)
    assert all(torch.equal(a.grads[k], b.grads[k]) for k in theta)


_HEAP_PROBE = """
import ctypes, sys, torch
from metaprior.runtime import keep_freed_memory

class MallInfo2(ctypes.Structure):  # glibc >= 2.33
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks",
                "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
maps = [torch.ones(8, 64, 32, 32) for _ in range(100)]  # 100 feature maps of 2 MiB
mapped = libc.mallinfo2().hblkhd  # bytes in blocks of their own mappings
del maps
print(applied, mapped >> 20, libc.mallinfo2().arena >> 20)  # MiB; heap kept after freeing
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_keep_freed_memory_keeps_the_heap_that_a_step_frees():
    """After ``keep_freed_memory()`` (every command's set-up) 2 MiB feature maps come from the
    heap, not from mappings of their own, and the heap is kept when they are freed, so the
    next step reuses it rather than faulting its pages in again (``bench_heap.py``)."""
    def probe(mode):
        out = subprocess.run([sys.executable, "-c", _HEAP_PROBE, mode], capture_output=True,
                             text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if "mallinfo2" in out.stderr:
            pytest.skip("a C library without mallinfo2")
        applied, mapped, kept = out.stdout.split()
        return applied, int(mapped), int(kept)

    applied, mapped, kept = probe("keep")
    _, mapped_default, kept_default = probe("default")  # glibc's own thresholds
    assert applied == "True"
    assert mapped < 10 <= 190 <= mapped_default, (mapped, mapped_default)
    assert kept >= kept_default + 190, (kept, kept_default)  # the 200 MiB stay in the heap


def test_every_command_keeps_freed_memory_and_sets_its_threads(monkeypatch, tmp_path):
    from metaprior import cli, runtime

    calls = []
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: calls.append("heap") or True)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
    runtime.configure_cpu(2)
    assert calls == [2, "heap"]
    with pytest.raises(ValueError, match="--threads must be >= 1"):
        runtime.configure_cpu(0)
    calls.clear()  # through the CLI: set up, then the command's own one-line error
    with pytest.raises(SystemExit):
        cli.main(["reconstruct", "--model", str(tmp_path / "none.safetensors"),
                  "--measurements", str(tmp_path / "none.safetensors"), "--out",
                  str(tmp_path / "r"), "--threads", "1"])
    assert calls == [1, "heap"]


def test_checks_take_numpy_and_torch_numbers_and_refuse_others():
    """``check_positive`` reads any real number (Python, NumPy, a 0-d tensor); a bool, a string,
    NaN or a value <= 0 is a one-line error naming the field."""
    import numpy as np

    from metaprior.config import check_positive
    from metaprior.tasks import denoise_task

    assert denoise_task(np.float32(0.05)).noise_sigma == pytest.approx(0.05)
    check_positive("t", a=np.int64(3), b=torch.tensor(0.5), c=2)
    for bad in (True, "1", float("nan"), 0, -1.0, np.float64("inf"), None):
        with pytest.raises(ValueError, match=r"^t: a must be a finite number > 0"):
            check_positive("t", a=bad)
