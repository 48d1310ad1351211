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
