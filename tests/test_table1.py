"""Table 1 suite: the smoke-sized protocol on the real data sets has the full structure and
only finite numbers, and ``report`` rebuilds every figure from its JSON; the results pages
hold what the report renders from the committed JSON. (The committed JSON themselves are checked
by ``python -m reproductions check``, run by CI.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reproductions.table1 import check_depth_results, check_results

COMMITTED = Path(__file__).resolve().parents[1] / "reproductions" / "results" / "table1.json"


@pytest.mark.data
@pytest.mark.slow
def test_quick_suite_structure_and_report(tmp_path):
    from reproductions.__main__ import main as rmain

    out = tmp_path / "table1.json"
    rmain(["table1", "--quick", "--out", str(out),
          "--grid-cache", str(tmp_path / "grid.json")])
    results = json.loads(out.read_text())
    check_results(results)
    runs = {f"{t}/{name}/lr" for t in results["config"]["tasks"]
            for name in results["tasks"][t]["pdnet"] if name != "scratch"}
    assert set(json.loads((tmp_path / "grid.json").read_text())) == runs | {
        f"{t}/{b}" for t in results["config"]["tasks"] for b in results["config"]["baselines"]}
    cached = (tmp_path / "grid.json").read_bytes()
    rmain(["table1", "--quick", "--seed", "1", "--out", str(tmp_path / "seed1.json"),
          "--grid-cache", str(tmp_path / "grid.json")])  # a smoke run: the cache it found stays
    assert (tmp_path / "grid.json").read_bytes() == cached
    rmain(["report", "--results", str(out), "--figures", str(tmp_path / "fig"),
          "--markdown", str(tmp_path / "RESULTS.md")])
    for task in results["config"]["tasks"]:
        assert (tmp_path / "fig" / f"finetune_curves_{task}.png").stat().st_size > 10_000
        assert (tmp_path / "fig" / f"visual_{task}.png").stat().st_size > 10_000
    assert "| dpir-ffdnet |" in (tmp_path / "RESULTS.md").read_text()


@pytest.mark.parametrize("json_name,page_name,begin,end,render", [
    ("table1.json", "table1.md", "BEGIN", "END", "markdown_table"),
    ("training_tasks_depth.json", "depth.md", "DEPTH_BEGIN", "DEPTH_END", "depth_table")])
def test_results_page_is_what_the_report_renders_from_the_committed_json(json_name, page_name,
                                                                         begin, end, render):
    """The results pages' generated tables equal what ``python -m reproductions report``
    renders now from the committed JSON: a change to the report code or a hand edit of the
    page fails here until ``python -m reproductions report`` is rerun."""
    from reproductions import report

    results = json.loads((COMMITTED.parent / json_name).read_text())
    page = (COMMITTED.parents[1] / page_name).read_text()
    start = page.index(getattr(report, begin)) + len(getattr(report, begin))
    block = page[start: page.index(getattr(report, end))]
    assert block.strip() == getattr(report, render)(results).strip()


def test_suite_config_errors_are_one_line(tmp_path):
    from reproductions.__main__ import main as rmain

    bad = tmp_path / "bad.json"
    for content, match in (('{"steps": "50"}', "steps must be of type int"),
                           ('{"baselines": ["tgv2"]}', "unknown baseline 'tgv2'"),
                           ('{"inits": ["meta"]}', "inits must be among"),
                           ('{"lr": 0.001}', "lr is used only with"),
                           ('{"optimizer": "rmsprop"}', "optimizer must be '', 'adam' or 'sgd'"),
                           ('{"nope": 1}', "unknown field")):
        bad.write_text(content)
        with pytest.raises(SystemExit, match=match):
            rmain(["table1", "--config", str(bad), "--out",
                  str(tmp_path / "t.json")])


@pytest.mark.data
def test_depth_suite_and_report(tmp_path):
    """Fig. 3 across depths: tiny models of two depths scored on one Set3C image, entries
    sorted by depth, each with its own inner loss; the report draws it and writes its table."""
    import torch

    from metaprior.checkpoint import save_model
    from metaprior.models import PDNet, PDNetConfig
    from reproductions.__main__ import main as rmain

    entries = []
    for depth, loss in ((3, "supervised"), (2, "supervised"), (2, "unsupervised")):
        torch.manual_seed(depth)
        path = tmp_path / f"d{depth}-{loss}.safetensors"
        save_model(path, PDNet(PDNetConfig(depth=depth)),
                   metadata={"meta_config": {"inner_lr": 1e-2, "inner_loss": loss}})
        entries.append(f"meta_{'sup' if loss == 'supervised' else 'unsup'}={path}")
    cfg = tmp_path / "depth.json"
    cfg.write_text(json.dumps({"depth_models": entries}))
    out = tmp_path / "depth_results.json"
    rmain(["depth", "--quick", "--config", str(cfg), "--out",
          str(out)])
    results = json.loads(out.read_text())
    check_depth_results(results, n_images=1)
    assert [e["depth"] for e in results["depth_sweep"]["meta_sup"]] == [2, 3]
    assert results["depth_sweep"]["meta_unsup"][0]["inner"]["loss"] == "unsupervised"
    # an untrained PDNet starts at x0 = A^T y: on denoising (A = I) θ is close to A⁺y
    row = results["depth_sweep"]["meta_sup"][0]["rows"][0]
    assert abs(row["model"][0] - row["pseudo_inverse"][0]) < 1.0
    md = tmp_path / "RESULTS.md"
    md.write_text("# R\n\n<!-- depth:begin -->\nold\n<!-- depth:end -->\n\ntail\n")
    rmain(["report", "--results", str(out), "--figures", str(tmp_path / "fig"), "--markdown",
          str(md)])
    assert (tmp_path / "fig" / "training_tasks_depth.png").stat().st_size > 10_000
    text = md.read_text()
    assert "old" not in text and text.endswith("tail\n") and "| 3 | " in text
    md.write_text("# R\n\n<!-- depth:begin -->\nno end marker\n")
    with pytest.raises(SystemExit, match="only one of the markers"):
        rmain(["report", "--results", str(out), "--figures", str(tmp_path / "fig"),
              "--markdown", str(md)])


def test_depth_suite_errors_are_one_line(tmp_path):
    from reproductions.__main__ import main as rmain

    bad = tmp_path / "bad.json"
    for content, match in (('{"depth_models": ["joint=x.safetensors"]}', "depth_models entries"),
                           ('{}', "needs depth_models")):
        bad.write_text(content)
        with pytest.raises(SystemExit, match=match):
            rmain(["depth", "--config", str(bad), "--out",
                  str(tmp_path / "t.json")])


@pytest.mark.data
def test_scratch_training_resumes_bitwise(tmp_path):
    """``python -m reproductions scratch`` checkpoints φ and the Adam state; a 2-step run
    extended to 4 with ``--resume`` ends bitwise where an unbroken 4-step run ends, and
    ``--resume`` without a checkpoint, or with another recipe, is a one-line error."""
    import torch

    from metaprior.checkpoint import load_tensors
    from reproductions.__main__ import main as rmain
    from reproductions.table1 import quick_config, train_scratch

    config = quick_config(tasks=("sr2",))
    quiet = {"depth": 2, "ckpt_every": 2, "log": lambda *_: None}
    train_scratch("sr2", config, 4, tmp_path / "ref.safetensors", **quiet)
    train_scratch("sr2", config, 2, tmp_path / "cut.safetensors", **quiet)
    train_scratch("sr2", config, 4, tmp_path / "cut.safetensors", resume=True, **quiet)
    a, b = (load_tensors(tmp_path / f"{n}.safetensors") for n in ("ref", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "cut.run" / "checkpoints" / "step_0000004").is_dir()
    with pytest.raises(SystemExit, match="--resume: no checkpoint under"):
        rmain(["scratch", "--tasks", "sr2", "--scratch-steps", "2",
              "--resume", "--out", str(tmp_path / "none.safetensors")])
    with pytest.raises(SystemExit, match="--resume and --scratch-steps apply to `scratch`"):
        rmain(["table1", "--resume", "--out", str(tmp_path / "t.json")])
    with pytest.raises(ValueError, match=r"--resume: .* is past --steps 3 \(step 4\)"):
        train_scratch("sr2", config, 3, tmp_path / "cut.safetensors", resume=True, **quiet)


def test_fine_tuning_lr_is_chosen_on_held_out_images_and_cached(monkeypatch):
    """``choose_lr`` keeps the grid value with the best held-out PSNR after ``steps`` steps,
    reuses cached scores for the same θ and protocol (a wider grid runs only its new values),
    and searches again for another θ."""
    from dataclasses import replace

    import torch

    from metaprior import adapt
    from metaprior.adapt import parameters_of
    from metaprior.models import PDNet, PDNetConfig
    from metaprior.tasks import get_task
    from reproductions import table1

    torch.manual_seed(0)
    model = PDNet(PDNetConfig(depth=2))
    task = get_task("denoise")
    images = torch.rand(5, 2, 1, 16, 16)
    g = torch.Generator().manual_seed(0)

    def stream():
        gen = torch.Generator().manual_seed(1)
        return lambda step: task.sample(images[step % 4], gen)

    val = [task.sample(images[4], g)]
    data = table1.TaskData("denoise", 1.0, stream, stream, val, [], [], [],
                           {"lr_selection": "synthetic"})
    config = table1.quick_config(steps=3, lr_grid=(1e-4, 1e-3, 1e-2), lr_extend=0)
    theta = parameters_of(model)
    cache: dict = {}
    chosen = table1.choose_lr(model, theta, data, "supervised", 0.0, config, cache, "k")
    assert set(chosen["grid"]) == {"0.0001", "0.001", "0.01"}
    assert chosen["grid"][str(chosen["best"])] == max(chosen["grid"].values())

    calls = []
    real = adapt.fine_tune
    monkeypatch.setattr(adapt, "fine_tune", lambda *a, **k: calls.append(a[3].lr) or real(*a, **k))
    again = table1.choose_lr(model, theta, data, "supervised", 0.0, config, cache, "k")
    assert calls == [] and again == chosen
    wider = replace(config, lr_grid=(1e-4, 1e-3, 1e-2, 3e-2))
    table1.choose_lr(model, theta, data, "supervised", 0.0, wider, cache, "k")
    assert calls == [3e-2]  # only the new value runs
    other = {k: v + 0.01 for k, v in theta.items()}
    table1.choose_lr(model, other, data, "supervised", 0.0, config, cache, "k")
    assert calls == [3e-2, 1e-4, 1e-3, 1e-2]  # another θ: searched afresh


def test_fine_tuning_rule_is_the_init_s_own_unless_the_config_names_one():
    """Each initialisation is fine-tuned with the rule its metadata records (optimizer and
    learned per-layer step sizes; random init: Adam); ``optimizer`` replaces the optimizer for
    all of them and keeps the learned step sizes."""
    from reproductions import table1

    meta = {"meta_config": {"inner_optimizer": "sgd", "inner_lr": 1e-2, "inner_loss":
                            "unsupervised"}, "inner_lrs": {"layers.0.weight": 2e-2}}
    own = table1.quick_config()
    assert table1.fine_tuning_rule(None, own) is None  # the default rule, Adam
    rule = table1.fine_tuning_rule(meta, own)
    assert rule.optimizer == "sgd" and rule.lr_scales == {"layers.0.weight": 2.0}
    adam = table1.fine_tuning_rule(meta, table1.quick_config(optimizer="adam"))
    assert adam.optimizer == "adam" and adam.lr_scales == rule.lr_scales
    assert table1.fine_tuning_rule(None, table1.quick_config(optimizer="sgd")).optimizer == "sgd"
    # a shipped model's rule per loss: its label-free rule holds the denoiser, not its
    # supervised one
    shipped = {"adapt": {"loss": "equivariant", "frozen": ["denoiser"],
                         "by_loss": {"supervised": {"lr": 1e-2}}}}
    assert table1.fine_tuning_rule(shipped, own, "equivariant").frozen == ("denoiser",)
    assert table1.fine_tuning_rule(shipped, own, "supervised").frozen == ()


@pytest.mark.parametrize("extend,best,edge", [(4, 2.7e-5, False), (1, 9e-5, True)])
def test_fine_tuning_lr_grid_extends_past_an_edge_choice(monkeypatch, extend, best, edge):
    """A held-out score that peaks at 3e-5, below the grid: the grid is extended downwards
    geometrically (ratio 1e-3 / 3e-4) until the choice is interior, by at most ``lr_extend``
    values; an lr that diverges is never chosen; a rerun reuses every cached value."""
    import math

    import torch

    from metaprior import evaluate
    from reproductions import table1

    calls = []

    def fake_finetune_and_score(model, theta, stream, cfg, batches, keep, peak):
        calls.append(cfg.lr)
        if cfg.lr >= 3e-3:
            raise FloatingPointError("diverged")
        return {"psnr": {cfg.steps: 30.0 - math.log10(cfg.lr / 3e-5) ** 2}}

    monkeypatch.setattr(evaluate, "finetune_and_score", fake_finetune_and_score)
    data = table1.TaskData("x", 1.0, lambda: None, lambda: None, [None], [], [], [],
                           {"lr_selection": "synthetic"})
    config = table1.quick_config(lr_grid=(3e-4, 1e-3, 3e-3, 1e-2), lr_extend=extend)
    theta = {"w": torch.zeros(2)}
    cache: dict = {}
    chosen = table1.choose_lr(None, theta, data, "supervised", 0.0, config, cache, "k")
    assert chosen["best"] == pytest.approx(best, rel=1e-9)
    assert chosen["at_grid_edge"] is edge
    assert chosen["grid"]["0.003"] is None and chosen["grid"]["0.01"] is None
    assert len(chosen["grid"]) == 4 + min(extend, 3)
    n = len(calls)
    assert table1.choose_lr(None, theta, data, "supervised", 0.0, config, cache, "k") == chosen
    assert len(calls) == n  # cached


@pytest.mark.data
def test_mri_lr_selection_never_sees_held_out_or_test_slices():
    """The MRI lr-selection stream draws only the 6 fine-tuning slices that are not held out;
    the held-out slices are not test slices; the protocol's own stream uses all 10."""
    import torch

    from reproductions.table1 import load_task_data, quick_config

    data = load_task_data("mri4", quick_config(grid_images=4, max_test_images=0))
    val = [b.target for b in data.val]
    assert len(val) == 4 and len(data.test) == 10
    assert not any(torch.equal(v, b.target) for v in val for b in data.test)
    select, full = data.select_stream(), data.stream()
    drawn = [select(step).target for step in range(30)]
    assert not any(torch.equal(d, v) for d in drawn for v in val)
    assert any(torch.equal(full(step).target, v) for step in range(30) for v in val)


