r"""Figures and the markdown table of Table 1, rebuilt from the suite's JSON
(:mod:`reproductions.table1`) without re-running anything.

* ``finetune_curves_<task>.png``: PSNR vs fine-tuning steps (top row) and vs fine-tuning
  wall time (bottom row) for the meta-models, joint pre-training (or the model in its slot)
  and random initialisation, one panel per fine-tuning loss (the paper's Fig. B.2), with the
  best variational baseline, DPIR-FFDNet (8 and 24 iterations) and the from-scratch PDNet as
  horizontal lines (their seconds per image in the legend).
* ``visual_<task>.png``: the first test image for every method (Fig. 4 for SR, Fig. B.3 for MRI).
* the markdown table (ours beside the paper's numbers) between the markers
  ``<!-- table1:begin -->`` / ``<!-- table1:end -->`` of ``reproductions/table1.md``.

From the JSON of ``python -m reproductions depth`` instead: ``training_tasks_depth.png`` (the
paper's Fig. 3, PSNR on T1–T4 against depth for θ and the inner model, one row per inner
loss) and its table between ``<!-- depth:begin -->`` / ``<!-- depth:end -->``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from metaprior.extras import require
from metaprior.metrics import mean_std

INIT_LABELS = {"meta_sup": "meta-model (sup. inner)", "meta_unsup": "meta-model (unsup. inner)",
               "joint": "joint pre-training", "random": "random init"}
TASK_TITLES = {"sr2": "SR ×2 (Set3C)", "mri4": "MRI ×4 (fastMRI knee)"}
BEGIN, END = "<!-- table1:begin -->", "<!-- table1:end -->"
DEPTH_BEGIN, DEPTH_END = "<!-- depth:begin -->", "<!-- depth:end -->"


def _figure_class():
    """matplotlib's ``Figure`` (the object API: no pyplot state, no global backend), or a
    one-line error naming the ``plots`` extra."""
    require("matplotlib", "the reproductions' figures")
    from matplotlib.figure import Figure

    return Figure


def _mean_std(values) -> tuple[float, float]:
    """Mean and std of a JSON list of scores (non-finite values were written as null)."""
    return mean_std([v for v in values if v is not None])


def _mean(values) -> float:
    return _mean_std(values)[0]


def _reference_lines(r: dict) -> list[tuple[str, float, str]]:
    """(label, PSNR, line style) of the best variational baseline, DPIR-FFDNet (8 and 24
    iterations) and the from-scratch PDNet, where the task's results have them; a baseline's
    label carries its seconds per image."""
    def label(name: str) -> str:
        return f"{name} ({r['baselines'][name]['sec_per_image']:.2g} s/image)"

    lines = []
    variational = [n for n in ("wavelet", "tv", "tgv") if n in r["baselines"]]
    if variational:
        best = max(variational, key=lambda n: _mean(r["baselines"][n]["psnr"]))
        lines.append((label(best), _mean(r["baselines"][best]["psnr"]), ":"))
    for name, style in (("dpir-ffdnet", "--"), ("dpir24-ffdnet", (0, (6, 2, 1, 2)))):
        if name in r["baselines"]:
            lines.append((label(name), _mean(r["baselines"][name]["psnr"]), style))
    if "scratch" in r["pdnet"]:
        (steps, rec), = r["pdnet"]["scratch"]["steps"].items()
        lines.append((f"PDNet from scratch ({steps} steps)", _mean(rec["psnr"]), "-."))
    return lines


def _joint_slot(results: dict) -> str | None:
    """The name of the model in the ``joint`` slot when it is not a joint pre-training (e.g.
    the recommended model run under the Table 1 protocol), else ``None``."""
    source = results.get("models", {}).get("joint", {}).get("source")
    return source if source and not source.startswith("joint") else None


def finetune_curves(results: dict, task: str, path: Path) -> Path | None:
    """PSNR vs fine-tuning steps (Fig. B.2) and vs fine-tuning wall time (a run's
    ``finetune_seconds`` spread evenly over its steps), one column per fine-tuning loss."""
    r = results["tasks"][task]
    tags = [t for t in ("sup", "unsup", "ei") if any(k.endswith(f"_ft_{t}") for k in r["pdnet"])]
    if not tags:
        return None
    titles = {"sup": "supervised", "unsup": "unsupervised", "ei": "equivariant (no GT)"}
    labels = {**INIT_LABELS, "joint": _joint_slot(results) or INIT_LABELS["joint"]}
    Figure = _figure_class()
    fig = Figure(figsize=(5 * len(tags), 7.2))
    axes = fig.subplots(2, len(tags), sharey=True, squeeze=False)
    for column, tag in enumerate(tags):
        by_steps, by_time = axes[0, column], axes[1, column]
        for init, label in labels.items():
            run = r["pdnet"].get(f"{init}_ft_{tag}")
            if run is None:
                continue
            steps = sorted(int(s) for s in run["steps"])
            psnrs = [_mean(run["steps"][str(s)]["psnr"]) for s in steps]
            row = results.get("table", {}).get(task, {}).get(f"{init}_ft_{tag}_{steps[-1]}")
            if row:
                label = f"{label} ({row['sec_per_image']:.2g} s/image)"
            by_steps.plot([max(s, 0.5) for s in steps], psnrs, marker="o", label=label)
            per_step = run["finetune_seconds"] / max(steps[-1], 1)
            by_time.plot([s * per_step for s in steps], psnrs, marker="o", label=label)
        for ax in (by_steps, by_time):
            for name, value, style in _reference_lines(r):
                ax.axhline(value, color="gray", ls=style, label=name)
            ax.grid(alpha=0.3)
        by_steps.set_xscale("log")
        by_steps.set_xlabel("fine-tuning steps (0 plotted at 0.5)")
        by_steps.set_title(f"{TASK_TITLES.get(task, task)}: {titles[tag]}")
        by_time.set_xlabel("fine-tuning wall time (s, as recorded by each run)")
    for row in axes:
        row[0].set_ylabel("PSNR (dB)")
    axes[0, 0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def visual(results: dict, visuals_path: Path, task: str, path: Path) -> Path:
    """The first test image of ``task`` for every method, PSNR in the titles (Fig. 4 / B.3)."""
    from metaprior.checkpoint import load_tensors

    vis = load_tensors(visuals_path)
    r = results["tasks"][task]
    steps = results["config"]["steps"]
    source = _joint_slot(results)
    panels = [("target", "ground truth", None)]
    for name, rec in r["baselines"].items():
        if f"{task}/{name}" in vis:
            panels.append((name, name if name != "pinv" else "A⁺y", rec["psnr"][0]))
    for init, tag, n in (("meta_sup", "sup", 0), ("meta_sup", "sup", 1), ("meta_sup", "sup", 20),
                         ("meta_unsup", "unsup", 1), ("meta_unsup", "unsup", 20),
                         ("meta_unsup", "unsup", steps), ("meta_unsup", "ei", steps),
                         ("joint", "sup", 0), ("joint", "sup", steps), ("joint", "ei", steps),
                         ("random", "sup", steps)):
        key = f"{init}_ft_{tag}_{n}"
        if f"{task}/{key}" in vis:
            name = source if init == "joint" and source else init
            panels.append((key, f"{name} {tag} {n} st.",
                           r["pdnet"][f"{init}_ft_{tag}"]["steps"][str(n)]["psnr"][0]))
    if f"{task}/scratch" in vis:
        run = r["pdnet"]["scratch"]
        last = max(int(s) for s in run["steps"])
        panels.append(("scratch", f"scratch {last} st.", run["steps"][str(last)]["psnr"][0]))
    cols = 4
    rows = (len(panels) + cols - 1) // cols
    Figure = _figure_class()
    fig = Figure(figsize=(3 * cols, 3.2 * rows))
    axes = fig.subplots(rows, cols)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (key, title, value) in zip(axes.flat, panels, strict=False):
        img = vis[f"{task}/{key}"][0].float().clamp(0, 1)
        if img.shape[0] == 3:
            ax.imshow(img.permute(1, 2, 0).numpy())
        else:
            ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title if value is None else f"{title}\n{value:.2f} dB", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    return path


def training_tasks(results: dict, path: Path) -> Path:
    """The paper's Fig. 3 at the shipped depth: meta-model vs inner model on T1–T4 (Set3C)."""
    tt = results["training_tasks"]
    Figure = _figure_class()
    fig = Figure(figsize=(5.5 * len(tt), 3.6))
    axes = fig.subplots(1, len(tt), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, (name, entry) in zip(axes, tt.items(), strict=True):
        rows = entry["rows"]
        xs = range(len(rows))
        for offset, key, label in ((-0.27, "pseudo_inverse", "A⁺y"), (0.0, "model", "meta θ"),
                                   (0.27, "adapted", "inner (1 step)")):
            ax.bar([x + offset for x in xs], [_mean(r[key]) for r in rows], width=0.27,
                   label=label)
        ax.set_xticks(list(xs), [r["task"] for r in rows])
        ax.set_title(f"{INIT_LABELS.get(name, name)}, depth {entry['depth']}")
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("PSNR on Set3C (dB)")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def training_tasks_vs_depth(results: dict, path: Path) -> Path:
    """The paper's Fig. 3: mean ± std PSNR on Set3C against depth, θ and the inner model, for
    each training task (columns) and inner loss (rows); A⁺y as a dotted line."""
    sweep = results["depth_sweep"]
    tasks = [r["task"] for r in next(iter(sweep.values()))[0]["rows"]]
    Figure = _figure_class()
    fig = Figure(figsize=(3.6 * len(tasks), 3.0 * len(sweep)))
    axes = fig.subplots(len(sweep), len(tasks), squeeze=False)
    for row, (name, entries) in zip(axes, sweep.items(), strict=True):
        depths = [e["depth"] for e in entries]
        for j, (ax, task) in enumerate(zip(row, tasks, strict=True)):
            for key, label in (("model", "meta θ"), ("adapted", "inner (1 step)")):
                stats = [_mean_std(e["rows"][j][key]) for e in entries]
                ax.errorbar(depths, [m for m, _ in stats], yerr=[s for _, s in stats],
                            marker="o", capsize=3, label=label)
            ax.axhline(_mean(entries[0]["rows"][j]["pseudo_inverse"]), color="gray", ls=":",
                       label="A⁺y")
            ax.set_title(f"{task} — {INIT_LABELS.get(name, name)}", fontsize=9)
            ax.set_xticks(depths)
            ax.grid(alpha=0.3)
        row[0].set_ylabel("PSNR on Set3C (dB)")
    for ax in axes[-1]:
        ax.set_xlabel("depth K")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def depth_table(results: dict) -> str:
    """Markdown: PSNR (dB) on Set3C, θ / inner, per task, inner loss and depth."""
    lines = []
    for name, entries in results["depth_sweep"].items():
        tasks = [r["task"] for r in entries[0]["rows"]]
        lines += [f"**{INIT_LABELS.get(name, name)}**, θ / inner (1 {entries[0]['inner']['loss']}"
                  f" step, lr {entries[0]['inner']['lr']:g}), PSNR dB on Set3C", "",
                  "| depth | " + " | ".join(tasks) + " | model |",
                  "|---" * (len(tasks) + 2) + "|"]
        for e in entries:
            cells = [f"{_mean(r['model']):.2f} / {_mean(r['adapted']):.2f}" for r in e["rows"]]
            lines.append(f"| {e['depth']} | " + " | ".join(cells) + f" | `{e['source']}` |")
        lines.append("")
    return "\n".join(lines)


def _replace_block(markdown: Path, begin: str, end: str, body: str) -> None:
    """Rewrite the text between the ``begin`` / ``end`` markers (appended when absent)."""
    text = markdown.read_text() if markdown.is_file() else "# Results\n"
    if (begin in text) != (end in text):
        raise ValueError(f"--markdown {markdown} has only one of the markers {begin} / {end}: "
                         f"restore the other one")
    if begin not in text:
        text += f"\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    markdown.write_text(f"{head}{begin}\n{body}\n{end}{tail}")


def _paper_key(name: str, steps: int) -> str:
    """Our table key -> the paper's column (``dpir-ffdnet`` stands for DPIR)."""
    if name.startswith("dpir"):
        return "dpir"
    if name.endswith(f"_{steps}"):
        return name.rsplit("_", 1)[0] + "_50"
    return name


def markdown_table(results: dict) -> str:
    """Ours beside the paper's Table 1 (PSNR dB mean ± std, SSIM, seconds per image)."""
    steps = results["config"]["steps"]
    shown = {0, 1, 20, steps}
    lines = []
    for task, row in results["table"].items():
        paper = results["paper"].get(task, {})
        n_test = len(results["tasks"][task]["test_images"])
        lines += [f"**{TASK_TITLES.get(task, task)}**, {n_test} test images", "",
                  "| method | PSNR (dB) | SSIM | s / image | fine-tuning s | lr | paper (dB) |",
                  "|---|---|---|---|---|---|---|"]
        runs = results["tasks"][task]["pdnet"]
        for name, v in row.items():
            last = name.rpartition("_")[2]
            if "_ft_" in name and last.isdigit() and int(last) not in shown:
                continue
            if "_ft_" in name and last == "0" and "_ft_sup_" not in name:
                continue  # step 0 is the initialisation itself: one row per init
            ref = paper.get(_paper_key(name, steps)) if steps == 50 else None
            ref_s = f"{ref[0]:.2f} ± {ref[1]:.2f}" if ref else ""
            run = runs.get(name.rpartition("_")[0]) if "_ft_" in name else None
            ft, lr = "", ""
            if run and last != "0":  # tables written before lr_grid used config.lr throughout
                ft = f"{run['finetune_seconds']:.0f} (all {steps})"
                lr = f"{run.get('lr', results['config']['lr']):g}"
            lines.append(f"| {name} | {v['psnr_mean']:.2f} ± {v['psnr_std']:.2f} | "
                         f"{v['ssim_mean']:.3f} | {v['sec_per_image']:.2f} | {ft} | {lr} | "
                         f"{ref_s} |")
        lines.append("")
    for name, entry in results.get("training_tasks", {}).items():
        lines += [f"**Training tasks on Set3C, {INIT_LABELS.get(name, name)}, depth "
                  f"{entry['depth']}** (inner = 1 {entry['inner']['loss']} step, lr "
                  f"{entry['inner']['lr']:g}, on each image's own measurements)", "",
                  "| task | A⁺y | meta θ | inner |", "|---|---|---|---|"]
        for r in entry["rows"]:
            lines.append(f"| {r['task']} | {_mean(r['pseudo_inverse']):.2f} | "
                         f"{_mean(r['model']):.2f} | {_mean(r['adapted']):.2f} |")
        lines.append("")
    return "\n".join(lines)


def write_report(results_path: str | Path, figures: str | Path, markdown: str | Path | None
                 ) -> list[Path]:
    """Rebuild every figure (and the results page's table) from ``results_path``: a Table 1
    suite's JSON or a ``depth`` one."""
    results_path = Path(results_path)
    try:
        results = json.loads(results_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"--results {results_path} is not JSON ({e.msg} at line {e.lineno})"
                         ) from None
    if not isinstance(results, dict) or not (results.get("suite") == "depth" or isinstance(
            results.get("tasks"), dict)):
        raise ValueError(f"--results {results_path} is not the JSON of `python -m "
                         f"reproductions table1` or `depth`")
    figures = Path(figures)
    staging = figures.with_name(f".{figures.name}.tmp-{os.getpid()}")
    try:
        staging.mkdir(parents=True, exist_ok=True)
        names, block = _render(results, results_path, staging)
        table = (DEPTH_BEGIN, DEPTH_END, depth_table(results)) if block == "depth" else (
            BEGIN, END, markdown_table(results))
    except (KeyError, TypeError, IndexError, AttributeError, ValueError) as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise ValueError(f"--results {results_path} lacks what the report needs "
                         f"({type(e).__name__}: {e}); nothing was written") from None
    # Everything rendered: only now are the figures moved in and the markdown rewritten.
    figures.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        os.replace(staging / name, figures / name)
        written.append(figures / name)
    shutil.rmtree(staging, ignore_errors=True)
    if markdown:
        _replace_block(Path(markdown), *table)
        written.append(Path(markdown))
    return written


def _render(results: dict, results_path: Path, folder: Path) -> tuple[list[str], str]:
    """Draw every figure of ``results`` into ``folder``; returns the file names and which
    markdown block the results fill ("depth" or "table1")."""
    if results.get("suite") == "depth":
        return [training_tasks_vs_depth(results, folder / "training_tasks_depth.png").name], \
            "depth"
    visuals_path = results_path.with_name(results_path.stem + "_visuals.safetensors")
    written = []
    for task in results["tasks"]:
        curves = finetune_curves(results, task, folder / f"finetune_curves_{task}.png")
        if curves is not None:
            written.append(curves.name)
        if visuals_path.is_file():
            written.append(visual(results, visuals_path, task, folder / f"visual_{task}.png").name)
    if "training_tasks" in results:
        written.append(training_tasks(results, folder / "training_tasks.png").name)
    return written, "table1"
