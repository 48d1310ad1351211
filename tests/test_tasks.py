from __future__ import annotations

import deepinv as dinv
import pytest
import torch

from metaprior import tasks
from metaprior.physics import prox_tv


def test_registry_has_paper_tasks():
    assert set(tasks.TRAIN_TASKS) | set(tasks.UNSEEN_TASKS) <= set(tasks.available_tasks())
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        tasks.get_task("nope")


def test_sampling_is_seeded_and_leaves_global_rng_alone():
    x = torch.rand(3, 1, 32, 32)
    state = torch.get_rng_state()
    a = tasks.get_task("inpaint").sample(x, torch.Generator().manual_seed(5))
    b = tasks.get_task("inpaint").sample(x, torch.Generator().manual_seed(5))
    c = tasks.get_task("denoise").sample(x, torch.Generator().manual_seed(6))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.y, b.y) and torch.equal(a.physics.mask, b.physics.mask)
    # inpainting masks differ between samples of a batch, ~50 % missing
    m = a.physics.mask
    assert not torch.equal(m[0], m[1])
    assert abs(float(m.mean()) - 0.5) < 0.05
    assert abs(float((c.y - x).std()) - 0.1) < 0.01


def test_targets():
    x = torch.rand(2, 1, 32, 32)
    g = torch.Generator().manual_seed(0)
    for name in ("denoise", "deblur", "inpaint", "sr2", "mri4"):
        assert torch.equal(tasks.get_task(name).sample(x, g).target, x)
    tv = tasks.get_task("tv").sample(x, g)
    assert torch.equal(tv.y, x)
    assert torch.allclose(tv.target, prox_tv(x, 0.1), atol=1e-6)


def test_mri_task_mask_is_fixed():
    x = torch.rand(1, 1, 32, 32)
    a = tasks.get_task("mri4").sample(x, torch.Generator().manual_seed(0))
    b = tasks.get_task("mri4").sample(x, torch.Generator().manual_seed(1))
    assert torch.equal(a.physics.mask, b.physics.mask)
    assert a.y.is_complex()


def test_fourier_task_redraws_mask_and_acceleration():
    """T5: a new column mask per batch, deterministic in the generator, with the sampled
    fraction of columns set by an acceleration from (2, 4, 8)."""
    x = torch.rand(1, 1, 64, 64)
    task = tasks.get_task("fourier")
    g = torch.Generator().manual_seed(0)
    masks = [task.sample(x, g).physics.mask[0] for _ in range(12)]
    again = task.sample(x, torch.Generator().manual_seed(0)).physics.mask[0]
    assert torch.equal(masks[0], again)
    assert len({tuple(m.tolist()) for m in masks}) == 12
    assert {round(64 / float(m.sum())) for m in masks} == {2, 4, 8}


def test_user_task_from_any_linear_physics():
    physics = dinv.physics.Inpainting(img_size=(1, 8, 8), mask=0.3,
                                      rng=torch.Generator().manual_seed(0))
    task = tasks.task_from_physics("my_device", physics, noise_sigma=0.01)
    tasks.register_task(task, overwrite=True)
    try:
        tb = tasks.get_task("my_device").sample(torch.rand(2, 1, 8, 8),
                                                torch.Generator().manual_seed(0))
        assert tb.y.shape == (2, 1, 8, 8)
        with pytest.raises(ValueError, match="already registered"):
            tasks.register_task(task)
    finally:
        tasks._REGISTRY.pop("my_device")


def test_bad_shape():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        tasks.get_task("denoise").sample(torch.rand(8, 8))


def test_mix_families_draw_their_parameter():
    x = torch.rand(64, 1, 32, 32)
    g = torch.Generator().manual_seed(0)
    batch = tasks.get_task("inpaint-mix").sample(x, g)
    kept = batch.physics.mask.mean(dim=(1, 2, 3))
    assert 0.1 - 0.05 < float(kept.min()) and float(kept.max()) < 0.8 + 0.05
    assert float(kept.std()) > 0.1  # rates differ between samples
    blur = tasks.get_task("deblur-mix")
    a = blur.sample(x[:1], torch.Generator().manual_seed(1)).y
    b = blur.sample(x[:1], torch.Generator().manual_seed(2)).y
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="missing rates"):
        tasks.inpaint_mix_task(0.5, 1.0)


@pytest.mark.parametrize("name", ["inpaint-mix", "sr2", "mri4", "deblur", "denoise"])
def test_a_batch_splits_into_parts_with_their_own_operators(name):
    """A part keeps its samples' measurements, targets and operator rows: A_k x_k = (A x)_k,
    A_k^T y_k = (A^T y)_k, and the parts cover the batch in order."""
    g = torch.Generator().manual_seed(3)
    batch = tasks.get_task(name).sample(torch.rand(5, 1, 32, 32, generator=g), g)
    parts = batch.split(2)
    assert [len(p.y) for p in parts] == [2, 3]
    assert torch.equal(torch.cat([p.y for p in parts]), batch.y)
    assert torch.equal(torch.cat([p.target for p in parts]), batch.target)
    ax = torch.cat([p.physics.A(p.x) for p in parts])
    aty = torch.cat([p.physics.A_adjoint(p.y) for p in parts])
    assert torch.allclose(ax, batch.physics.A(batch.x), atol=1e-6)
    assert torch.allclose(aty, batch.physics.A_adjoint(batch.y), atol=1e-6)
    assert batch.split(1) == [batch]
    assert [p is None for p in batch.split(7)] == [True, False, False, True, False, False, False]


def test_an_operator_that_mixes_samples_does_not_split():
    """An operator coupling the samples of a batch has no per-sample parts: ``split`` says so
    with ``None`` instead of returning wrong operators."""
    def mean(x):
        return x.mean(0, keepdim=True).expand_as(x)
    mixing = dinv.physics.LinearPhysics(A=mean, A_adjoint=mean)
    assert tasks.task_from_physics("mix", mixing).sample(torch.rand(4, 1, 8, 8)).split(2) is None
