"""Models by name: the shipped one and the reproductions' PDNets (registered by importing
``reproductions``), listed, loadable, safetensors only, with provenance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import reproductions
from metaprior import pretrained
from metaprior.checkpoint import load_model, resolve_model_path
from metaprior.models import HQSNet, PDNet

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_MODELS = json.loads((ROOT / "src/metaprior/pretrained/MODELS.json").read_text())


def test_the_package_ships_the_recommended_model_only():
    assert list(PACKAGE_MODELS) == [pretrained.RECOMMENDED]
    shipped = sorted(p.name for p in (ROOT / "src/metaprior/pretrained").glob("*.safetensors"))
    assert shipped == [f"{pretrained.RECOMMENDED}.safetensors"]
    # every default that names a model names the recommended one
    from metaprior.demo import DemoConfig
    from reproductions.table1 import Table1Config

    assert DemoConfig.model == Table1Config.recommended == pretrained.RECOMMENDED
    study = json.loads((reproductions.MODELS / "MODELS.json").read_text())
    assert len(study) == 19 and all(name.startswith(("meta-", "joint-", "hqs-"))
                                    for name in study)
    assert all((reproductions.MODELS / e["file"]).is_file() for e in study.values())


def test_every_model_loads_by_name_with_its_provenance():
    names = pretrained.available()
    assert {pretrained.RECOMMENDED, "hqs-families", "meta-sup-d20", "joint-d20-3000"} <= set(names)
    for name in names:
        info = pretrained.describe(name)
        assert info["command"].count("metaprior ") == 1 and info["file"].endswith(".safetensors")
        if "init_command" in info:  # the run it starts from (--init-from) or continues
            out = info["init_command"].split("--out ")[1].split()[0]
            start = info["command"].split("--init-from ")[-1].split()[0]
            assert info["init_command"].count("metaprior ") == 1
            assert out in info["command"] or (  # or warm-started from that model by name
                start in names and pretrained.describe(start)["command"] == info["init_command"])
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
        # A trained model's file holds its run's meta-config; an untrained one says so.
        assert "untrained" in info["about"] or meta["meta_config"]["inner_steps"] >= 0


def test_unknown_name_is_a_clear_error():
    for call in (resolve_model_path, pretrained.describe):
        with pytest.raises((FileNotFoundError, ValueError)) as e:
            call("no-such-model")
        message = str(e.value)
        assert "\n" not in message and pretrained.RECOMMENDED in message
        assert "meta-sup-d20" in message
        assert "add_model_dir" in message and pretrained.ENV in message
    with pytest.raises(FileNotFoundError, match="no model at"):
        resolve_model_path("runs/none/model.safetensors")


def test_a_model_folder_is_found_through_the_environment(tmp_path):
    """A folder in METAPRIOR_MODEL_PATH makes its names loadable, without ``reproductions``;
    the package's own model is always there."""
    (tmp_path / "MODELS.json").write_text(json.dumps({"mine": {"file": "m.safetensors"}}))
    (tmp_path / "m.safetensors").write_bytes(
        (reproductions.MODELS / "joint-d20.safetensors").read_bytes())
    code = ("from metaprior import pretrained, load_model; "
            "print(pretrained.available(), load_model('mine')[0].config.depth)")
    env = {**os.environ, pretrained.ENV: str(tmp_path), "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=tmp_path).stdout
    assert out.split() == [f"['{pretrained.RECOMMENDED}',", "'mine']", "20"]
    with pytest.raises(FileNotFoundError, match=r"no MODELS\.json"):
        pretrained.add_model_dir(tmp_path / "missing")