def test_the_result_checks_find_gaps_and_non_finite_numbers():
    """``check_results`` (used by reproductions/check_results.py on the committed files) names a
    missing run, a non-finite score and an lr that is not the held-out best."""
    import copy

    results = json.loads(COMMITTED.read_text())
    check_results(results)
    run = results["tasks"]["sr2"]["pdnet"]["joint_ft_sup"]
    broken = copy.deepcopy(results)
    broken["tasks"]["sr2"]["pdnet"]["joint_ft_sup"]["steps"]["50"]["psnr"][0] = float("nan")
    with pytest.raises(ValueError, match="sr2/joint_ft_sup@50: non-finite score"):
        check_results(broken)
    broken = copy.deepcopy(results)
    del broken["tasks"]["mri4"]["pdnet"]["random_ft_unsup"]
    with pytest.raises(KeyError):
        check_results(broken)
    worse = min(run["lr_selection"]["grid"], key=lambda k: run["lr_selection"]["grid"][k] or 0)
    broken = copy.deepcopy(results)
    broken["tasks"]["sr2"]["pdnet"]["joint_ft_sup"]["lr"] = float(worse)
    with pytest.raises(ValueError, match="lr is not the held-out best"):
        check_results(broken)


def test_result_checks_take_a_learned_step_size_models_grid_from_its_inner_lr():
    """A model with learned per-layer step sizes searches ``scale_grid`` multiples of its
    inner lr, not ``lr_grid``; ``check_results`` holds each run to the grid it started from."""
    import copy

    from reproductions.table1 import search_grid

    assert search_grid((3e-4, 1e-3), (0.3, 1.0, 3.0), None) == (3e-4, 1e-3)
    assert search_grid((3e-4, 1e-3), (0.5, 2.0), 1e-2) == (5e-3, 2e-2)
    results = json.loads((COMMITTED.parent / "table1_lslr.json").read_text())
    assert results["models"]["meta_unsup"]["meta_config"]["learn_inner_lr"]
    check_results(results)
    broken = copy.deepcopy(results)
    broken["models"]["meta_unsup"]["meta_config"]["learn_inner_lr"] = False
    with pytest.raises(ValueError, match="lacks values of its start grid"):
        check_results(broken)


