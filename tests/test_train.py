"""Meta-training: config layering, logging, atomic checkpoints, bitwise resume after SIGKILL,
non-finite steps; and the adapt / measure / reconstruct commands end to end (tiny sizes)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import write_pngs
from metaprior import train
from metaprior.checkpoint import latest_checkpoint, load_model, load_tensors
from metaprior.cli import build_parser, main
from metaprior.config import build_config, load_config_file

TINY = ["--dataset", "demo", "--depth", "2", "--patch-size", "32", "--inner-batch", "2",
        "--outer-batch", "2", "--val-batch", "2", "--inner-lr", "0.01", "--lr", "0.01"]


def tiny_config(out: Path, steps: int = 4, **meta) -> train.TrainConfig:
    args = build_parser().parse_args(["meta-train", *TINY, "--steps", str(steps), "--out",
                                      str(out), "--ckpt-every", "2", "--val-every", "2"])
    cfg = build_config(train.TrainConfig, {}, args)
    if meta:
        from dataclasses import replace

        cfg = replace(cfg, meta=replace(cfg.meta, **meta))
    return cfg


def test_config_layering(tmp_path):
    file = tmp_path / "c.json"
    file.write_text(json.dumps({"model": {"depth": 7, "width": 8}, "meta": {"tasks": ["tv"]}}))
    args = build_parser().parse_args(["meta-train", "--config", str(file), "--depth", "3",
                                      "--hypergradient", "implicit",
                                      "--no-detach-step-sizes"])
    cfg = build_config(train.TrainConfig, load_config_file(args.config), args)
    assert cfg.model.depth == 3 and cfg.model.width == 8 and not cfg.model.detach_step_sizes
    assert cfg.meta.tasks == ("tv",) and cfg.meta.hypergradient == "implicit"
    assert cfg.optim.lr == 1e-3  # dataclass default
    file.write_text(json.dumps({"model": {"dpth": 7}}))
    with pytest.raises(ValueError, match="unknown key"):
        build_config(train.TrainConfig, load_config_file(file))


def test_learning_rate_schedule():
    cfg = train.OptimConfig(steps=100, lr=1.0, warmup_steps=10)
    assert train.learning_rate(cfg, 0) == pytest.approx(0.1)
    assert train.learning_rate(cfg, 10) == pytest.approx(1.0)
    assert train.learning_rate(cfg, 55) == pytest.approx(0.5)
    assert train.learning_rate(cfg, 100) == pytest.approx(0.0)


@pytest.mark.parametrize("mode", ["maml", "first_order", "implicit", "reptile"])
def test_meta_train_writes_log_checkpoints_and_model(tmp_path, mode):
    cfg = tiny_config(tmp_path / "run", steps=2, hypergradient=mode,
                      inner_steps=2 if mode == "reptile" else 1)
    path = train.meta_train(cfg, progress=False, log=lambda *_: None)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").open()]
    assert [r["step"] for r in records] == [0, 1]
    assert set(records[0]["tasks"]) == {"denoise", "tv", "deblur", "inpaint"}
    assert "val" in records[1] and records[1]["val"]["tv"]["meta_psnr"] > 0
    if mode == "implicit":
        assert "cg_residual" in records[0]["tasks"]["tv"]
    assert latest_checkpoint(tmp_path / "run").name == "step_0000002"
    model, meta = load_model(path)
    assert model.num_params() == 2 * 361 and meta["meta_config"]["hypergradient"] == mode
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["depth"] == 2


def test_outer_steps_change_parameters(tmp_path):
    trainer = train.MetaTrainer(tiny_config(tmp_path))
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.outer_step()
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_batches_drawn_ahead_are_the_serial_ones(tmp_path):
    """The background sampler yields the batches of serial sampling, and a checkpoint taken
    while a batch is drawn ahead records the streams from before that batch."""
    ahead, serial = (train.MetaTrainer(tiny_config(tmp_path / n, steps=5)) for n in "ab")
    for _ in range(3):
        got = ahead.next_meta_batch()
        ahead.step += 1
        want = serial._sample_meta_batch()
        for (gi, go), (wi, wo) in zip(got, want, strict=True):
            assert all(torch.equal(g.y, w.y) and torch.equal(g.target, w.target)
                       for g, w in ((gi, wi), (go, wo)))
    assert ahead._ahead is not None
    for key, value in serial._streams().items():
        assert torch.equal(ahead.state_tensors()[key], value)


def _run_cli(args, **kw):
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.Popen([sys.executable, "-m", "metaprior.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


def test_sigkill_and_resume_is_bitwise_identical(tmp_path):
    """A run killed with SIGKILL right after its step-4 checkpoint and resumed ends with the
    same weights, bit for bit, as an uninterrupted run of the same length."""
    flags = [*TINY, "--steps", "8", "--ckpt-every", "2", "--val-every", "0"]
    victim = _run_cli(["meta-train", *flags, "--no-progress", "--out", str(tmp_path / "kill")])
    target = tmp_path / "kill" / "checkpoints" / "step_0000004"
    deadline = time.time() + 300
    while not target.exists() and time.time() < deadline and victim.poll() is None:
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL, "the run finished before it could be killed"

    def config(out):
        args = build_parser().parse_args(["meta-train", *flags, "--out", str(out)])
        return build_config(train.TrainConfig, {}, args)

    train.meta_train(config(tmp_path / "ref"), progress=False, log=lambda *_: None)
    train.meta_train(config(tmp_path / "kill"), resume=True, progress=False, log=lambda *_: None)
    a = load_tensors(tmp_path / "ref" / "model.safetensors")
    b = load_tensors(tmp_path / "kill" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (tmp_path / "kill" / "log.jsonl").open()]
    assert steps == list(range(8))


def test_nonfinite_steps_are_skipped_then_stop(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path / "run", steps=6)
    real = train.meta_gradient
    calls = {"n": 0}

    def flaky(model, theta, batches, config, lrs=None):
        calls["n"] += 1
        total, results = real(model, theta, batches, config, lrs)
        if calls["n"] >= 3:  # steps 0-1 fine (checkpoint at 2), then NaN forever
            total = {k: torch.full_like(v, float("nan")) for k, v in total.items()}
        return total, results

    monkeypatch.setattr(train, "meta_gradient", flaky)
    from dataclasses import replace

    cfg = replace(cfg, run=replace(cfg.run, max_nonfinite=3))
    with pytest.warns(RuntimeWarning, match="non-finite"), \
            pytest.raises(train.TrainingDivergedError, match="last good checkpoint"):
        train.meta_train(cfg, progress=False, log=lambda *_: None)
    assert latest_checkpoint(tmp_path / "run").name == "step_0000002"
    weights = load_tensors(latest_checkpoint(tmp_path / "run") / "model.safetensors")
    assert all(bool(torch.isfinite(v).all()) for v in weights.values())


def test_adapt_measure_reconstruct_cli(tmp_path, capsys):

    cfg = tiny_config(tmp_path / "run", steps=1)
    train.meta_train(cfg, progress=False, log=lambda *_: None)
    imgs = write_pngs(tmp_path / "imgs", size=32)
    y = tmp_path / "y.safetensors"
    main(["measure", "--task", "sr2", "--images", str(imgs), "--out", str(y)])
    adapted = tmp_path / "adapted.safetensors"
    main(["adapt", "--model", str(tmp_path / "run"), "--measurements", str(y), "--steps", "3",
          "--out", str(adapted)])
    out = capsys.readouterr().out
    assert "before:" in out and "after 3 unsupervised steps:" in out
    _, meta = load_model(adapted)
    assert meta["adapted"]["task"] == "sr2" and meta["adapted"]["loss"] == "unsupervised"
    main(["adapt", "--model", str(tmp_path / "run" / "model.safetensors"), "--images", str(imgs),
          "--task", "sr2", "--patch-size", "16", "--batch-size", "2", "--steps", "2",
          "--loss", "supervised", "--eval-measurements", str(y), "--out", str(adapted),
          "--overwrite"])
    main(["reconstruct", "--model", str(adapted), "--measurements", str(y), "--out",
          str(tmp_path / "rec")])
    main(["evaluate", "--model", str(adapted), "--images", str(imgs), "--tasks", "inpaint,sr2",
          "--json", str(tmp_path / "eval.json"), "--adapt-steps", "1"])
    rows = json.loads((tmp_path / "eval.json").read_text())
    assert [r["task"] for r in rows] == ["inpaint", "sr2"] and len(rows[0]["adapted"]) == 2
    assert sorted(p.name for p in (tmp_path / "rec").iterdir()) == ["recon_0.png",
                                                                    "recon_1.png"]


def test_cli_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit, match="no model at"):
        main(["reconstruct", "--model", str(tmp_path / "none"), "--measurements", "x",
              "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"--resume: .*empty does not exist: there is no run"):
        main(["meta-train", "--out", str(tmp_path / "empty"), "--resume", "--dataset", "demo"])
    with pytest.raises(SystemExit, match="hypergradient must be one of"):
        main(["meta-train", "--hypergradient", "reptil", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="'reptile' needs inner_loss 'supervised' and "
                                         "inner_steps >= 2"):
        main(["meta-train", "--hypergradient", "reptile", "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


def test_fresh_run_replaces_stale_later_checkpoints(tmp_path):
    """A run started with overwrite in a folder that holds a longer run's checkpoints keeps its own
    newest checkpoint (the stale, later-numbered ones go) and ``latest`` stays valid."""
    train.meta_train(tiny_config(tmp_path / "run", steps=6), progress=False, log=lambda *_: None)
    with pytest.raises(train.RunFolderError, match="already holds a run"):
        train.meta_train(tiny_config(tmp_path / "run", steps=2), progress=False,
                         log=lambda *_: None)
    train.meta_train(tiny_config(tmp_path / "run", steps=2), progress=False, log=lambda *_: None,
                     overwrite=True)
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*"))
    assert names == ["step_0000002"]
    assert latest_checkpoint(tmp_path / "run").name == "step_0000002"


def test_fine_tune_resumed_from_a_state_equals_an_unbroken_run():
    """``fine_tune`` from the state saved after 3 of 6 steps (through the safetensors-friendly
    split of the Adam state) ends bitwise where the unbroken 6-step run ends."""
    from dataclasses import replace

    from metaprior.adapt import AdaptConfig, fine_tune, parameters_of
    from metaprior.adapt_run import opt_state_from, opt_state_tensors
    from metaprior.models import PDNet, PDNetConfig
    from metaprior.tasks import get_task

    torch.manual_seed(0)
    model = PDNet(PDNetConfig(depth=2))
    images = torch.rand(6, 2, 1, 16, 16)
    task = get_task("denoise")

    def stream():
        g = torch.Generator().manual_seed(1)
        return lambda step: task.sample(images[step], g)

    cfg = AdaptConfig(steps=6, lr=1e-2, loss="supervised")
    theta = parameters_of(model)
    unbroken = fine_tune(model, theta, stream(), cfg)
    saved = {}
    fine_tune(model, theta, stream(), AdaptConfig(steps=3, lr=1e-2, loss="supervised"),
              callback=lambda state, loss: saved.update(state=state))
    state = saved["state"]
    tensors, scalars = opt_state_tensors(state.opt_state)
    assert scalars == {"step": 3} and set(tensors) == {f"{m}/{k}" for m in "mv" for k in theta}
    state = replace(state, opt_state=opt_state_from({k: v.clone() for k, v in tensors.items()},
                                                    scalars))
    resumed = fine_tune(model, theta, stream(), cfg, start=state)
    assert len(resumed.losses) == 3 and resumed.losses == unbroken.losses[3:]
    assert all(torch.equal(unbroken.params[k], resumed.params[k]) for k in theta)


def test_adapt_cli_resumes_a_long_run_bitwise(tmp_path):
    """``adapt --ckpt-every 2``: a 2-step run extended to 4 with ``--resume`` ends bitwise where
    an unbroken 4-step run ends (the patch stream replayed); ``--resume`` with another lr, fewer
    steps, another model under the same path (a run folder trained on), other data (a picture
    replaced) or without a checkpoint is a one-line error naming what changed."""
    train.meta_train(tiny_config(tmp_path / "run", steps=1), progress=False, log=lambda *_: None)
    imgs = write_pngs(tmp_path / "imgs", size=32)
    base = ["adapt", "--model", str(tmp_path / "run"), "--images", str(imgs), "--task", "sr2",
            "--patch-size", "16", "--batch-size", "2", "--ckpt-every", "2", "--no-progress"]
    main([*base, "--steps", "4", "--out", str(tmp_path / "ref.safetensors")])
    main([*base, "--steps", "2", "--out", str(tmp_path / "cut.safetensors")])
    main([*base, "--steps", "4", "--resume", "--out", str(tmp_path / "cut.safetensors")])
    a, b = (load_tensors(tmp_path / f"{n}.safetensors") for n in ("ref", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert latest_checkpoint(tmp_path / "cut.run").name == "step_0000004"
    with pytest.raises(SystemExit, match=r"--resume: .*step_0000004 was adapted with lr 0.01, "
                                         r"not 0.5: drop the option"):
        main([*base, "--steps", "6", "--lr", "0.5", "--resume", "--out",
              str(tmp_path / "cut.safetensors")])
    with pytest.raises(SystemExit, match=r"--resume: .*step_0000004 is past --steps 3"):
        main([*base, "--steps", "3", "--resume", "--out", str(tmp_path / "cut.safetensors")])
    state = latest_checkpoint(tmp_path / "cut.run") / "state.json"
    saved = json.loads(state.read_text())
    del saved["recipe"]["data"]["sha256"]  # a checkpoint written before data were checksummed
    saved["recipe"].pop("model_sha256", None)  # or the model
    state.write_text(json.dumps(saved))
    main([*base[:2], str(tmp_path / "run") + "/", base[3], str(imgs) + "/", *base[5:],
          "--steps", "5", "--resume", "--out", str(tmp_path / "cut.safetensors")])
    shutil.copytree(imgs, tmp_path / "moved")  # the same names and bytes elsewhere
    main([*base[:4], str(tmp_path / "moved"), *base[5:], "--steps", "5", "--resume", "--out",
          str(tmp_path / "cut.safetensors")])
    # the run folder's model trained on: its file is another θ under the same path
    train.meta_train(tiny_config(tmp_path / "run", steps=1), progress=False, log=lambda *_: None,
                     resume=True, steps=2)
    with pytest.raises(SystemExit, match=r"--resume: the model changed since .*step_0000005 "
                                         r"was written \(model_sha256\)"):
        main([*base, "--steps", "6", "--resume", "--out", str(tmp_path / "cut.safetensors")])
    (imgs / "0.png").write_bytes((tmp_path / "imgs" / "1.png").read_bytes())
    with pytest.raises(SystemExit, match=r"--resume: the data changed since .*step_0000005"):
        main([*base, "--steps", "6", "--resume", "--out", str(tmp_path / "cut.safetensors")])
    with pytest.raises(SystemExit, match="--resume: no checkpoint under"):
        main([*base, "--steps", "2", "--resume", "--out", str(tmp_path / "none.safetensors")])


def test_coarse_adaptation_resumes_bitwise_and_writes_the_model_s_own_iterations(tmp_path):
    """``adapt --coarse-iterations 1`` on a 3-iteration HQSNet: the checkpoints hold the
    1-iteration copy, a 2-step run resumed to 4 ends bitwise where an unbroken one does, the
    adapted file has the model's 3 iterations, and resuming with the option a run without it,
    or without it a run with it, is refused."""
    from metaprior.checkpoint import save_model
    from metaprior.models import HQSNet, HQSNetConfig

    model = tmp_path / "hqs.safetensors"
    save_model(model, HQSNet(HQSNetConfig(iterations=3, init_iters=5, pretrained=False)))
    imgs = write_pngs(tmp_path / "imgs", size=32)
    base = ["adapt", "--model", str(model), "--images", str(imgs), "--task", "sr2",
            "--patch-size", "16", "--batch-size", "2", "--ckpt-every", "2", "--no-progress",
            "--loss", "equivariant", "--lr", "1e-2"]
    coarse = [*base, "--coarse-iterations", "1"]
    main([*coarse, "--steps", "4", "--out", str(tmp_path / "ref.safetensors")])
    main([*coarse, "--steps", "2", "--out", str(tmp_path / "cut.safetensors")])
    main([*coarse, "--steps", "4", "--resume", "--out", str(tmp_path / "cut.safetensors")])
    a, b = (load_tensors(tmp_path / f"{n}.safetensors") for n in ("ref", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert a["log_sigma"].shape == (3,)
    checkpoint = load_tensors(latest_checkpoint(tmp_path / "cut.run") / "model.safetensors")
    assert checkpoint["log_sigma"].shape == (1,)
    adapted = load_model(tmp_path / "ref.safetensors")[1]["adapted"]
    assert adapted["coarse_iterations"] == 1
    with pytest.raises(SystemExit, match=r"--resume: .* was adapted with coarse_iterations 1, "
                                         r"not its default"):
        main([*base, "--steps", "6", "--resume", "--out", str(tmp_path / "cut.safetensors")])
    main([*base, "--steps", "2", "--out", str(tmp_path / "plain.safetensors")])
    with pytest.raises(SystemExit, match=r"--resume: .* was adapted with coarse_iterations its "
                                         r"default, not 1"):
        main([*coarse, "--steps", "4", "--resume", "--out", str(tmp_path / "plain.safetensors")])


def test_every_command_takes_a_config_file_and_flags_win(tmp_path):
    """``adapt`` (and every command) reads its dataclass sections from ``--config``; a flag
    overrides the file, and the model's own step rule fills what neither gives."""
    train.meta_train(tiny_config(tmp_path / "run", steps=1), progress=False, log=lambda *_: None)
    imgs = write_pngs(tmp_path / "imgs", size=32)
    y = tmp_path / "y.safetensors"
    cfg = tmp_path / "measure.json"
    cfg.write_text(json.dumps({"measure": {"task": "sr2", "images": str(imgs), "out": str(y)}}))
    main(["measure", "--config", str(cfg)])
    cfg = tmp_path / "adapt.json"
    cfg.write_text(json.dumps({"adapt": {"steps": 2, "prox_lambda": 0.5},
                               "data": {"measurements": str(y)},
                               "run": {"model": str(tmp_path / "run"), "no_progress": True}}))
    for flags, steps in (([], 2), (["--steps", "3"], 3)):
        out = tmp_path / f"a{steps}.safetensors"
        main(["adapt", "--config", str(cfg), *flags, "--out", str(out)])
        adapted = load_model(out)[1]["adapted"]
        assert adapted["steps"] == steps and adapted["prox_lambda"] == 0.5
        assert adapted["lr"] == 1e-2  # the model's inner_lr (tiny_config)


