"""Bad input through the real command line: a non-zero exit, one line naming what is wrong,
no traceback, and no file changed or left behind. Plus a fuzz test of the file readers and a
two-process test of the run-folder lock (docs/reliability.md lists what each test covers)."""

from __future__ import annotations

import json
import os
import random
import re
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from conftest import write_pngs
from metaprior import train
from metaprior.checkpoint import UnreadableFileError, load_model, save_model
from metaprior.cli import main
from metaprior.measurements import load_measurements, save_measurements
from metaprior.models import PDNet, PDNetConfig
from metaprior.outputs import RunFolderError, RunLock
from metaprior.tasks import get_task
from test_train import TINY, tiny_config


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    """A folder of valid and broken inputs, and a one-step run with a checkpoint."""
    root = tmp_path_factory.mktemp("inputs")
    write_pngs(root / "imgs", size=16)
    g = torch.Generator().manual_seed(0)
    model = PDNet(PDNetConfig(depth=2))
    save_model(root / "model.safetensors", model)
    batch = get_task("sr2").sample(torch.rand(2, 1, 16, 16, generator=g), g)
    save_measurements(root / "y.safetensors", batch)
    save_measurements(root / "y_named.safetensors", batch, names=["0.png", "1.png"],
                      images=root / "imgs")
    good = (root / "model.safetensors").read_bytes()
    (root / "empty.safetensors").write_bytes(b"")
    (root / "garbage.safetensors").write_bytes(b"not a safetensors file at all")
    (root / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    (root / "huge_header.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}")
    state = {k: v.detach() for k, v in model.state_dict().items()}
    meta = {"pdnet_config": json.dumps(model.config.__dict__)}
    save_file({k: v.double() for k, v in state.items()}, str(root / "float64.safetensors"), meta)
    save_file({k: v.to(torch.int32) for k, v in state.items()}, str(root / "int32.safetensors"),
              meta)
    save_file({k: v[..., :2].contiguous() if v.ndim else v for k, v in state.items()},
              str(root / "wrong_shape.safetensors"), meta)
    for name, field, value in (("depth_1e9", "depth", 10**9), ("width_1e9", "width", 10**9)):
        save_file(state, str(root / f"{name}.safetensors"),
                  {"pdnet_config": json.dumps({**model.config.__dict__, field: value})})
    save_file(state, str(root / "bad_config.safetensors"),
              {"pdnet_config": json.dumps({**model.config.__dict__, "depth": "2"})})
    y = batch.y.contiguous()
    save_file({"x": batch.x}, str(root / "no_y.safetensors"),
              {"task": "sr2", "image_shape": "[2, 1, 16, 16]"})
    save_file({"y": y}, str(root / "string_shape.safetensors"),
              {"task": "sr2", "image_shape": "\"16x16\""})
    save_file({"y": y}, str(root / "wrong_y.safetensors"),
              {"task": "mri4", "image_shape": "[2, 1, 16, 16]"})
    shape = {"task": "sr2", "image_shape": "[2, 1, 16, 16]"}
    for name, tensors in {"y_int32": {"y": (y * 100).to(torch.int32)},
                          "y_float64": {"y": y.double()},
                          "y_nan": {"y": y.clone().fill_(float("nan"))},
                          "x_nan": {"y": y, "x": torch.full_like(batch.x, float("nan"))}
                          }.items():
        save_file(tensors, str(root / f"{name}.safetensors"), shape)
    save_measurements(root / "wide.safetensors",
                      get_task("sr2").sample(torch.rand(1, 1, 16, 24, generator=g), g))
    save_file({"y": y}, str(root / "string_shape_named.safetensors"),
              {"task": "sr2", "image_shape": "\"abc\"", "names": json.dumps(["a.png"])})
    save_file({"y": y}, str(root / "dup_names.safetensors"),
              {**shape, "names": json.dumps(["a.png", "a.png"])})
    nan_state = {k: v.clone().fill_(float("nan")) if k == "layers.0.weight" else v
                 for k, v in state.items()}
    save_file(nan_state, str(root / "nan_model.safetensors"), meta)
    for name, data in {"corrupt": b"\x89PNG\r\n\x1a\n broken", "zero": b""}.items():
        folder = root / f"{name}_imgs"
        folder.mkdir()
        (folder / "a.png").write_bytes(data)
    (root / "a_file").write_text("not a folder")
    (root / "tiny_imgs").mkdir()
    Image.new("L", (1, 1), 128).save(root / "tiny_imgs" / "dot.png")
    (root / "empty_imgs").mkdir()
    write_pngs(root / "odd_imgs", n=1, size=16)  # a whole image sr2 cannot measure, second
    (root / "odd_imgs" / "0.png").rename(root / "odd_imgs" / "a.png")
    Image.new("L", (16, 15), 90).save(root / "odd_imgs" / "b.png")
    (root / "rgba_imgs").mkdir()  # a transparent corner: what lies under it is undefined
    rgba = Image.new("RGBA", (16, 16), (200, 100, 50, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    rgba.save(root / "rgba_imgs" / "logo.png")
    (root / "demo_out").mkdir()
    (root / "demo_out" / "demo_sr2.png").write_bytes(b"an earlier figure")
    (root / "cfg").mkdir()
    for name, values in {"bool_str": {"model": {"detach_step_sizes": "false"}},
                         "bool_depth": {"model": {"depth": True}},
                         "tasks_str": {"meta": {"tasks": "denoise"}},
                         "lr_str": {"optim": {"lr": "0.001"}},
                         "section": {"model": [1, 2]},
                         "adapt_section": {"nope": {}},
                         "adapt_lr_str": {"adapt": {"lr": "1e-3"}},
                         "adapt_key": {"data": {"patch": 3}},
                         "suite_steps": {"steps": 0}}.items():
        (root / "cfg" / f"{name}.json").write_text(json.dumps(values))
    (root / "cfg" / "binary.json").write_bytes(b"\xff\xfe{}")
    (root / "report.json").write_text(json.dumps({"tasks": {"sr2": {"pdnet": 1}}}))
    (root / "not_suite.json").write_text(json.dumps([1, 2]))
    train.meta_train(tiny_config(root / "run", steps=1), progress=False, log=lambda *_: None)
    return root


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file with its size and mtime (run folders' ``.lock`` files excepted: taking the
    lock rewrites the holder's pid)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


M, Y, IMGS = "{root}/model.safetensors", "{root}/y.safetensors", "{root}/imgs"
ADAPT = ["adapt", "--model", M, "--measurements", Y, "--out", "{root}/new/a.safetensors"]


def adapt_from(model: str) -> list[str]:
    """``adapt`` of measurement file Y with ``model``."""
    return ["adapt", "--model", model, "--measurements", Y, "--out", "{root}/o.safetensors"]


def reconstruct(model: str = M, measurements: str = Y) -> list[str]:
    return ["reconstruct", "--model", model, "--measurements", measurements, "--out",
            "{root}/rec"]
MT = ["meta-train", *TINY, "--steps", "1", "--no-progress"]
CFG = ["meta-train", "--dataset", "demo", "--steps", "1", "--no-progress", "--config"]

# (command line, a fragment the one-line message must contain)
BAD_INPUTS = [
    (["reconstruct", "--model", M, "--measurements", Y, "--out", "{root}/r", "--device", "foo"],
     "--device foo is not a torch device"),
    (["reconstruct", "--model", M, "--measurements", Y, "--out", "{root}/r", "--device", "mps"],
     "metaprior runs on cpu or cuda"),
    (["evaluate", "--model", M, "--images", IMGS, "--tasks", ""], "--tasks is empty"),
    (["evaluate", "--model", M, "--images", "{root}/nope"], "/nope: no such folder"),
    (["measure", "--task", "mri4", "--images", "{root}/tiny_imgs", "--out",
      "{root}/y1.safetensors"],
     "dot.png is 1x1 pixels: images must be at least 8x8"),
    ([*MT, "--inner-batch", "10" + "0" * 12, "--out", "{root}/r1"],
     "data: inner_batch 10000000000000 patches of 32x32 need 38146973 GiB for their pixels"),
    (["adapt", "--model", M, "--images", IMGS, "--patch-size", "16", "--batch-size",
      "10" + "0" * 12, "--out", "{root}/new/a.safetensors"],
     "--batch-size 10000000000000 patches of 16x16 need 9536743 GiB for their pixels alone"),
    (["evaluate", "--model", M, "--images", IMGS, "--data-root", "{root}"],
     "--data-root applies to --images set3c"),
    (["--plugin", "{root}/nope.py", "evaluate", "--model", M, "--images", IMGS], "does not exist"),
    ([*MT, "--architecture", "hqs", "--depth", "5", "--out", "{root}/r"],
     "--depth applies to --architecture pdnet"),
    ([*MT, "--iterations", "3", "--out", "{root}/r"], "--iterations applies to --architecture hqs"),
    (["adapt", "--model", M, "--measurements", Y, "--steps", "0", "--out", "{root}/o.safetensors"],
     "--steps must be >= 1"),
    (["adapt", "--model", M, "--measurements", Y, "--steps", "-3", "--out",
      "{root}/o.safetensors"], "--steps must be >= 1"),
    ([*ADAPT, "--lr", "nan"], "error: --lr must be a finite number > 0, got nan"),
    ([*ADAPT, "--lr", "-1"], "error: --lr must be a finite number"),
    ([*MT, "--gamma", "nan", "--out", "{root}/r1"],
     "error: --gamma must be a finite number > 0, got nan"),
    ([*MT, "--step-safety", "2", "--out", "{root}/r1"], "error: --step-safety must be in (0, 1]"),
    (["adapt", "--model", M, "--measurements", Y, "--out", "{root}/imgs"], "must end in"),
    (["adapt", "--model", M, "--measurements", Y, "--out", "{root}/a_file/m.safetensors"],
     "is an existing file"),
    (["adapt", "--model", M, "--images", IMGS, "--task", "sr2", "--batch-size", "0", "--out",
      "{root}/o.safetensors"], "--batch-size must be >= 1"),
    (adapt_from("{root}/empty.safetensors"), "not a readable .safetensors"),
    (adapt_from("{root}/garbage.safetensors"), "not a readable .safetensors"),
    (adapt_from("{root}/truncated.safetensors"), "safetensors"),
    (adapt_from("{root}/huge_header.safetensors"), "not a readable .safetensors"),
    (reconstruct("{root}/float64.safetensors"), "holds float32"),
    (reconstruct("{root}/int32.safetensors"), "holds float32"),
    (reconstruct("{root}/wrong_shape.safetensors"), "wrong_shape.safetensors: tensor"),
    (reconstruct("{root}/bad_config.safetensors"), "'pdnet_config' metadata is invalid"),
    (reconstruct(M, "{root}/no_y.safetensors"), "holds no measurements 'y'"),
    (reconstruct(M, "{root}/string_shape.safetensors"), "'image_shape' metadata must be"),
    (reconstruct(M, "{root}/string_shape_named.safetensors"), "'image_shape' metadata must be"),
    (reconstruct(M, "{root}/wrong_y.safetensors"), "measures"),
    (reconstruct(M, "{root}/garbage.safetensors"), "not a readable .safetensors"),
    (["reconstruct", "--model", M, "--measurements", Y, "--out", "{root}/a_file"],
     "is an existing file"),
    # outputs never alias inputs
    (["adapt", "--model", M, "--measurements", Y, "--out", M], "is the input --model"),
    (["adapt", "--model", "{root}/run", "--measurements", Y, "--out",
      "{root}/run/model.safetensors"], "is the input --model"),
    (["adapt", "--model", M, "--measurements", Y, "--out", Y], "is the input --measurements"),
    (["reconstruct", "--model", M, "--measurements", "{root}/y_named.safetensors", "--out",
      IMGS], "the folder of the measured images"),
    (["reconstruct", "--model", M, "--measurements", "{root}/y_named.safetensors", "--out",
      "{root}/imgs/rec"], "the folder of the measured images"),
    (["measure", "--task", "sr2", "--images", "{root}/corrupt_imgs", "--out",
      "{root}/m.safetensors"], "cannot be read"),
    (["measure", "--task", "sr2", "--images", "{root}/zero_imgs", "--out",
      "{root}/m.safetensors"], "cannot be read"),
    (["measure", "--task", "sr2", "--images", IMGS, "--out", "{root}/imgs"], "must end in"),
    (["measure", "--task", "nope", "--images", IMGS, "--out", "{root}/m.safetensors"],
     "unknown task"),
    (["measure", "--task", "sr2", "--images", "{root}/empty_imgs", "--out",
      "{root}/m.safetensors"], "holds no images (png, jpg, tif, bmp): add some or choose"),
    (["adapt", "--model", M, "--images", "{root}/empty_imgs", "--task", "sr2", "--out",
      "{root}/o.safetensors"], "holds no images (png, jpg, tif, bmp): add some or choose"),
    (["evaluate", "--model", M, "--images", "{root}/empty_imgs", "--tasks", "sr2"],
     "--images {root}/empty_imgs holds no images (png, jpg, tif, bmp): add some or choose"),
    (["evaluate", "--model", M, "--images", "{root}/tiny_imgs", "--tasks", "sr2"],
     "dot.png is 1x1 pixels: images must be at least 8x8"),
    (["evaluate", "--model", M, "--images", "{root}/corrupt_imgs", "--tasks", "sr2"],
     "cannot be read"),
    (["demo", "--out", "{root}/demo_out"], "holds an earlier demo"),
    (reconstruct("{root}/depth_1e9.safetensors"), "says depth 1000000000, the file holds 2"),
    (reconstruct("{root}/width_1e9.safetensors"), "(width 1000000000, kernel_size 3)"),
    (["evaluate", "--model", M, "--images", IMGS, "--tasks", "sr2", "--adapt-steps", "-1"],
     "--adapt-steps must be >= 0"),
    (["evaluate", "--model", M, "--images", IMGS, "--tasks", "sr2", "--json", "{root}/imgs"],
     "--json"),
    (["linear", "--outer-steps", "0", "--out", "{root}/lin"], "--outer-steps must be >= 1"),
    (["linear", "--out", "{root}/a_file"], "is an existing file"),
    (["demo", "--out", "{root}/a_file"], "is an existing file"),
    (["report", "--results", "{root}/report.json", "--figures", "{root}/fig", "--markdown",
      ""], "lacks what the report needs"),
    (["report", "--results", "{root}/not_suite.json", "--figures", "{root}/fig"],
     "is not the JSON of"),
    ([*CFG, "{root}/cfg/bool_str.json", "--out", "{root}/r1"],
     "model.detach_step_sizes must be of type bool"),
    ([*CFG, "{root}/cfg/bool_depth.json", "--out", "{root}/r1"],
     "model.depth must be of type int"),
    ([*CFG, "{root}/cfg/tasks_str.json", "--out", "{root}/r1"],
     "meta.tasks must be a list of names"),
    ([*CFG, "{root}/cfg/lr_str.json", "--out", "{root}/r1"],
     "optim.lr must be of type float"),
    ([*CFG, "{root}/cfg/section.json", "--out", "{root}/r1"],
     "section 'model' must be an object"),
    ([*CFG, "{root}/cfg", "--out", "{root}/r1"], "cfg is a folder: pass a JSON file to --config"),
    ([*CFG, "{root}/cfg/binary.json", "--out", "{root}/r1"],
     "binary.json is not UTF-8 text: pass a JSON file to --config"),
    ([*MT, "--inner-batch", "0", "--out", "{root}/r1"], "error: --inner-batch must be >= 1"),
    ([*MT, "--patch-size", "0", "--out", "{root}/r1"], "error: --patch-size must be >= 1"),
    (["meta-train", *TINY, "--steps", "0", "--out", "{root}/r1"], "steps must be >= 1"),
    (["meta-train", *TINY, "--steps", "1", "--lr", "inf", "--out", "{root}/r1"],
     "lr must be a finite number"),
    ([*MT, "--dataset", "bsds", "--data-root", "{root}/absent", "--out", "{root}/r1"],
     "absent"),
    ([*MT, "--out", "{root}/run"], "already holds a run"),
    ([*MT, "--out", "{root}/run", "--resume", "--overwrite"], "give one of them"),
    ([*MT, "--out", "{root}/run", "--resume", "--depth", "3"], "whose model.depth is 2"),
    ([*MT, "--out", "{root}/a_file"], "is an existing file"),
    # every command reads its options from dataclasses: flags and one --config file
    ([*ADAPT, "--config", "{root}/cfg/adapt_section.json"], "unknown section(s) ['nope']"),
    ([*ADAPT, "--config", "{root}/cfg/adapt_lr_str.json"], "adapt.lr must be of type float"),
    ([*ADAPT, "--config", "{root}/cfg/adapt_key.json"], "unknown key(s) ['patch']"),
    ([*ADAPT, "--loss", "sup"], "loss must be one of"),
    (["measure", "--images", IMGS, "--out", "{root}/m.safetensors"], "--task is required"),
    (["table1", "--config", "{root}/cfg/suite_steps.json", "--out", "{root}/t.json"],
     "steps must be >= 1"),
    (["table1", "--steps", "0", "--out", "{root}/t.json"], "steps must be >= 1"),
    (["evaluate", "--images", IMGS], "--model is required"),
    (["linear", "--preset", "closed", "--out", "{root}/lin"], "--preset must be paper or exact"),
    # measurement files and model files hold finite numbers of the dtypes they should
    (reconstruct(measurements="{root}/y_int32.safetensors"), "'y' is torch.int32: a "),
    (["adapt", "--model", M, "--measurements", "{root}/y_float64.safetensors", "--out",
      "{root}/o.safetensors"], "'y' is torch.float64: a "),
    (reconstruct(measurements="{root}/y_nan.safetensors"), "non-finite values in 'y'"),
    (["adapt", "--model", M, "--measurements", "{root}/x_nan.safetensors", "--out",
      "{root}/o.safetensors"], "non-finite values in 'x'"),
    (adapt_from("{root}/nan_model.safetensors"), "non-finite weights (layers.0.weight)"),
    (reconstruct(model="{root}/nan_model.safetensors"), "non-finite weights"),
    # options name themselves, and what they are checked against
    ([*ADAPT, "--lr-search", "{root}/empty_imgs"], "error: --lr-search "),
    (["adapt", "--model", M, "--images", IMGS, "--task", "sr2", "--patch-size", "3", "--out",
      "{root}/o.safetensors"], "--patch-size 3 does not suit task 'sr2'"),
    ([*ADAPT, "--lr-search", "{root}/typo.safetensors"],
     "is neither a folder of pictures nor a measurement file"),
    ([*ADAPT, "--lr-search", "{root}/wide.safetensors"],
     "--lr-search {root}/wide.safetensors holds 16x24 images: the label-free lr search"),
    (["adapt", "--model", M, "--images", IMGS, "--task", "sr2", "--eval-measurements", Y,
      "--lr-search", Y, "--out", "{root}/o.safetensors"],
     "is the --eval-measurements scored after adaptation"),
    (["adapt", "--model", M, "--images", IMGS, "--task", "mri4", "--eval-measurements", Y,
      "--out", "{root}/o.safetensors"], "holds measurements of task 'sr2'"),
    (reconstruct(measurements="{root}/dup_names.safetensors"), "'names' metadata must be 2 "
                                                              "distinct plain file names"),
    (["reconstruct", "--model", M, "--measurements", Y, "--out", "{root}/recon.png"],
     "--out {root}/recon.png names an image: reconstruct writes a folder"),
    (["reconstruct", "--model", M, "--measurements", Y, "--out", "{root}/r", "--device",
      "cpu:3"], "--device cpu:3: the CPU is cpu"),
    ([*MT, "--outer-theta-weight", "nan", "--out", "{root}/r1"],
     "error: --outer-theta-weight must be"),
    ([*MT, "--outer-theta-weight", "inf", "--out", "{root}/r1"],
     "error: --outer-theta-weight must be"),
    ([*MT, "--out", ""], "--out is empty"),
    ([*MT, "--seed", "99999999999999999999999", "--out", "{root}/r1"],
     "error: --seed must be an integer in [-2^63, 2^63)"),
    (["measure", "--task", "sr2", "--images", IMGS, "--seed", "99999999999999999999999",
      "--out", "{root}/m.safetensors"], "error: --seed must be an integer in [-2^63, 2^63)"),
    ([*MT, "--lam-init", "-1", "--out", "{root}/r1"], "error: --lam-init must be >= 0"),
    ([*MT, "--patch-size", "16", "--tasks", "deblur", "--out", "{root}/r1"],
     "--patch-size 16 does not suit task 'deblur' (image size (16, 16) is smaller than the blur"),
    ([*MT, "--cg-iters", "5", "--out", "{root}/r1"],
     "--cg-iters applies to --hypergradient implicit only"),
    ([*MT, "--inner-lr-lr", "0.5", "--out", "{root}/r1"],
     "--inner-lr-lr applies to --learn-inner-lr only"),
    ([*MT, "--hypergradient", "implicit", "--prox-lambda", "1", "--cg-tol", "nan", "--out",
      "{root}/r1"], "error: --cg-tol must be a finite number > 0"),
    ([*MT, "--tasks", "denoise", "--tasks-per-step", "5", "--out", "{root}/r1"],
     "error: --tasks-per-step must be <= the 1 task(s)"),
    (["adapt", "--model", "{root}/empty_imgs", "--measurements", Y, "--out",
      "{root}/o.safetensors"], "holds no model"),
    (reconstruct(measurements="{root}/empty_imgs"), "is a folder, not a measurement file"),
    ([*ADAPT, "--seed", "5"], "--seed applies to --images or a --lr-search folder"),
    (["adapt", "--model", M, "--measurements", Y, "--out", ""], "--out is empty"),
    (["demo", "--size", "100000", "--out", "{root}/demo_new"], "--size must be"),
    # a check is named by a flag only where that flag set the value
    (["demo", "--adapt-task", "deblur-1.6-k0", "--size", "64", "--out", "{root}/demo_new"],
     "error: deblur: size must be >= 1, got 0"),
    ([*MT, "--architecture", "hqs", "--iterations", "8", "--init-iters", "20000", "--out",
      "{root}/r1"], "error: --init-iters must be in [0, 10000], got 20000"),
    (["demo", "--adapt-task", "sr3", "--out", "{root}/demo_new"],
     "--size 128 is not a multiple of --adapt-task sr3's factor 3: pass --size 126"),
    # parametrised task names: finite, possible values, named in the task's own words
    (["measure", "--task", "denoise-1e400", "--images", IMGS, "--out", "{root}/m.safetensors"],
     "denoise: sigma must be a finite number > 0, got inf"),
    (["measure", "--task", "mri9999", "--images", IMGS, "--out", "{root}/m.safetensors"],
     "mri: acceleration 9999 keeps fewer k-space columns than the fully sampled centre"),
    (["measure", "--task", "sr2", "--images", "{root}/rgba_imgs", "--out",
      "{root}/m.safetensors"], "logo.png has transparent pixels"),
]


@pytest.mark.parametrize("argv,fragment", BAD_INPUTS,
                         ids=[f"{i:02d}-{a[0]}" for i, (a, _) in enumerate(BAD_INPUTS)])
def test_bad_input_gives_one_line_and_changes_nothing(sandbox, argv, fragment):
    from reproductions.__main__ import build_parser as reproduction_parser
    from reproductions.__main__ import main as reproduce

    before = _snapshot(sandbox)
    commands = reproduction_parser()._subparsers._group_actions[0].choices
    run = reproduce if argv[0] in commands else main  # the paper's commands, or the product's
    with pytest.raises(SystemExit) as exc:
        run([a.format(root=sandbox) for a in argv])
    message = str(exc.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    assert fragment.format(root=sandbox) in message, message
    assert _snapshot(sandbox) == before, "a file was changed or left behind"


def test_bad_input_through_the_installed_entry_point(sandbox):
    """The same through ``python -m metaprior`` in a fresh process: exit status 1, exactly one
    line on stderr, no traceback."""
    picked = [c for c in BAD_INPUTS if c[1] in ("lr must be a finite number",
                                               "model.detach_step_sizes must be of type bool")]
    picked.append(next(c for c in BAD_INPUTS if "garbage" in c[0][2]))
    for argv, fragment in picked:
        before = _snapshot(sandbox)
        proc = subprocess.run([sys.executable, "-m", "metaprior",
                               *[a.format(root=sandbox) for a in argv]],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in proc.stderr
        assert _snapshot(sandbox) == before


def test_an_image_over_pil_s_pixel_limit_is_one_line(sandbox, monkeypatch, tmp_path):
    """PIL refuses images over twice ``Image.MAX_IMAGE_PIXELS`` (a decompression bomb) with
    an error of its own type: one line naming the file, as for any unreadable image."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # the 16×16 pictures have 256
    with pytest.raises(SystemExit, match=r"error: image .*0\.png cannot be read .*exceeds"):
        main(["measure", "--task", "sr2", "--images", str(sandbox / "imgs"), "--out",
              str(tmp_path / "y.safetensors")])
    assert not any(tmp_path.iterdir())


def test_no_non_finite_model_is_written(tmp_path):
    model = PDNet(PDNetConfig(depth=2))
    params = {k: torch.full_like(v, float("nan")) for k, v in model.named_parameters()}
    with pytest.raises(FloatingPointError, match="not finite"):
        save_model(tmp_path / "m.safetensors", model, params)
    assert not any(tmp_path.iterdir())


def test_sixteen_bit_and_float_images_are_read_at_their_scale(tmp_path):
    from metaprior.data import load_image

    g = torch.Generator().manual_seed(0)
    raw = (torch.rand(16, 16, generator=g) * 0.8 * 65535).numpy().astype("uint16")
    Image.fromarray(raw).save(tmp_path / "a16.png")
    assert float(load_image(tmp_path / "a16.png").mean()) == pytest.approx(
        raw.mean() / 65535, rel=1e-5)
    Image.fromarray(raw.astype("float32") / 65535).save(tmp_path / "f.tif")
    assert float(load_image(tmp_path / "f.tif").mean()) == pytest.approx(raw.mean() / 65535,
                                                                         rel=1e-5)
    Image.fromarray(raw.astype("float32")).save(tmp_path / "big.tif")
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        load_image(tmp_path / "big.tif")


def _png48(path: Path, pixels) -> None:
    """A 16-bit-a-channel RGB PNG (Pillow writes none): signature, IHDR, one IDAT, IEND."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    h, w, _ = pixels.shape
    rows = b"".join(b"\x00" + pixels[i].astype(">u2").tobytes() for i in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2,
                                                                       0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_sixteen_bit_colour_is_kept_or_refused_and_exif_orientation_applied(tmp_path,
                                                                             monkeypatch):
    """A 16-bit RGB TIFF is read at its 16 bits (Pillow would keep 8); a 16-bit RGB PNG, which
    Pillow reads at 8 bits, is refused with the fix; a JPEG is read the way up its EXIF
    orientation says, as viewers show it."""
    import numpy as np
    import tifffile

    from metaprior.data import load_image

    rgb = np.random.default_rng(0).integers(0, 65536, (8, 12, 3)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb, photometric="rgb")
    image = load_image(tmp_path / "rgb16.tif", gray=False)
    assert torch.allclose(image, torch.from_numpy(rgb / 65535).permute(2, 0, 1).float())
    tifffile.imwrite(tmp_path / "deflate.tif", rgb, photometric="rgb", compression="zlib")
    assert torch.equal(load_image(tmp_path / "deflate.tif", gray=False), image)

    def needs_codecs(*args, **kwargs):  # what tifffile says of LZW without imagecodecs
        raise ValueError("<COMPRESSION.LZW: 5> requires the 'imagecodecs' package")
    monkeypatch.setattr(tifffile, "imread", needs_codecs)
    with pytest.raises(ValueError, match=r"rgb16\.tif: its 16-bit colour cannot be decoded "
                                         r".*imagecodecs"):
        load_image(tmp_path / "rgb16.tif", gray=False)
    monkeypatch.undo()
    _png48(tmp_path / "rgb16.png", rgb)
    with pytest.raises(ValueError, match=r"rgb16\.png is 16-bit colour.*16-bit TIFF"):
        load_image(tmp_path / "rgb16.png", gray=False)
    portrait = Image.new("L", (24, 32), 0)  # stored 24 wide, 32 high
    portrait.paste(255, (0, 0, 24, 4))  # a bright band along the stored top
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    portrait.save(tmp_path / "turned.jpg", exif=exif, quality=95)
    turned = load_image(tmp_path / "turned.jpg")
    assert turned.shape == (1, 24, 32)  # shown 32 wide, 24 high
    assert turned[0, :, -4:].mean() > 0.9 and turned[0, :, :4].mean() < 0.1  # band on the right


def test_reconstruct_replaces_its_own_images_only_and_warns_on_another_task(sandbox, tmp_path,
                                                                            capsys):
    """A measurement file without input names gives recon_000.png, ...: those are replaced,
    an earlier, larger batch's others and the user's files are kept."""
    out = tmp_path / "rec"
    out.mkdir()
    for i in range(5):
        (out / f"recon_{i:03d}.png").write_bytes(b"old")
    (out / "notes.txt").write_text("kept")
    adapted = tmp_path / "adapted.safetensors"
    model, _meta = load_model(sandbox / "model.safetensors")
    save_model(adapted, model, metadata={"adapted": {"task": "mri4"}})
    main(["reconstruct", "--model", str(adapted), "--measurements",
          str(sandbox / "y.safetensors"), "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", *(f"recon_{i:03d}.png"
                                                                   for i in range(5))]
    assert [(out / f"recon_{i:03d}.png").read_bytes() == b"old" for i in range(5)] == [
        False, False, True, True, True]
    assert "adapted to task 'mri4'" in capsys.readouterr().err


def test_fuzzed_files_are_read_or_refused_in_one_line(sandbox, tmp_path):
    """Random truncations and byte flips of a model file and a measurement file: each read
    either succeeds or raises a ValueError (never another exception, never a hang: 120 fixed
    cases)."""
    rnd = random.Random(0)
    sources = {"model": (sandbox / "model.safetensors").read_bytes(),
               "y": (sandbox / "y.safetensors").read_bytes()}
    outcomes = {"ok": 0, "refused": 0}
    for i in range(120):
        kind = "model" if i % 2 else "y"
        data = bytearray(sources[kind])
        if rnd.random() < 0.4:
            data = data[: rnd.randrange(len(data))]
        else:
            for _ in range(rnd.randint(1, 8)):
                pos = rnd.randrange(min(len(data), 400) if rnd.random() < 0.7 else len(data))
                data[pos] = rnd.randrange(256)
        path = tmp_path / f"{kind}{i}.safetensors"
        path.write_bytes(bytes(data))
        try:
            if kind == "model":
                load_model(path)
            else:
                load_measurements(path)
            outcomes["ok"] += 1
        except ValueError as e:
            assert "\n" not in str(e).strip() or isinstance(e, UnreadableFileError)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 30 and sum(outcomes.values()) == 120


def test_a_run_folder_is_locked_against_a_second_process(tmp_path):
    """A second writer (another process holding the lock) makes meta-train stop at once with
    one line; after the holder exits, the folder is free again (no stale lock)."""
    folder = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from metaprior.outputs import RunLock\n"
         f"with RunLock({str(folder)!r}):\n    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SystemExit, match=r"in use by another process \(pid \d+\)"):
            main([*MT, "--out", str(folder)])
        assert not (folder / "config.json").exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    with RunLock(folder):  # released by the holder's exit
        pass


def test_lock_is_exclusive_within_a_process_too(tmp_path):
    with RunLock(tmp_path), pytest.raises(RunFolderError, match="in use"):
        with RunLock(tmp_path):
            pass


def test_overwrite_keeps_the_earlier_run_until_the_new_one_has_loaded(tmp_path):
    """A failing start with --overwrite (unknown task) leaves the earlier run intact; a
    kill's orphaned temporary checkpoint folder is removed by the next run."""
    cfg = tiny_config(tmp_path / "run", steps=2)
    train.meta_train(cfg, progress=False, log=lambda *_: None)
    before = _snapshot(tmp_path / "run")
    orphan = tmp_path / "run" / "checkpoints" / ".step_0000004.tmp-99999"
    orphan.mkdir()
    bad = replace(cfg, data=replace(cfg.data, dataset="demo"), meta=replace(
        cfg.meta, tasks=("nope",)))
    with pytest.raises(ValueError, match="unknown task"):
        train.meta_train(bad, progress=False, log=lambda *_: None, overwrite=True)
    assert {k: v for k, v in _snapshot(tmp_path / "run").items() if ".tmp-" not in k} == before
    assert not orphan.exists()


def test_resume_tolerates_a_torn_last_log_line(tmp_path):
    cfg = tiny_config(tmp_path / "run", steps=2)
    train.meta_train(cfg, progress=False, log=lambda *_: None)
    log = tmp_path / "run" / "log.jsonl"
    log.write_text(log.read_text() + '{"step": 2, "outer_lo')
    train.meta_train(cfg, resume=True, steps=3, progress=False, log=lambda *_: None)
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == [0, 1, 2]
    lines = log.read_text().splitlines()
    log.write_text("\n".join(["garbage", *lines]) + "\n")
    with pytest.raises(ValueError, match="line 1 is not JSON"):
        train.meta_train(cfg, resume=True, steps=4, progress=False, log=lambda *_: None)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_read_only_output_folder_is_refused_before_any_work(sandbox, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(SystemExit, match="not writable"):
            main([a.format(root=sandbox) for a in ADAPT[:-1]] + [str(ro / "a.safetensors")])
    finally:
        ro.chmod(0o755)


# --- nothing lost: outputs never delete or alias what they did not write -------------------

def _named_measurements(tmp_path: Path, names=("camera", "moon")) -> tuple[Path, Path]:
    """A folder of 16 px PNGs called ``names`` and its ``measure``d sr2 file."""
    imgs = tmp_path / "named_imgs"
    write_pngs(imgs, n=len(names), size=16)
    for i, name in enumerate(names):
        (imgs / f"{i}.png").rename(imgs / f"{name}.png")
    y = tmp_path / "named_y.safetensors"
    main(["measure", "--task", "sr2", "--images", str(imgs), "--out", str(y)])
    return imgs, y


def test_reconstruct_deletes_nothing_it_did_not_write_and_names_images_after_inputs(
        sandbox, tmp_path):
    _, y = _named_measurements(tmp_path)
    out = tmp_path / "rec"
    out.mkdir()
    (out / "recon_final.png").write_bytes(b"mine")
    (out / "recon_004.png").write_bytes(b"mine too")
    main(["reconstruct", "--model", str(sandbox / "model.safetensors"), "--measurements",
          str(y), "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == [
        "recon_004.png", "recon_camera.png", "recon_final.png", "recon_moon.png"]
    assert (out / "recon_final.png").read_bytes() == b"mine"
    assert Image.open(out / "recon_camera.png").size == (16, 16)


def test_reconstruct_figure_shows_the_inputs_beside_the_reconstruction(sandbox, tmp_path):
    """``reconstruct --figure`` adds ``figure.png``: one row per image, the columns y, A^T y,
    the reconstruction and (where the file holds it) the ground truth, PSNRs under the
    estimates; RGB pictures stay in colour. Without ``--figure`` no figure is written."""
    model = str(sandbox / "model.safetensors")
    imgs, y = _named_measurements(tmp_path)
    main(["reconstruct", "--model", model, "--measurements", str(y), "--out",
          str(tmp_path / "plain")])
    assert not (tmp_path / "plain" / "figure.png").exists()
    main(["reconstruct", "--model", model, "--measurements", str(y), "--out",
          str(tmp_path / "fig"), "--figure"])
    with Image.open(tmp_path / "fig" / "figure.png") as im:  # 2 rows, 4 columns
        assert im.size == (4 * 160, 18 + 2 * (160 + 16)) and im.mode == "L"
    bare = tmp_path / "bare.safetensors"
    main(["measure", "--task", "inpaint", "--images", str(imgs), "--color", "--no-ground-truth",
          "--out", str(bare)])
    main(["reconstruct", "--model", model, "--measurements", str(bare), "--out",
          str(tmp_path / "rgb"), "--figure"])
    with Image.open(tmp_path / "rgb" / "figure.png") as im:  # no ground truth: 3 columns
        assert im.size == (3 * 160, 18 + 2 * (160 + 16)) and im.mode == "RGB"


def test_reconstruct_without_figure_names_an_earlier_figure_it_leaves(sandbox, tmp_path, capsys):
    """A rerun without ``--figure`` keeps an earlier run's ``figure.png`` (it deletes nothing it
    did not write this time) and says that the figure shows the earlier reconstructions."""
    model = str(sandbox / "model.safetensors")
    _, y = _named_measurements(tmp_path)
    out = tmp_path / "rec"
    main(["reconstruct", "--model", model, "--measurements", str(y), "--out", str(out),
          "--figure"])
    before = (out / "figure.png").read_bytes()
    capsys.readouterr()
    main(["reconstruct", "--model", model, "--measurements", str(y), "--out", str(out)])
    err = capsys.readouterr().err
    assert (out / "figure.png").read_bytes() == before
    assert f"{out / 'figure.png'} is an earlier run's figure" in err and "--figure" in err


def test_images_with_an_alpha_channel_are_read_when_opaque(tmp_path):
    """An opaque RGBA or LA picture reads as its colour channels; a transparent one is refused
    (BAD_INPUTS), as is a palette picture with a transparent colour."""
    from metaprior.data.datasets import load_image

    Image.new("RGBA", (8, 8), (255, 0, 0, 255)).save(tmp_path / "rgba.png")
    Image.new("LA", (8, 8), (90, 255)).save(tmp_path / "la.png")
    assert torch.equal(load_image(tmp_path / "rgba.png", gray=False)[:, 0, 0],
                       torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(load_image(tmp_path / "la.png")[0, 0, 0], torch.tensor(90 / 255))
    corner = Image.new("RGBA", (8, 8), (255, 0, 0, 255))
    corner.putpixel((0, 0), (0, 0, 0, 0))
    palette = corner.convert("P")
    palette.save(tmp_path / "p.png", transparency=palette.getpixel((0, 0)))
    with pytest.raises(ValueError, match=r"p\.png has transparent pixels"):
        load_image(tmp_path / "p.png")


def test_two_adapt_runs_on_one_out_are_refused_by_the_run_folder_lock(sandbox, tmp_path):
    """``adapt --ckpt-every`` locks ``OUT.run/`` with the lock meta-train uses: a second run
    on the same ``--out`` stops at once, naming the holder, and writes nothing."""
    folder = tmp_path / "a.run"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from metaprior.outputs import RunLock\n"
         f"with RunLock({str(folder)!r}):\n    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SystemExit, match=r"in use by another process \(pid \d+\)"):
            main(["adapt", "--model", str(sandbox / "model.safetensors"), "--measurements",
                  str(sandbox / "y.safetensors"), "--steps", "2", "--ckpt-every", "1",
                  "--no-progress", "--out", str(tmp_path / "a.safetensors")])
        assert sorted(p.name for p in folder.iterdir()) == [".lock"]
        assert not (tmp_path / "a.safetensors").exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def test_reconstruct_into_the_measured_images_folder_is_refused(sandbox, tmp_path):
    imgs, y = _named_measurements(tmp_path)
    before = _snapshot(tmp_path)
    for out in (imgs, imgs / "sub"):
        with pytest.raises(SystemExit, match=r"--out .* the measured images"):
            main(["reconstruct", "--model", str(sandbox / "model.safetensors"),
                  "--measurements", str(y), "--out", str(out)])
    assert _snapshot(tmp_path) == before and not (imgs / "sub").exists()


# --- nothing silently wrong -----------------------------------------------------------------

def test_resume_only_extends_a_run(tmp_path):
    """``--resume --steps N`` below the checkpoint's step, or below the run's own total (its
    lr schedule spans that total), is refused naming --steps; nothing in the run changes."""
    out = tmp_path / "run"
    base = ["meta-train", *TINY, "--no-progress", "--ckpt-every", "2", "--val-every", "0",
            "--out", str(out)]
    main([*base, "--steps", "4"])
    (out / "checkpoints" / "latest").write_text("step_0000002")  # as if killed at step 3
    before = _snapshot(out)
    for steps in ("1", "3"):
        with pytest.raises(SystemExit, match=rf"--steps {steps} .*--resume only extends"):
            main([*base, "--resume", "--steps", steps])
        assert _snapshot(out) == before
    main([*base, "--resume", "--steps", "4"])
    assert json.loads((out / "config.json").read_text())["optim"]["steps"] == 4


# --- resources ------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value", [("depth", 10**9), ("width", 10**9),
                                         ("kernel_size", 100001)])
def test_model_sizes_are_checked_against_the_file_header_before_any_allocation(
        tmp_path, monkeypatch, field, value):
    import metaprior.checkpoint as ckpt

    model = PDNet(PDNetConfig(depth=2))
    path = tmp_path / "crafted.safetensors"
    save_file({k: v.detach() for k, v in model.state_dict().items()}, str(path),
              {"pdnet_config": json.dumps({**model.config.__dict__, field: value})})

    def never(*args, **kwargs):
        raise AssertionError("a model was built from unchecked sizes")

    monkeypatch.setattr(ckpt, "build_model", never)
    with pytest.raises(ValueError, match=f"{field} {value}"):
        load_model(path)


# --- files: deterministic bytes, ordinary permissions ---------------------------------------

def test_model_files_are_byte_identical_and_mode_0644(tmp_path):
    model = PDNet.seeded(PDNetConfig(depth=2), 0)
    meta = {f"key{i}": {"value": i} for i in range(8)}
    digests = set()
    for i in range(4):
        path = save_model(tmp_path / f"m{i}.safetensors", model, metadata=meta)
        digests.add(path.read_bytes())
        umask = os.umask(0)
        os.umask(umask)
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert len(digests) == 1


def test_a_diverged_checkpointed_adapt_leaves_nothing_behind(sandbox, tmp_path):
    with pytest.raises(SystemExit, match="non-finite weights after adaptation step 0"):
        main(["adapt", "--model", str(sandbox / "model.safetensors"), "--images",
              str(sandbox / "imgs"), "--task", "sr2", "--patch-size", "8", "--batch-size", "2",
              "--optimizer", "sgd", "--lr", "1e300", "--steps", "3", "--ckpt-every", "1",
              "--no-progress", "--out", str(tmp_path / "new" / "deeper" / "a.safetensors")])
    assert list(tmp_path.iterdir()) == []  # nor the folders it created for --out


def test_an_adapted_model_whose_reconstruction_is_not_finite_is_not_written(sandbox, tmp_path):
    """Finite weights can still reconstruct NaN (a huge step into a region where the network
    overflows): the run fails after its last step and writes nothing, without ground truth
    too."""
    from metaprior.models import HQSNet, HQSNetConfig

    save_model(tmp_path / "hqs.safetensors", HQSNet(HQSNetConfig(iterations=2, pretrained=False)))
    y = tmp_path / "y.safetensors"
    main(["measure", "--images", str(sandbox / "imgs"), "--task", "sr2", "--no-ground-truth",
          "--out", str(y)])
    out = tmp_path / "a.safetensors"
    with pytest.raises(SystemExit, match=r"reconstruction.*not finite.*lower --lr"):
        main(["adapt", "--model", str(tmp_path / "hqs.safetensors"), "--measurements", str(y),
              "--loss", "unsupervised", "--lr", "1e6", "--steps", "1",
              "--no-progress", "--out", str(out)])
    with pytest.raises(SystemExit, match=r"reconstruction.*not finite.*lower --lr"):
        main(["adapt", "--model", str(tmp_path / "hqs.safetensors"), "--measurements", str(y),
              "--loss", "unsupervised", "--lr", "1e6", "--steps", "1", "--ckpt-every", "1",
              "--no-progress", "--out", str(out)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hqs.safetensors", "y.safetensors"]


@pytest.mark.parametrize("code", [
    # a command interrupted while it runs
    "from metaprior.cli import one_line_errors\n"
    "def interrupted():\n    raise KeyboardInterrupt\n"
    "one_line_errors(interrupted)\n",
    # in its first seconds, while the parser is built; importing the command line loads no
    # torch, so the window before the handler is short
    "import sys\nimport metaprior.cli as cli\n"
    "assert 'torch' not in sys.modules, 'metaprior.cli imports torch'\n"
    "def interrupted():\n    raise KeyboardInterrupt\n"
    "cli.build_parser = interrupted\ncli.main(['measure', '--help'])\n",
], ids=["running", "loading"])
def test_ctrl_c_ends_a_command_with_one_line_and_dies_by_sigint(code):
    """One line naming --resume, then death by SIGINT as Python's own handler does (so a
    calling shell loop stops too), not a traceback; while the command runs or still loads."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode in (-2, 130) and len(err) == 1, proc.stderr
    assert err[0].startswith("error: interrupted") and "--resume" in err[0]


def test_meta_train_takes_the_other_architecture_s_defaults(tmp_path):
    """A run's own config.json holds both networks' sections: values equal to the other
    architecture's defaults are not refused (values that differ are: BAD_INPUTS)."""
    main([*MT, "--iterations", "8", "--no-dihedral", "--out", str(tmp_path / "r")])
    assert (tmp_path / "r" / "model.safetensors").exists()


def test_single_file_outputs_are_replaced_only_with_overwrite(sandbox, tmp_path):
    """``measure --out``, ``adapt --out`` (and its checkpoint folder) and ``evaluate --json``
    refuse an existing output before any work, naming ``--overwrite``; with it they replace
    it. ``evaluate --json`` creates a missing folder."""
    y, model = tmp_path / "y.safetensors", tmp_path / "a.safetensors"
    measure = ["measure", "--images", str(sandbox / "imgs"), "--task", "sr2", "--out", str(y)]
    adapt = ["adapt", "--model", str(sandbox / "model.safetensors"), "--measurements", str(y),
             "--steps", "1", "--no-progress", "--out", str(model)]
    evaluate = ["evaluate", "--model", str(sandbox / "model.safetensors"), "--images",
                str(sandbox / "imgs"), "--tasks", "sr2", "--json", str(tmp_path / "new" / "e.json")]
    for command in (measure, adapt, evaluate):
        main(command)
    for command, flag in ((measure, "--out"), (adapt, "--out"), (evaluate, "--json")):
        before = _snapshot(tmp_path)
        with pytest.raises(SystemExit, match=rf"{flag} .* exists: pass --overwrite"):
            main(command)
        assert _snapshot(tmp_path) == before
        main([*command, "--overwrite"])
    ckpt = [*adapt[:-1], str(tmp_path / "b.safetensors"), "--ckpt-every", "1"]
    main(ckpt)
    (tmp_path / "b.safetensors").unlink()  # the model gone, its checkpoints still there
    before = _snapshot(tmp_path)
    with pytest.raises(SystemExit, match=r"holds the checkpoints of an earlier run.*--resume.*"
                                         r"--overwrite"):
        main(ckpt)
    assert _snapshot(tmp_path) == before
    main([*ckpt, "--overwrite"])


def test_leftover_temporary_files_are_removed_by_the_next_locked_run(sandbox, tmp_path):
    """Temporary files of a killed writer (ours, ``.NAME.tmp-PID``, and safetensors' own
    ``.tmpXXXXXX``) go when the next run holds the folder's lock; other files stay."""
    run = tmp_path / "a.run"
    (run / "checkpoints").mkdir(parents=True)
    leftovers = [run / ".tmpAb12Cd", run / "checkpoints" / ".tmpXy98Zw",
                 run / "checkpoints" / ".step_0000001.tmp-99999"]
    for p in leftovers:
        p.write_bytes(b"partial")
    (run / "notes.txt").write_text("kept")
    main(["adapt", "--model", str(sandbox / "model.safetensors"), "--measurements",
          str(sandbox / "y.safetensors"), "--steps", "1", "--ckpt-every", "1", "--no-progress",
          "--out", str(tmp_path / "a.safetensors")])
    assert not any(p.exists() for p in leftovers) and (run / "notes.txt").exists()


def test_resume_names_what_is_missing_and_never_invites_losing_checkpoints(tmp_path):
    """``meta-train --resume`` on a folder that does not exist, on one that holds no run, on a
    run whose ``checkpoints/latest`` names a missing step, and on a damaged ``state.json``:
    each named as what it is; none answered with ``--overwrite``, which would delete the
    checkpoints that are there."""
    def refused(out: Path) -> str:
        with pytest.raises(SystemExit) as exc:
            main([*MT, "--out", str(out), "--resume"])
        return str(exc.value.code)

    assert "does not exist: there is no run to resume" in refused(tmp_path / "absent")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a run")
    assert "holds no run" in refused(tmp_path / "mine")
    run = tmp_path / "run"
    main([*MT, "--out", str(run)])
    latest = run / "checkpoints" / "latest"
    good = latest.read_text().strip()
    latest.write_text("step_0009999")
    message = refused(run)
    assert "names step_0009999" in message and good in message, message
    assert "--overwrite" not in message
    latest.write_text(good)
    (run / "checkpoints" / good / "state.json").write_text("")
    message = refused(run)
    assert "state.json is damaged" in message and "--overwrite" not in message, message


def test_a_run_stopped_before_its_first_checkpoint_names_the_fix(sandbox, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "log.jsonl").write_text("")
    with pytest.raises(SystemExit, match=r"already holds a run.*--overwrite"):
        main([*MT, "--out", str(out)])
    with pytest.raises(SystemExit, match=r"before its first checkpoint.*--overwrite"):
        main([*MT, "--out", str(out), "--resume"])
    with pytest.raises(SystemExit, match=r"before its first checkpoint.*without --resume"):
        main(["adapt", "--model", str(sandbox / "model.safetensors"), "--measurements",
              str(sandbox / "y.safetensors"), "--resume", "--no-progress", "--out",
              str(tmp_path / "a.safetensors")])
    main([*MT, "--out", str(out), "--overwrite"])
    assert (out / "model.safetensors").is_file()


def test_a_physics_noise_model_is_honoured_or_refused():
    import deepinv as dinv

    from metaprior.tasks import task_from_physics

    x = torch.full((4, 1, 32, 32), 0.5)
    g = torch.Generator().manual_seed(0)
    noisy = task_from_physics("noisy-denoise", dinv.physics.Denoising(
        dinv.physics.GaussianNoise(0.2)))
    assert noisy.noise_sigma == 0.2
    assert float((noisy.sample(x, g).y - x).std()) == pytest.approx(0.2, rel=0.05)
    with pytest.raises(ValueError, match="disagrees with the physics' GaussianNoise"):
        task_from_physics("t", dinv.physics.Denoising(dinv.physics.GaussianNoise(0.2)),
                          noise_sigma=0.1)
    with pytest.raises(ValueError, match="PoissonNoise is not supported"):
        task_from_physics("t", dinv.physics.Denoising(dinv.physics.PoissonNoise()))
    factory = task_from_physics("t", lambda shape, g, device: dinv.physics.Denoising(
        dinv.physics.GaussianNoise(0.3)))
    with pytest.raises(ValueError, match=r"give noise_sigma=0.3"):
        factory.sample(x, g)


def test_register_task_refuses_a_name_a_built_in_family_answers():
    from metaprior.tasks import register_task, sr_task

    with pytest.raises(ValueError, match="'sr7' is a built-in task name"):
        register_task(replace(sr_task(2), name="sr7"))
    with pytest.raises(ValueError, match=r"'inpaint-0.3' is a built-in task name"):
        register_task(replace(sr_task(2), name="inpaint-0.3"))
    assert get_task("sr7").params == {"factor": 7}


CONTRADICTIONS = [
    (["--measurements", Y, "--task", "mri4"], "--task mri4 contradicts"),
    (["--measurements", Y, "--eval-measurements", Y], "--eval-measurements applies to --images"),
    (["--measurements", Y, "--patch-size", "8"], "--patch-size applies to --images"),
    (["--images", IMGS, "--task", "sr2", "--patch-size", "0", "--batch-size", "4"],
     "--batch-size applies to patches"),
    (["--images", "{root}/odd_imgs", "--task", "sr2", "--patch-size", "0"],
     r"b\.png \(15x16 pixels\) does not suit task 'sr2'"),
    (["--measurements", Y, "--resume", "--overwrite"], "give one of them"),
]


def test_adapt_without_checkpoints_keeps_out_and_its_run_folder_together(sandbox, tmp_path):
    """``<out stem>.run/`` holds the checkpoints of the adaptation that wrote ``--out``. An
    adaptation without ``--ckpt-every`` into that ``--out`` is refused while they are there,
    and with ``--overwrite`` replaces them too, so a later ``--resume`` continues the run
    that wrote ``--out``, not an older one."""
    out = tmp_path / "a.safetensors"
    adapt = ["adapt", "--model", M.format(root=sandbox), "--measurements",
             Y.format(root=sandbox), "--no-progress", "--out", str(out)]
    main([*adapt, "--steps", "4", "--ckpt-every", "2"])
    first = out.read_bytes()
    out.unlink()
    with pytest.raises(SystemExit, match="holds the checkpoints of an earlier run"):
        main([*adapt, "--steps", "1"])
    assert not out.exists()
    out.write_bytes(first)
    main([*adapt, "--steps", "1", "--lr", "0.5", "--overwrite"])
    newer = out.read_bytes()
    with pytest.raises(SystemExit, match=r"--resume: .* was adapted with lr 0\.5"):  # the
        # checkpoint is the lr-0.5 run's now
        main([*adapt, "--steps", "4", "--resume"])
    main([*adapt, "--steps", "2", "--lr", "0.5", "--resume"])
    assert out.read_bytes() != newer  # continued the lr-0.5 run from its step 1


@pytest.mark.parametrize("flags,fragment", CONTRADICTIONS)
def test_adapt_refuses_options_its_data_would_ignore(sandbox, tmp_path, flags, fragment):
    with pytest.raises(SystemExit, match=fragment):
        main(["adapt", "--model", str(sandbox / "model.safetensors"),
              *[f.format(root=sandbox) for f in flags], "--steps", "1", "--no-progress",
              "--out", str(tmp_path / "a.safetensors")])
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
def test_an_unwritable_file_system_is_found_before_any_work(sandbox, monkeypatch):
    """``/proc`` passes a permission check as root but takes no file: a probe file shows it
    before the model is even loaded."""
    import metaprior.checkpoint as ckpt

    monkeypatch.setattr(ckpt, "load_model", lambda *a, **k: pytest.fail("work started"))
    for argv in (["adapt", "--model", M, "--measurements", Y, "--out",
                  "/proc/metaprior-a.safetensors"],
                 ["measure", "--task", "sr2", "--images", IMGS, "--out",
                  "/proc/metaprior-y.safetensors"],
                 ["reconstruct", "--model", M, "--measurements", Y, "--out", "/proc/mp-rec"],
                 [*MT, "--out", "/proc/mp-run"]):
        with pytest.raises(SystemExit, match=r"/proc.*(cannot write in|not writable)"):
            main([a.format(root=sandbox) for a in argv])


def test_a_late_write_failure_keeps_the_result_in_a_named_file(sandbox, tmp_path, monkeypatch,
                                                                 capsys):
    """A write that fails after the work (a full disk): one line naming the failure and the
    temporary file that holds the result; nothing partial beside the target."""
    import errno
    import re
    import tempfile

    import metaprior.checkpoint as ckpt
    import metaprior.commands.io as cli

    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    write, write_png = ckpt.write_bytes_atomic, cli.write_png_atomic

    def full_disk(writer):
        def wrapped(path, *args):
            if Path(path).parent == out:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return writer(path, *args)
        return wrapped

    monkeypatch.setattr(ckpt, "write_bytes_atomic", full_disk(write))
    monkeypatch.setattr(cli, "write_png_atomic", full_disk(write_png))
    with pytest.raises(SystemExit) as exc:
        main(["adapt", "--model", str(sandbox / "model.safetensors"), "--measurements",
              str(sandbox / "y.safetensors"), "--steps", "1", "--no-progress", "--out",
              str(out / "a.safetensors")])
    message = str(exc.value.code)
    kept = re.search(r"No space left on device\): kept the adapted model in (\S+);", message)
    assert kept and "\n" not in message, message
    assert load_model(kept.group(1))[1]["adapted"]["steps"] == 1
    with pytest.raises(SystemExit, match=r"kept the reconstructions in (\S+);") as exc:
        main(["reconstruct", "--model", str(sandbox / "model.safetensors"), "--measurements",
              str(sandbox / "y.safetensors"), "--out", str(out)])
    folder = re.search(r"reconstructions in (\S+);", str(exc.value.code)).group(1)
    assert sorted(p.name for p in Path(folder).iterdir()) == ["recon_000.png", "recon_001.png"]
    assert list(out.iterdir()) == []


def test_boolean_options_are_switches_and_old_true_false_values_still_read():
    import re

    from metaprior.cli import _switches, build_parser, legacy_bool_values

    parser = build_parser()
    commands = next(a for a in parser._actions if hasattr(a, "choices") and a.choices)
    for name, sub in commands.choices.items():
        text = sub.format_help()
        assert not re.search(r"\[--[\w-]+ \[[A-Z_]+\]\]", text), name
    argv = ["meta-train", "--learn-inner-lr", "true", "--detach-step-sizes", "false"]
    args = parser.parse_args(legacy_bool_values(argv, _switches(parser)))
    assert getattr(args, "meta.learn_inner_lr") is True
    assert getattr(args, "model.detach_step_sizes") is False
    args = parser.parse_args(["meta-train", "--no-detach-step-sizes", "--resume"])
    assert getattr(args, "model.detach_step_sizes") is False and args.resume
    argv = ["meta-train", "--learn-inner-lr=true", "--overwrite=false", "--no-progress=true"]
    args = parser.parse_args(legacy_bool_values(argv, _switches(parser)))
    assert getattr(args, "meta.learn_inner_lr") is True and args.overwrite is False
    assert args.no_progress
    for argv in (["meta-train", "--no-learn-inner-lr", "false"],
                 ["meta-train", "--no-learn-inner-lr=false"]):
        args = parser.parse_args(legacy_bool_values(argv, _switches(parser)))
        assert getattr(args, "meta.learn_inner_lr") is True
    for argv in (["adapt", "--no-progress", "false"], ["adapt", "--no-progress=false"]):
        args = parser.parse_args(legacy_bool_values(argv, _switches(parser)))
        assert not getattr(args, "run.no_progress")
    args = parser.parse_args(legacy_bool_values(["adapt", "--no-progress=true"],
                                                _switches(parser)))
    assert getattr(args, "run.no_progress") is True


@pytest.mark.parametrize("argv", [["adapt", "--steps", "1.5"], ["adapt", "--lr"],
                                  ["adapt", "--stpes", "1"], ["measure", "--seed", "abc"],
                                  ["demo", "--meta-train"], ["nope"],
                                  ["evaluate", "--tasks", "sr2,,mri4"]])
def test_a_malformed_command_line_is_one_line_naming_the_help(argv, capsys):
    """argparse's own errors (a wrong type, a missing value, an unknown flag or command) are
    one line too, exit status 2, pointing at the command's ``--help``."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--help" in err[0], err
    if argv[0] != "nope":
        assert f"metaprior {argv[0]} --help" in err[0]
    if "sr2,,mri4" in argv:  # not read as "sr2,mri4"
        assert "'sr2,,mri4' has an empty entry" in err[0]


def test_an_example_without_its_data_root_ends_in_one_line(tmp_path):
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "METAPRIOR_DATA"}
    proc = subprocess.run([sys.executable, "-m", "reproductions.table1_row", "--quick",
                           "--data-root", str(tmp_path / "absent")], capture_output=True,
                          text=True, env=env, timeout=300, cwd=root)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, lines
    assert lines[0].startswith("error: ") and "absent" in lines[0]


@pytest.mark.parametrize("argv,fragment", [
    (["examples/adapt_own_operator.py", "--size", "0"], "--size must be"),
    (["examples/adapt_own_operator.py", "--size", "32", "--frozen", "nosuch", "--compare", ""],
     "nosuch"),
    (["examples/adapt_own_operator.py", "--stpes", "1"], "unrecognized arguments: --stpes"),
    (["examples/meta_train_own_family.py", "--size", "0", "--out", "{tmp}/m"], "--size must be"),
    (["examples/meta_train_own_family.py", "--adapt-steps", "-1", "--out", "{tmp}/m"],
     "--adapt-steps must be"),
    (["-m", "reproductions", "linear", "--dtype", "nosuch", "--out", "{tmp}/m"],
     "--dtype must be float32 or float64"),
    (["-m", "reproductions", "linear", "--image-size", "0", "--out", "{tmp}/m"],
     "--image-size"),
    (["-m", "reproductions", "linear", "--mask-size", "100", "--out", "{tmp}/m"],
     "--mask-size"),
    (["-m", "reproductions", "table1", "--stpes", "0"], "unrecognized arguments: --stpes"),
    (["-m", "reproductions", "check", "--results", "{tmp}/absent"], "absent"),
])
def test_examples_and_reproductions_refuse_bad_options_in_one_line_before_any_work(
        tmp_path, argv, fragment):
    """The example scripts and ``python -m reproductions`` check their options first, in the
    command line's one-line form: no traceback, no usage block, no run folder left behind."""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, *[a.format(tmp=tmp_path) for a in argv]],
                          capture_output=True, text=True, timeout=300, cwd=root,
                          env={**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{root / 'src'}"})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode in (1, 2) and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and fragment.format(tmp=tmp_path) in lines[0], lines
    assert not (tmp_path / "m").exists()


def test_api_mistakes_are_one_line_value_errors_naming_the_argument(tmp_path):
    import deepinv as dinv

    import metaprior as mp

    model = PDNet(PDNetConfig(depth=2))
    theta = mp.parameters_of(model)
    batch = get_task("sr2").sample(torch.rand(1, 1, 16, 16))
    blind = replace(batch, x=None, target=None)  # measurements alone
    rule = mp.AdaptConfig(steps=1)
    tmp = tmp_path
    cases = [
        (lambda: mp.AdaptConfig(steps="5"), "adapt: steps must be of type int"),
        (lambda: mp.AdaptConfig(lr="1e-3"), "adapt: lr must be of type float"),
        (lambda: mp.AdaptConfig(lr_scales=[1.0]), "adapt: lr_scales must be"),
        (lambda: mp.get_task(3), "get_task: name must be"),
        (lambda: mp.register_task("sr2"), "register_task: task must be a Task"),
        (lambda: mp.task_from_physics("t", 3), "physics must be a deepinv LinearPhysics"),
        (lambda: mp.fine_tune(model, [1], lambda s: batch, rule), "fine_tune: theta must be"),
        (lambda: mp.fine_tune(model, {"w": torch.zeros(1)}, lambda s: batch, rule),
         "fine_tune: theta's names"),
        (lambda: mp.fine_tune(model, theta, batch, rule), "fine_tune: next_batch must be"),
        (lambda: mp.fine_tune(model, theta, lambda s: batch, {"steps": 1}),
         "fine_tune: config must be an AdaptConfig"),
        (lambda: mp.fine_tune(model, theta, lambda s: torch.zeros(1), rule),
         r"fine_tune: next_batch\(0\) must return a TaskBatch"),
        (lambda: mp.fine_tune("model", theta, lambda s: batch, rule),
         "fine_tune: model must be a torch.nn.Module"),
        (lambda: mp.fine_tune(model, {**theta, "layers.0.weight": torch.zeros(1)},
                              lambda s: batch, rule), "theta's 'layers.0.weight' is"),
        (lambda: mp.reconstruct(model, {**theta, "layers.0.weight": torch.zeros(1)}, batch),
         "reconstruct: theta's 'layers.0.weight' is"),
        (lambda: mp.fine_tune(model, theta, lambda s: blind, replace(rule, loss="supervised")),
         "the supervised loss needs ground truth"),
        (lambda: mp.finetune_and_score(model, theta, lambda s: batch, rule, [blind]),
         "batches must hold ground truth"),
        (lambda: mp.label_free_loss(model, theta, []), "label_free_loss: batches is empty"),
        (lambda: mp.search_lr(model, theta, lambda: (lambda s: batch), rule, [], [1e-3]),
         "search_lr: batches is empty"),
        (lambda: mp.task_from_physics("crop", dinv.physics.LinearPhysics(
            A=lambda x: x, A_adjoint=lambda y: y[..., :8, :8])).sample(torch.rand(1, 1, 16, 16)),
         r"its A_adjoint returns \(1, 1, 8, 8\) for images \(1, 1, 16, 16\)"),
        (lambda: mp.task_from_physics("rgb-mask", dinv.physics.Inpainting(
            img_size=(3, 16, 16), mask=0.5)).sample(torch.rand(1, 1, 16, 16)),
         r"its A_adjoint returns \(1, 3, 16, 16\) for images \(1, 1, 16, 16\)"),
        (lambda: mp.label_free_loss(model, theta, [batch], kind="supervised"),
         "label_free_loss: kind must be"),
        (lambda: mp.finetune_and_score(model, theta, lambda s: batch, rule, [batch],
                                       keep=(-1,)), "keep must hold steps >= 0"),
        (lambda: mp.fine_tune(model, theta, lambda s: batch,
                              replace(rule, lr_scales={"layers.0.weight": 1.0})),
         "lr_scales lacks"),
        (lambda: mp.fine_tune(model, theta, lambda s: batch,
                              replace(rule, lr_scales={**{k: 1.0 for k in theta}, "nope": 1.0})),
         "lr_scales names parameters the model lacks: nope"),
        (lambda: mp.task_from_physics("pr", dinv.physics.Physics(A=lambda x: x.abs())),
         "physics must be a deepinv LinearPhysics"),
        (lambda: mp.task_from_physics("id", torch.nn.Identity()),
         "physics must be a deepinv LinearPhysics"),
        (lambda: mp.task_from_physics("t", dinv.physics.Denoising(), target=3),
         "target must be a callable"),
        (lambda: mp.save_measurements(tmp / "inf.safetensors",
                                      replace(batch, y=torch.full_like(batch.y, float("inf")))),
         "save_measurements: 'y' holds non-finite values"),
        (lambda: mp.save_measurements(tmp / "gt.safetensors", blind),
         "save_measurements: the batch holds no ground truth"),
        (lambda: mp.save_model(tmp / "m.safetensors", model,
                               {**theta, "layers.0.weight": torch.zeros(1)}),
         "save_model: params' 'layers.0.weight' is"),
    ]
    for call, fragment in cases:
        with pytest.raises(ValueError, match=fragment) as exc:
            call()
        assert "\n" not in str(exc.value)
    assert not list(tmp_path.iterdir()), "a refused save wrote a file"


def test_the_demo_replaces_an_earlier_demo_only_with_overwrite(tmp_path):
    from metaprior.models import HQSNet, HQSNetConfig

    out, model = tmp_path / "demo", tmp_path / "hqs.safetensors"
    save_model(model, HQSNet(HQSNetConfig(iterations=2, init_iters=5, pretrained=False)))
    argv = ["demo", "--model", str(model), "--size", "16", "--adapt-steps", "1", "--loss",
            "equivariant", "--lr", "1e-3", "--out", str(out)]
    main(argv)
    (out / "notes.txt").write_text("kept")
    before = _snapshot(out)
    with pytest.raises(SystemExit, match=r"holds an earlier demo.*--overwrite"):
        main(argv)
    assert _snapshot(out) == before
    main([*argv, "--overwrite"])
    assert (out / "notes.txt").read_text() == "kept"
    assert (out / "adapted_sr2.safetensors").is_file()
    with Image.open(out / "demo_sr2.png") as im:  # 3 pictures; y, A^T y, TV, before, after, x
        assert im.size == (6 * 160, 18 + 3 * (160 + 16))


def test_a_run_resumed_at_its_last_step_still_checks_its_reconstruction():
    """A checkpoint taken at exactly the run's last step (a mid-run checkpoint of a longer
    run) leaves no step to run: the final finite check still reconstructs the last batch."""
    import metaprior as mp
    from metaprior.adapt import AdaptState
    from metaprior.meta.inner import make_inner_optimizer
    from metaprior.models import HQSNet, HQSNetConfig

    model = HQSNet(HQSNetConfig(iterations=2, init_iters=5, pretrained=False))
    theta = mp.parameters_of(model)
    g = torch.Generator().manual_seed(0)
    batch = mp.get_task("sr2").sample(torch.rand(2, 1, 16, 16, generator=g), g)
    rule = mp.AdaptConfig(steps=2, lr=1e-3, loss="unsupervised")
    # finite weights whose reconstruction overflows
    bad = {k: v * 1e30 if k.startswith("denoiser") else v for k, v in theta.items()}
    state = AdaptState(2, bad, make_inner_optimizer("adam", 1e-3).init(bad))
    seen = []
    with pytest.raises(FloatingPointError, match="not finite after 2 steps"):
        mp.fine_tune(model, theta, lambda s: seen.append(s) or batch, rule, start=state)
    assert seen == [0, 1]  # the stream replayed, nothing more drawn
    ok = AdaptState(2, theta, make_inner_optimizer("adam", 1e-3).init(theta))
    assert mp.fine_tune(model, theta, lambda _s: batch, rule, start=ok).losses == []


def test_adapt_checks_its_own_options_before_loading_the_model(tmp_path):
    """Mistakes in adapt's own options are named before the model loads (a missing model
    file would otherwise be reported first, after a slow load for a real one)."""
    imgs = write_pngs(tmp_path / "imgs", size=16)
    unreadable = tmp_path / "bad.safetensors"  # found, but loading it fails
    unreadable.write_bytes(b"not a model")
    base = ["adapt", "--model", str(unreadable), "--images", str(imgs), "--out",
            str(tmp_path / "a.safetensors")]
    with pytest.raises(SystemExit, match="--steps must be >= 1"):
        main([*base, "--task", "sr2", "--steps", "0"])
    with pytest.raises(SystemExit, match="--images needs --task"):
        main(base)
    with pytest.raises(SystemExit, match=r"bad\.safetensors"):
        main([*base, "--task", "sr2"])


def test_images_a_task_cannot_take_are_refused_in_one_line_naming_the_fix():
    """``Task.sample`` refuses images that would give silently wrong results or fail deep in
    torch: channels-last, another value range, integer or half dtypes, NaN, and a fixed
    operator whose adjoint (not only ``A``) cannot take the size. The metrics refuse what they
    would score wrongly: not (B, C, H, W), complex, a peak <= 0."""
    import deepinv as dinv

    import metaprior as mp

    sr2, x = mp.get_task("sr2"), torch.rand(2, 1, 16, 16)
    cases = [(x.permute(0, 2, 3, 1).expand(2, 16, 16, 4), "channels-last"),
             (x * 255, "x / 255"), (x * 2 - 1, "[0, 1]"), ((x * 255).to(torch.uint8), "uint8"),
             (x.half(), "float16"), (x.clone().fill_(float("nan")), "not finite")]
    for images, fragment in cases:
        with pytest.raises(ValueError, match=re.escape(fragment)):
            sr2.sample(images)
    sr2.sample(x.double())  # float64 images are measured (the linear-algebra checks use them)
    fixed = dinv.physics.Downsampling(img_size=(1, 16, 16), filter="gaussian", factor=2)
    with pytest.raises(ValueError, match="give task_from_physics a factory"):
        mp.task_from_physics("ds16", fixed).sample(torch.rand(1, 1, 32, 32))
    assert mp.task_from_physics("mine", fixed, peak="max").peak == "max"
    for args, fragment in [((x[0], x[0]), "(B, C, H, W)"), ((x, x, 0), "peak"),
                           ((x, x, -1.0), "peak"), ((x.to(torch.complex64),) * 2, "real")]:
        for metric in (mp.psnr, mp.ssim):
            with pytest.raises(ValueError, match=re.escape(fragment)):
                metric(*args)
    with pytest.raises(ValueError, match="sigma_min"):
        mp.HQSNetConfig(sigma_min=0.5, sigma_max=0.1)
    hqs = mp.HQSNet(mp.HQSNetConfig(iterations=2, init_iters=5, pretrained=False))
    wide = sr2.sample(x.double())  # float64 measurements, a float32 model
    with pytest.raises(ValueError, match=r"measurements are torch\.float64, the model's "
                                         r"parameters torch\.float32"):
        mp.reconstruct(hqs, mp.parameters_of(hqs), wide)
    assert mp.reconstruct(hqs, mp.parameters_of(hqs), sr2.sample(x)).dtype == torch.float32


def test_api_edge_cases_a_user_meets_with_deepinv_operators(tmp_path):
    """Found by a new user of the Python API: an ``sr-family`` measurement (deepinv buffers
    that share memory) saves and loads; PDNet reconstructs a batch of two through deepinv's
    MRI (a non-contiguous adjoint); the cached ‖A‖² follows deepinv's ``physics.update``;
    ``frozen`` prefixes never split a number (``convs.1`` is not ``convs.10``); a reserved
    metadata key is refused; a malformed ``MODELS.json`` is named in one line."""
    import deepinv as dinv

    import metaprior as mp
    from metaprior.models import HQSNet, HQSNetConfig
    from metaprior.physics.operators import operator_norm_sq

    batch = get_task("sr-family").sample(torch.rand(1, 1, 32, 32),
                                         torch.Generator().manual_seed(3))
    mp.save_measurements(tmp_path / "fam.safetensors", batch)
    again = mp.load_measurements(tmp_path / "fam.safetensors")
    assert torch.allclose(again.physics.A(batch.x), batch.physics.A(batch.x))

    mri = dinv.physics.MRI(mask=torch.ones(8, 8), img_size=(2, 8, 8))
    x = torch.rand(2, 2, 8, 8)
    assert PDNet(PDNetConfig(depth=2))(mri.A(x), mri).shape == (2, 2, 8, 8)

    kernel = torch.zeros(1, 1, 5, 5)
    kernel[..., 2, 1:4] = 1 / 3
    blur = dinv.physics.BlurFFT((1, 16, 16), filter=kernel)
    first = operator_norm_sq(blur, torch.rand(1, 1, 16, 16))
    blur.update(filter=3 * kernel)
    assert operator_norm_sq(blur, torch.rand(1, 1, 16, 16)) == pytest.approx(9 * first, rel=0.02)

    model = HQSNet(HQSNetConfig(iterations=2, init_iters=5, pretrained=False))
    theta = mp.parameters_of(model)
    b = get_task("sr2").sample(torch.rand(1, 1, 16, 16))
    rule = mp.AdaptConfig(steps=1, lr=0.1, loss="supervised", frozen=("denoiser.convs.1",))
    phi = mp.fine_tune(model, theta, lambda s: b, rule).params
    moved = {k for k in theta if not torch.equal(theta[k], phi[k])}
    assert "denoiser.convs.10.weight" in moved and "denoiser.convs.1.weight" not in moved

    with pytest.raises(ValueError, match="save_model: metadata 'architecture' 'pdnet' is not"):
        mp.save_model(tmp_path / "m.safetensors", model, metadata={"architecture": "pdnet"})
    assert not (tmp_path / "m.safetensors").exists()
    bad = tmp_path / "zoo"
    bad.mkdir()
    (bad / "MODELS.json").write_text("garbage")
    with pytest.raises(ValueError, match=r"zoo/MODELS.json is not a JSON object of models"):
        mp.add_model_dir(bad)


def test_deepinv_downsampling_without_a_filter_reconstructs_through_its_exact_prox():
    """deepinv's ``Downsampling(filter=None)`` (plain decimation) has no closed-form prox of
    its own (deepinv 0.5 fails on ``Fh = None``); HQSNet and the TV and DPIR baselines take
    its data step through the exact diagonal prox of :class:`metaprior.physics.Decimation`,
    so the README's recipe 1 runs on it and gives what the built-in ``sr2`` gives."""
    import deepinv as dinv

    import metaprior as mp
    from metaprior.baselines import dpir, variational
    from metaprior.models import HQSNet, HQSNetConfig
    from metaprior.physics import Decimation
    from metaprior.physics.operators import prox_l2

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 16, 16, generator=g)
    theirs = dinv.physics.Downsampling(img_size=(1, 16, 16), factor=2, filter=None)
    ours = Decimation((1, 16, 16), factor=2)
    z, y = torch.rand(2, 1, 16, 16, generator=g), ours.A(x)
    assert torch.allclose(prox_l2(theirs, z, y, 0.3), ours.prox_l2(z, y, 0.3))
    with pytest.raises(TypeError):  # what deepinv itself does, which the helper avoids
        theirs.prox_l2(z, y, 0.3)
    model = HQSNet(HQSNetConfig(iterations=2, init_iters=10, pretrained=False))
    task = mp.task_from_physics("decimate-user", theirs, noise_sigma=0.01)
    batch = task.sample(x, torch.Generator().manual_seed(1))
    rule = mp.AdaptConfig(steps=1, lr=1e-3, loss="equivariant", frozen=("denoiser",))
    phi = mp.fine_tune(model, mp.parameters_of(model), lambda _s: batch, rule).params
    x_hat = mp.reconstruct(model, phi, batch)
    # the same up to ‖A‖² = 1, exact for Decimation, by power iteration for deepinv's
    assert torch.allclose(model(batch.y, theirs), model(batch.y, ours), atol=1e-3)
    assert torch.isfinite(x_hat).all()
    tv = variational(batch, "tv", 1e-3, max_iter=20)
    assert torch.isfinite(tv).all()

    class Smooth(dinv.models.Denoiser):  # a stand-in denoiser: DPIR's schedule is under test
        def forward(self, x, sigma=None):
            return torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)

    decimated = dpir(batch, Smooth(), 0.02, iterations=4)  # deepinv's own L2 fails here
    assert torch.allclose(decimated, dpir(replace(batch, physics=ours), Smooth(), 0.02, 4),
                          atol=1e-4)


def test_demo_names_where_a_supervised_rule_came_from(tmp_path):
    """A model that recommends supervised adaptation cannot run the label-free demo: the
    refusal names the model's recommendation when ``--loss`` was not given, ``--loss`` when
    it was; both name the fix."""
    model = save_model(tmp_path / "m.safetensors", PDNet(PDNetConfig(depth=2)),
                       metadata={"adapt": {"loss": "supervised", "lr": 1e-3}})
    base = ["demo", "--model", str(model), "--size", "16", "--out", str(tmp_path / "d")]
    with pytest.raises(SystemExit, match=r"m.safetensors recommends supervised adaptation.*"
                                         r"--loss equivariant or unsupervised"):
        main(base)
    with pytest.raises(SystemExit, match=r"--loss supervised: the demo adapts without ground "
                                         r"truth: use equivariant or unsupervised"):
        main([*base, "--loss", "supervised"])
    assert not (tmp_path / "d").exists()


def test_adapt_checks_its_rule_against_the_model_before_any_work(sandbox, capsys):
    """A ``--frozen`` prefix that names no parameter, or ``--coarse-iterations`` with a
    model that cannot be resampled (a PDNet), is refused before the model is scored or an lr
    searched (a long run would otherwise learn it only after that)."""
    for extra, fragment in ((["--frozen", "nosuch"], "'nosuch' names no parameter"),
                            (["--coarse-iterations", "5"], "needs an unrolled model")):
        with pytest.raises(SystemExit, match=fragment):
            main([a.format(root=sandbox) for a in [*ADAPT, *extra]])
        assert "before:" not in capsys.readouterr().out
