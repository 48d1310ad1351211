"""Shared fixtures. One thread: tests are tiny, and on a 2-core machine shared with another
process OpenMP spin-waiting makes small ops 10–100× slower with 2 threads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

DATA_ROOT = os.environ.get("METAPRIOR_DATA")
HAS_DATA = bool(DATA_ROOT) and Path(DATA_ROOT).is_dir()
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_collection_modifyitems(config, items):
    skip_data = pytest.mark.skip(reason="data root absent: set METAPRIOR_DATA to run")
    skip_gpu = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "data" in item.keywords and not HAS_DATA:
            item.add_marker(skip_data)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture
def data_root() -> Path:
    return Path(DATA_ROOT)


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def write_pngs(folder: Path, n: int = 2, size: int = 32, seed: int = 0) -> Path:
    """``n`` random 8-bit grayscale ``size``×``size`` PNGs in a new ``folder``."""
    from PIL import Image

    folder.mkdir()
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        arr = (torch.rand(size, size, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(folder / f"{i}.png")
    return folder
