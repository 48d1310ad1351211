from __future__ import annotations

import pytest
import torch

from metaprior.measurements import load_measurements, save_measurements
from metaprior.tasks import get_task


@pytest.mark.parametrize("name", ["inpaint", "mri4", "tv", "deblur"])
def test_round_trip_rebuilds_the_operator(tmp_path, name):
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    batch = get_task(name).sample(x, torch.Generator().manual_seed(1))
    path = save_measurements(tmp_path / "y.safetensors", batch)
    back = load_measurements(path)
    assert back.task == name and torch.equal(back.y, batch.y)
    assert torch.equal(back.target, batch.target) and torch.equal(back.x, x)
    z = torch.rand(2, 1, 32, 32)
    assert torch.allclose(back.physics.A(z), batch.physics.A(z))  # same mask / kernel


def test_without_ground_truth(tmp_path):
    batch = get_task("sr2").sample(torch.rand(1, 1, 16, 16))
    back = load_measurements(save_measurements(tmp_path / "y.safetensors", batch, False))
    assert back.x is None and back.target is None


def test_the_noise_level_drawn_for_a_file_travels_with_it(tmp_path):
    """A family task draws its noise std per batch: the file records the one drawn, for the
    noise-aware loss; a damaged value is refused in one line."""
    from metaprior.checkpoint import load_tensors, save_tensors

    batch = get_task("denoise-family").sample(torch.rand(1, 1, 16, 16),
                                              torch.Generator().manual_seed(3))
    assert 0.01 < batch.noise_sigma < 0.1
    path = save_measurements(tmp_path / "y.safetensors", batch)
    assert load_measurements(path).noise_sigma == batch.noise_sigma
    save_tensors(tmp_path / "bad.safetensors", load_tensors(path),
                 {"task": "denoise-family", "image_shape": "[1, 1, 16, 16]",
                  "noise_sigma": "-1"})
    with pytest.raises(ValueError, match="'noise_sigma' metadata must be a number >= 0"):
        load_measurements(tmp_path / "bad.safetensors")


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="--measurements"):
        load_measurements(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match=r"\.safetensors"):
        save_measurements(tmp_path / "y.pt", get_task("sr2").sample(torch.rand(1, 1, 8, 8)))


def test_a_crafted_image_shape_is_refused_before_any_allocation(tmp_path):
    """An ``image_shape`` far larger than ``y`` could ever measure is refused at once."""
    from safetensors.torch import save_file

    path = tmp_path / "huge.safetensors"
    save_file({"y": torch.zeros(1, 1, 8, 8)}, str(path),
              {"task": "sr2", "image_shape": "[1, 1, 1000000, 1000000]"})
    with pytest.raises(ValueError, match=r"image_shape.*damaged"):
        load_measurements(path)