def test_adapt_chooses_its_lr_on_pictures_with_ground_truth(tmp_path, capsys):
    """``adapt --lr-search DIR``: the rule's lr ×1, ×10/3, ×10 (one more past an edge) each
    adapt on patches of DIR's pictures measured by the task and are scored on them; the best
    one adapts on the measurements, and the adapted file records every lr's PSNR."""
    from metaprior.checkpoint import save_model
    from metaprior.models import PDNet, PDNetConfig

    imgs = write_pngs(tmp_path / "imgs", size=32)
    pictures = write_pngs(tmp_path / "pictures", size=32, seed=1)
    save_model(tmp_path / "m.safetensors", PDNet(PDNetConfig(depth=2)))
    y = tmp_path / "y.safetensors"
    main(["measure", "--task", "sr2", "--images", str(imgs), "--no-ground-truth", "--out", str(y)])
    out = tmp_path / "a.safetensors"
    main(["adapt", "--model", str(tmp_path / "m.safetensors"), "--measurements", str(y),
          "--lr-search", str(pictures), "--patch-size", "16", "--batch-size", "2", "--steps", "2",
          "--lr", "1e-3", "--loss", "unsupervised", "--no-progress", "--out", str(out)])
    assert "choosing the lr on 2 picture(s)" in capsys.readouterr().out
    adapted = load_model(out)[1]["adapted"]
    tried = {float(k): v for k, v in adapted["lr_search"].items()}
    assert {1e-3, 1e-2} <= set(tried) and len(tried) in (3, 4)
    assert adapted["lr"] == max((v, k) for k, v in tried.items() if v is not None)[1]
    with pytest.raises(SystemExit, match=r"--patch-size applies to --images or a --lr-search "
                                         r"folder only.*give --images or --lr-search DIR"):
        main(["adapt", "--model", str(tmp_path / "m.safetensors"), "--measurements", str(y),
              "--patch-size", "16", "--out", str(tmp_path / "b.safetensors")])


