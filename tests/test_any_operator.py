"""Any operator end to end: parametrised task names, operators for any image size, a user's
own LinearPhysics from a file (``metaprior --plugin``) through measure / adapt / evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import metaprior as mp
from conftest import write_pngs
from metaprior import physics as ops
from metaprior.cli import main
from reproductions.__main__ import main as rmain

PLUGIN = '''
import torch
import metaprior as mp
from metaprior import physics as ops


def blur_for(shape, generator, device):
    """A Gaussian blur whose std is drawn per batch, built for the images' own size."""
    sigma = 0.8 + 0.8 * float(torch.rand(1, generator=generator))
    return ops.gaussian_blur(shape[1:], sigma, 9, device=device)


mp.register_task(mp.task_from_physics("my-blur", blur_for, noise_sigma=0.01), overwrite=True)
'''


def test_parametrised_names_build_their_tasks_and_round_trip():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 24, 24, generator=g)
    assert mp.get_task("sr3").sample(x, g).y.shape == (2, 1, 8, 8)
    assert mp.get_task("mri8").params["acceleration"] == 8
    for name in ("sr3", "mri8", "mri4-s7", "inpaint-0.7", "denoise-0.05", "deblur-2.5",
                 "deblur-2.5-k15"):
        assert mp.get_task(name).name == name
    assert mp.get_task("inpaint-0.5") is mp.get_task("inpaint")
    masked = mp.get_task("inpaint-0.9").sample(torch.ones(4, 1, 32, 32), g).y
    assert 0.05 < float((masked != 0).float().mean()) < 0.15
    with pytest.raises(ValueError, match="parametrised name"):
        mp.get_task("sr")
    with pytest.raises(ValueError, match="factor must be an integer >= 2"):
        mp.get_task("sr1")


def test_variants_of_a_task_register_under_their_own_names():
    from metaprior.tasks import inpaint_task

    task = mp.register_task(inpaint_task(0.3), overwrite=True)
    assert task.name == "inpaint-0.3" and mp.get_task("inpaint").params["missing"] == 0.5


def test_a_fixed_operator_says_how_to_serve_other_sizes_and_a_factory_serves_all():
    fixed = ops.gaussian_blur((1, 32, 32), 1.6, 9)
    task = mp.task_from_physics("fixed-blur", fixed)
    g = torch.Generator().manual_seed(0)
    task.sample(torch.rand(1, 1, 32, 32), g)
    with pytest.raises(ValueError, match="give task_from_physics a factory"):
        task.sample(torch.rand(1, 1, 64, 64), g)
    any_size = mp.task_from_physics(
        "any-blur", lambda shape, gen, dev: ops.gaussian_blur(shape[1:], 1.6, 9, device=dev))
    for side in (32, 64, 48):
        b = any_size.sample(torch.rand(2, 1, side, side), g)
        assert b.y.shape == (2, 1, side, side)


@pytest.fixture
def workspace(tmp_path) -> Path:
    (tmp_path / "plugin.py").write_text(PLUGIN)
    write_pngs(tmp_path / "imgs", size=48)
    model = mp.PDNet.seeded(mp.PDNetConfig(depth=2), seed=0)
    mp.save_model(tmp_path / "model.safetensors", model,
                  metadata={"meta_config": {"inner_lr": 1e-3}})
    return tmp_path


def test_a_users_operator_from_a_file_through_the_command_line(workspace, capsys):
    """``--plugin`` registers the user's task; measure (no ground truth), adapt on the
    measurements alone, reconstruct, and evaluate it beside parametrised tasks."""
    w = workspace
    plugin = ["--plugin", str(w / "plugin.py")]
    main([*plugin, "measure", "--task", "my-blur", "--images", str(w / "imgs"),
          "--no-ground-truth", "--out", str(w / "y.safetensors")])
    main([*plugin, "adapt", "--model", str(w / "model.safetensors"), "--measurements",
          str(w / "y.safetensors"), "--steps", "2", "--no-progress", "--out",
          str(w / "adapted.safetensors")])
    _, meta = mp.load_model(w / "adapted.safetensors")
    assert meta["adapted"]["task"] == "my-blur" and meta["adapted"]["loss"] == "unsupervised"
    main([*plugin, "reconstruct", "--model", str(w / "adapted.safetensors"), "--measurements",
          str(w / "y.safetensors"), "--out", str(w / "rec")])
    assert len(list((w / "rec").glob("recon_*.png"))) == 2
    main([*plugin, "evaluate", "--model", str(w / "adapted.safetensors"), "--images",
          str(w / "imgs"), "--tasks", "my-blur,sr3,inpaint-0.7", "--adapt-steps", "1",
          "--json", str(w / "eval.json")])
    rows = json.loads((w / "eval.json").read_text())
    assert [r["task"] for r in rows] == ["my-blur", "sr3", "inpaint-0.7"]
    assert all(len(r["model"]) == 2 and len(r["adapted"]) == 2 for r in rows)


def test_a_broken_plugin_is_one_line(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("raise KeyError('oops')\n")
    with pytest.raises(SystemExit, match=r"--plugin .*bad.py failed: KeyError"):
        main(["--plugin", str(bad), "evaluate", "--model", "x"])
    with pytest.raises(SystemExit, match=r"none\.py does not exist"):
        main(["--plugin", str(tmp_path / "none.py"), "evaluate", "--model", "x"])
    (tmp_path / "ops.txt").write_text("")
    with pytest.raises(SystemExit, match=r"is not a \.py file"):
        main(["--plugin", str(tmp_path / "ops.txt"), "evaluate", "--model", "x"])


def test_the_table1_protocol_accepts_any_task():
    """The suite's configuration takes any task the registry resolves (its data protocol: the
    fastMRI knees for MRI tasks (peak "max"), BSDS500 / Set3C otherwise); an unknown name is
    refused."""
    from reproductions.table1 import Table1Config

    assert Table1Config(tasks=("sr3", "inpaint-0.7", "mri8")).tasks[0] == "sr3"
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        Table1Config(tasks=("nope",))


@pytest.mark.data
def test_the_table1_suite_end_to_end_on_a_users_operator(workspace, data_root):
    """The suite at smoke size on the task of a user's file (``--plugin``): baseline grid
    recorded, random init fine-tuned supervised and without ground truth, JSON and figures."""
    w = workspace
    cfg = w / "suite.json"
    cfg.write_text(json.dumps({"inits": ["random"], "baselines": ["tv"],
                               "training_tasks": False}))
    out = w / "suite_out.json"
    rmain(["--plugin", str(w / "plugin.py"), "table1", "--quick", "--tasks", "my-blur",
           "--config", str(cfg), "--data-root", str(data_root), "--out", str(out)])
    results = json.loads(out.read_text())
    row = results["tasks"]["my-blur"]
    tv = row["baselines"]["tv"]
    assert float(tv["hyper"]) in [float(v) for v in tv["grid"]] and "at_grid_edge" in tv
    assert {"random_ft_sup", "random_ft_unsup"} <= set(row["pdnet"])
    rmain(["report", "--results", str(out), "--figures", str(w / "fig"), "--markdown", ""])
    assert (w / "fig" / "finetune_curves_my-blur.png").is_file()
