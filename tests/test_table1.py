"""Table 1 suite: the smoke-sized protocol on the real data sets has the full structure and
only finite numbers, and ``report`` rebuilds every figure from its JSON; the committed
``benchmarks/results/table1.json`` has the same structure."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from metaprior.table1 import INITS

COMMITTED = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "table1.json"


def check_structure(results: dict) -> None:
    config = results["config"]
    for task in config["tasks"]:
        r = results["tasks"][task]
        assert len(r["test_images"]) >= 1
        baselines = r["baselines"]
        assert "pinv" in baselines
        for name in config["baselines"]:
            rec = baselines[name]
            assert str(rec["hyper"]) and rec["grid"], name
            assert all(math.isfinite(v) for v in rec["grid"].values()), name
        if config["pdnet"]:
            for init in config.get("inits", INITS):
                for tag in ("sup", "unsup"):
                    run = r["pdnet"][f"{init}_ft_{tag}"]
                    assert str(config["steps"]) in run["steps"]
        for name, rec in [*baselines.items(),
                          *((f"{k}@{n}", v) for k, run in r["pdnet"].items()
                            for n, v in run["steps"].items())]:
            assert len(rec["psnr"]) == len(r["test_images"]) == len(rec["ssim"]), name
            assert all(math.isfinite(v) for v in rec["psnr"] + rec["ssim"]), name
            assert math.isfinite(rec["sec_per_image"]), name
    for task, row in results["table"].items():
        for name, v in row.items():
            assert all(math.isfinite(v[k]) for k in ("psnr_mean", "psnr_std", "ssim_mean")), \
                (task, name)


@pytest.mark.data
@pytest.mark.slow
def test_quick_suite_structure_and_report(tmp_path):
    from metaprior.cli import main

    out = tmp_path / "table1.json"
    main(["evaluate", "--suite", "table1", "--quick", "--out", str(out),
          "--grid-cache", str(tmp_path / "grid.json")])
    results = json.loads(out.read_text())
    check_structure(results)
    assert set(json.loads((tmp_path / "grid.json").read_text())) == {
        f"{t}/{b}" for t in results["config"]["tasks"] for b in results["config"]["baselines"]}
    main(["report", "--results", str(out), "--figures", str(tmp_path / "fig"),
          "--markdown", str(tmp_path / "RESULTS.md")])
    for task in results["config"]["tasks"]:
        assert (tmp_path / "fig" / f"finetune_curves_{task}.png").stat().st_size > 10_000
        assert (tmp_path / "fig" / f"visual_{task}.png").stat().st_size > 10_000
    assert "| dpir-ffdnet |" in (tmp_path / "RESULTS.md").read_text()


def test_committed_table_structure():
    """The committed full-protocol table: every method, every number finite."""
    if not COMMITTED.is_file():
        pytest.fail(f"{COMMITTED} is missing: run metaprior evaluate --suite table1")
    results = json.loads(COMMITTED.read_text())
    assert results["config"]["steps"] == 50 and set(results["tasks"]) == {"sr2", "mri4"}
    assert results["config"]["pdnet"]
    check_structure(results)


SINGLE_MODEL_TABLES = sorted(p for p in COMMITTED.parent.glob("table1_*.json")
                             if p.name != "table1_grid.json")


@pytest.mark.parametrize("path", SINGLE_MODEL_TABLES, ids=lambda p: p.stem)
def test_committed_single_model_tables_structure(path):
    """Tables of single models, or of extra baselines only, under the same protocol
    (``configs/table1_*.json``)."""
    results = json.loads(path.read_text())
    assert results["config"]["steps"] == 50 and results["config"]["inits"]
    check_structure(results)


def test_suite_config_errors_are_one_line(tmp_path):
    from metaprior.cli import main

    bad = tmp_path / "bad.json"
    for content, match in (('{"steps": "50"}', "steps must be a int"),
                           ('{"seed": 3}', "give the seed with --seed"),
                           ('{"baselines": ["tgv2"]}', "unknown baseline 'tgv2'"),
                           ('{"inits": ["meta"]}', "inits must be among"),
                           ('{"nope": 1}', "unknown field")):
        bad.write_text(content)
        with pytest.raises(SystemExit, match=match):
            main(["evaluate", "--suite", "table1", "--suite-config", str(bad), "--out",
                  str(tmp_path / "t.json")])


DEPTH = COMMITTED.parent / "training_tasks_depth.json"


def check_depth_structure(results: dict, n_images: int) -> None:
    assert results["suite"] == "depth"
    for name, entries in results["depth_sweep"].items():
        assert name in ("meta_sup", "meta_unsup")
        depths = [e["depth"] for e in entries]
        assert depths == sorted(depths)
        for e in entries:
            assert [r["task"] for r in e["rows"]] == ["denoise", "tv", "deblur", "inpaint"]
            for r in e["rows"]:
                for key in ("pseudo_inverse", "model", "adapted"):
                    assert len(r[key]) == n_images and all(math.isfinite(v) for v in r[key])


@pytest.mark.data
def test_depth_suite_and_report(tmp_path):
    """Fig. 3 across depths: tiny models of two depths scored on one Set3C image, entries
    sorted by depth, each with its own inner loss; the report draws it and writes its table."""
    import torch

    from metaprior.checkpoint import save_model
    from metaprior.cli import main
    from metaprior.models import PDNet, PDNetConfig

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
    main(["evaluate", "--suite", "depth", "--quick", "--suite-config", str(cfg), "--out",
          str(out)])
    results = json.loads(out.read_text())
    check_depth_structure(results, n_images=1)
    assert [e["depth"] for e in results["depth_sweep"]["meta_sup"]] == [2, 3]
    assert results["depth_sweep"]["meta_unsup"][0]["inner"]["loss"] == "unsupervised"
    # an untrained PDNet starts at x0 = A^T y: on denoising (A = I) θ is close to A⁺y
    row = results["depth_sweep"]["meta_sup"][0]["rows"][0]
    assert abs(row["model"][0] - row["pseudo_inverse"][0]) < 1.0
    md = tmp_path / "RESULTS.md"
    md.write_text("# R\n\n<!-- depth:begin -->\nold\n<!-- depth:end -->\n\ntail\n")
    main(["report", "--results", str(out), "--figures", str(tmp_path / "fig"), "--markdown",
          str(md)])
    assert (tmp_path / "fig" / "training_tasks_depth.png").stat().st_size > 10_000
    text = md.read_text()
    assert "old" not in text and text.endswith("tail\n") and "| 3 | " in text
    md.write_text("# R\n\n<!-- depth:begin -->\nno end marker\n")
    with pytest.raises(SystemExit, match="only one of the markers"):
        main(["report", "--results", str(out), "--figures", str(tmp_path / "fig"),
              "--markdown", str(md)])


def test_depth_suite_errors_are_one_line(tmp_path):
    from metaprior.cli import main

    bad = tmp_path / "bad.json"
    for content, match in (('{"depth_models": ["joint=x.safetensors"]}', "depth_models entries"),
                           ('{}', "needs depth_models")):
        bad.write_text(content)
        with pytest.raises(SystemExit, match=match):
            main(["evaluate", "--suite", "depth", "--suite-config", str(bad), "--out",
                  str(tmp_path / "t.json")])


def test_committed_depth_sweep_structure():
    """The committed Fig. 3 sweep: depths 20/40/60 for both inner losses, all finite."""
    if not DEPTH.is_file():
        pytest.fail(f"{DEPTH} is missing: run metaprior evaluate --suite depth "
                    f"--suite-config configs/training_tasks_depth.json")
    from metaprior.report import depth_table

    results = json.loads(DEPTH.read_text())
    check_depth_structure(results, n_images=3)
    for name, entries in results["depth_sweep"].items():
        assert [e["depth"] for e in entries] == [20, 40, 60]
        loss = "supervised" if name == "meta_sup" else "unsupervised"
        assert all(e["inner"]["loss"] == loss for e in entries)
    # the RESULTS.md table is the one the report builds from this JSON
    assert depth_table(results) in (COMMITTED.parents[2] / "docs" / "RESULTS.md").read_text()
