"""The shipped meta-models: listed, loadable by name, safetensors only, with provenance."""

from __future__ import annotations

import pytest
import torch

from metaprior import pretrained
from metaprior.checkpoint import load_model, resolve_model_path
from metaprior.models import HQSNet, PDNet


def test_every_shipped_model_loads_by_name_with_its_provenance():
    names = pretrained.available()
    assert "meta-sup-d20" in names
    for name in names:
        info = pretrained.describe(name)
        assert info["command"].count("metaprior ") == 1 and info["file"].endswith(".safetensors")
        if "init_command" in info:  # the run it starts from (--init-from) or continues
            init = info["init_command"].split("--out ")[1].split()[0]
            assert info["init_command"].count("metaprior ") == 1 and init in info["command"]
        path = resolve_model_path(name)
        with open(path, "rb") as f:  # safetensors: 8-byte header length then a JSON header
            header = int.from_bytes(f.read(8), "little")
            assert f.read(1) == b"{" and header < path.stat().st_size
        model, meta = load_model(name)
        n = sum(p.numel() for p in model.parameters())
        assert path == pretrained.path(name) and path.stat().st_size < 4 * n + 50_000
        if isinstance(model, PDNet):
            assert n == 361 * model.config.depth and path.stat().st_size < 100_000
        else:  # HQSNet: two schedule numbers per iteration and the FFDNet
            assert isinstance(model, HQSNet) and n == 2 * model.config.iterations + 485_248
        assert all(torch.isfinite(p).all() for p in model.parameters())
        assert meta["meta_config"]["inner_steps"] >= 0


def test_unknown_name_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="shipped model name"):
        resolve_model_path("no-such-model")
    with pytest.raises(ValueError, match="no shipped model"):
        pretrained.describe("no-such-model")