def test_adapt_chooses_its_lr_on_held_out_measurements_without_ground_truth(tmp_path, capsys):
    """``adapt --lr-search FILE`` (measurements held out from adaptation, no ground truth):
    each lr adapts on the measurements and is scored by the label-free loss of FILE's
    measurements; the lowest wins, and the adapted file records every lr's loss."""
    from metaprior.checkpoint import save_model
    from metaprior.evaluate import label_free_loss
    from metaprior.measurements import load_measurements
    from metaprior.models import PDNet, PDNetConfig

    model = tmp_path / "m.safetensors"
    save_model(model, PDNet(PDNetConfig(depth=2)))
    y, held = tmp_path / "y.safetensors", tmp_path / "held.safetensors"
    for out, seed in ((y, 0), (held, 1)):
        main(["measure", "--task", "denoise", "--images",
              str(write_pngs(tmp_path / f"imgs{seed}", size=16, seed=seed)),
              "--no-ground-truth", "--out", str(out)])
    out = tmp_path / "a.safetensors"
    main(["adapt", "--model", str(model), "--measurements", str(y), "--lr-search", str(held),
          "--steps", "2", "--lr", "1e-3", "--loss", "robust-equivariant", "--no-progress",
          "--out", str(out)])
    assert "label-free loss of 2 held-out measurement(s)" in capsys.readouterr().out
    adapted, meta = load_model(out)
    tried = {float(k): v for k, v in meta["adapted"]["lr_search"].items()}
    assert {1e-3, 1e-2} <= set(tried) and meta["adapted"]["lr_search_criterion"] == "label-free"
    assert meta["adapted"]["lr"] == min((v, k) for k, v in tried.items() if v is not None)[1]
    assert label_free_loss(adapted, dict(adapted.named_parameters()),
                           [load_measurements(held)]) == pytest.approx(
        tried[meta["adapted"]["lr"]], rel=1e-5)
    with pytest.raises(SystemExit, match=r"--lr-search .* is the --measurements adapted on"):
        main(["adapt", "--model", str(model), "--measurements", str(y), "--lr-search", str(y),
              "--out", str(tmp_path / "b.safetensors")])