def test_merge_adds_only_the_baselines_the_base_lacks():
    """``merge_table1 --baselines``: the classical rows the base lacks come from the extra
    file (and are credited to it); the base's own rows and the runs' rows are kept as they are,
    and no model row of the extra file enters."""
    from reproductions.merge_table1 import merge

    results = COMMITTED.parent
    base, run, extra = (json.loads((results / f"{n}.json").read_text()) for n in (
        "table1_dpir24", "table1_dpir24_dihedral_sr_ei", "table1"))
    merged = merge(base, [("run", run)], "base", [("extra", extra)])
    sr = merged["tasks"]["sr2"]
    assert set(sr["baselines"]) == set(base["tasks"]["sr2"]["baselines"]) | {"tv", "tgv",
                                                                                 "wavelet"}
    assert sr["baselines"]["tv"] == extra["tasks"]["sr2"]["baselines"]["tv"]
    assert sr["baselines"]["dpir-ffdnet"] == base["tasks"]["sr2"]["baselines"]["dpir-ffdnet"]
    assert set(sr["pdnet"]) == {"joint_ft_ei"}  # not table1.json's meta-models
    assert merged["merged_from"]["rows"]["sr2/tv"] == "extra"
    assert merged["table"]["sr2"]["joint_ft_ei_50"] == run["table"]["sr2"]["joint_ft_ei_50"]


