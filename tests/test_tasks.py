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