@pytest.mark.parametrize("hypergradient", [
    ["--hypergradient", "first_order"], ["--hypergradient", "maml", "--learn-inner-lr"],
    ["--hypergradient", "implicit"], ["--hypergradient", "reptile", "--inner-steps", "2"],
    ["--objective", "joint"]], ids=["first_order", "maml", "implicit", "reptile", "joint"])
def test_meta_train_frozen_holds_those_parameters_fixed_and_trains_the_rest(tmp_path,
                                                                           hypergradient):
    """``meta-train --frozen layers.0``: layer 0 ends bitwise as initialised in both loops
    (its Adam state is never written), the other layer's filters move; the run resumes
    bitwise."""
    argv = ["meta-train", *TINY, "--frozen", "layers.0", *hypergradient,
            "--ckpt-every", "1", "--val-every", "1", "--no-progress"]
    main([*argv, "--steps", "2", "--out", str(tmp_path / "ref")])
    main([*argv, "--steps", "1", "--out", str(tmp_path / "cut")])
    main([*argv, "--steps", "2", "--resume", "--out", str(tmp_path / "cut")])
    start = train.MetaTrainer(tiny_config(tmp_path / "x", frozen=("layers.0",)), log=lambda *_: 0)
    ref = load_tensors(tmp_path / "ref" / "model.safetensors")
    cut = load_tensors(tmp_path / "cut" / "model.safetensors")
    assert all(torch.equal(ref[k], cut[k]) for k in ref)
    same = {name for name, p in start.model.named_parameters() if torch.equal(ref[name], p)}
    assert {"layers.0.weight", "layers.0.lam"} <= same and "layers.1.weight" not in same
    tensors = load_tensors(latest_checkpoint(tmp_path / "ref") / "state.safetensors")
    assert not any(k.startswith("adam.layers.0.") for k in tensors)
    assert load_model(tmp_path / "ref" / "model.safetensors")[1]["meta_config"]["frozen"] == [
        "layers.0"]


@pytest.mark.parametrize("frozen, match", [("nope", "frozen prefix 'nope' names no "
                                                     "parameter; the model's parameters start "
                                                     "with layers"),
                                           ("layers", "holds every parameter fixed: nothing "
                                                      "would train")])
def test_meta_train_refuses_a_frozen_prefix_naming_nothing_or_everything(tmp_path, frozen,
                                                                         match):
    with pytest.raises(SystemExit, match=match):
        main(["meta-train", *TINY, "--frozen", frozen, "--steps", "1", "--no-progress",
              "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run" / "config.json").exists()