def test_table1_chooses_a_label_free_lr_without_reading_ground_truth():
    """``lr_criterion="label-free"``: a ground-truth-free loss's lr is the one with the lowest
    held-out label-free loss (the held-out images' targets are NaN here: never read), recorded
    with its criterion and fingerprinted apart from a PSNR choice; a supervised loss keeps
    the PSNR criterion."""
    from dataclasses import replace

    import torch

    import metaprior as mp
    from metaprior.models import HQSNet, HQSNetConfig
    from reproductions.table1 import Table1Config, TaskData, choose_lr

    model = HQSNet.seeded(HQSNetConfig(iterations=2, init_iters=5, pretrained=False), 0)
    theta = mp.parameters_of(model)
    task = replace(mp.get_task("sr2"), noise_sigma=0.01)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 1, 16, 16, generator=g)

    def stream():
        gen = torch.Generator().manual_seed(1)
        return lambda step: task.sample(images[:2], gen)

    val = task.sample(images[2:], torch.Generator().manual_seed(2))
    blind = replace(val, x=torch.full_like(val.x, float("nan")),
                    target=torch.full_like(val.target, float("nan")))
    data = TaskData("sr2", 1.0, stream, stream, [blind], [], [], [], {"lr_selection": "test"})
    config = Table1Config(steps=2, curve=(0, 1), lr_grid=(1e-3, 1e-2), lr_extend=0,
                          lr_criterion="label-free")
    rule = mp.AdaptConfig(frozen=("denoiser",))
    cache: dict = {}
    chosen = choose_lr(model, theta, data, "equivariant", 0.0, config, cache, "k", rule=rule)
    assert chosen["criterion"] == "label-free"
    assert str(chosen["best"]) == min(chosen["grid"], key=lambda k: chosen["grid"][k]) and all(
        v is not None and v > 0 for v in chosen["grid"].values())
    assert cache["k"]["fingerprint"]["criterion"] == "label-free"
    with pytest.raises(ValueError, match="lr_criterion must be"):
        Table1Config(lr_criterion="ssim")


def test_validation_curves_merge_result_files_and_draw_steps_and_wall_time(tmp_path):
    """Models of several ``solver_validation`` files land on one figure per operator (a later
    file's run of the same name wins); a file that is not such a result is refused."""
    from PIL import Image

    from reproductions.validation_curves import draw, merged

    def run(psnr0, psnr50):
        return {"lr": 3e-3, "s_per_step": 2.0, "psnr": {"0": psnr0, "1": psnr0, "50": psnr50}}

    a, b, bad = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "bad.json"
    a.write_text(json.dumps({"operators": {"op1": {
        "baselines": {"tv": {"value": 1e-3, "psnr": 25.0, "sec_per_image": 0.5}},
        "models": {"m/equivariant": run(26.0, 26.5)}}}}))
    b.write_text(json.dumps({"operators": {
        "op1": {"baselines": {}, "models": {"m/equivariant": run(26.0, 27.0),
                                             "n/equivariant": run(25.0, 25.5)}},
        "op2": {"baselines": {}, "models": {"n/equivariant": run(30.0, 30.1)}}}}))
    bad.write_text(json.dumps({"tasks": {}}))
    ops = merged([a, b])
    assert list(ops) == ["op1", "op2"] and ops["op1"]["baselines"]["tv"]["psnr"] == 25.0
    assert ops["op1"]["models"]["m/equivariant"]["psnr"]["50"] == 27.0
    assert set(ops["op1"]["models"]) == {"m/equivariant", "n/equivariant"}
    path = draw(ops, tmp_path / "fig" / "curves.png")
    with Image.open(path) as im:
        assert im.size[0] > im.size[1] > 0  # two operators side by side, two rows
    with pytest.raises(ValueError, match=r"not a result file of reproductions\.solver_validation"):
        merged([a, bad])


def test_the_folder_check_takes_longer_runs_only_when_they_score_the_50th_step(tmp_path):
    """``reproductions check``: a Table 1 file of a longer run passes when its curve holds the
    protocol's 50 steps, and is named as a problem when it does not."""
    import shutil

    from reproductions.check_results import RESULTS, check

    for name in ("table1.json", "training_tasks_depth.json",
                 "table1_dpir24_dihedral_sr_ei_200.json"):
        shutil.copy(RESULTS / name, tmp_path / name)
    assert check(tmp_path) == []
    longer = tmp_path / "table1_dpir24_dihedral_sr_ei_200.json"
    results = json.loads(longer.read_text())
    results["config"]["curve"] = [0, 1, 5, 20]
    longer.write_text(json.dumps(results))
    assert check(tmp_path) == [f"{longer.name}: ValueError: not the 50-step protocol (or a "
                               f"longer run scored after 50 steps too) with at least one "
                               f"initialisation"]
