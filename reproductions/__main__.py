"""The paper's reproductions: ``python -m reproductions <command> --help`` for each.

Commands: ``table1`` (Table 1), ``scratch`` (its from-scratch PDNet column), ``depth``
(Fig. 3 across depths), ``report`` (figures and markdown tables from their JSON), ``linear``
(the linear Gaussian toy of Sec. 3, Fig. 2) and ``check`` (the committed results are
complete). Options resolve as the product's: dataclass defaults < ``--config`` JSON < flags.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from metaprior.cli import THREADS_HELP, OneLineParser, load_plugin, one_line_errors
from metaprior.config import (
    add_dataclass_arguments,
    build_section,
    check_device,
    errors_in_flag_words,
    load_config_file,
    replace_from_dict,
    resolve,
)
from metaprior.outputs import check_output_file, check_writable_dir
from metaprior.runtime import configure_cpu


@dataclass(frozen=True)
class SuiteRun:
    out: str | None = None  # results JSON (default runs/<command>.json); scratch: the model
    data_root: str | None = None  # data root (default $METAPRIOR_DATA)
    grid_cache: str | None = None  # table1: grid/lr choices to reuse, update (--quick: if new)
    scratch_steps: int | None = None  # scratch: training steps (paper: 10k)
    resume: bool = False  # scratch: continue from <out stem>.run/checkpoints
    overwrite: bool = False  # scratch: start afresh over <out stem>.run/checkpoints
    quick: bool = False  # smoke-sized protocol: 2 steps, 1 test image, 1 grid image
    device: str = "cpu"  # torch device: cpu or cuda


@dataclass(frozen=True)
class ReportOptions:
    results: str  # the JSON of `table1` (or of `depth`)
    figures: str | None = None  # figure folder (default: <results stem>_figures)
    markdown: str | None = None  # also rewrite the table between its markers in this file


@dataclass(frozen=True)
class LinearRun:
    out: str = "runs/linear"  # output folder
    sweep: bool = False  # also sweep the number of training placements (~8.5 min)
    preset: str = "paper"  # paper (20 Adam inner steps) or exact (exact_inner_config())


#: Where each JSON-writing protocol puts its results when --out is not given.
SUITE_OUT = {"table1": "runs/table1.json", "depth": "runs/training_tasks_depth.json"}


def suite_config(args, quick: bool = False):
    """The :class:`~reproductions.table1.Table1Config` of a protocol command: the defaults
    (``--quick``: :func:`~reproductions.table1.quick_config`) < ``--config`` < flags."""
    from reproductions.table1 import Table1Config, quick_config

    base = quick_config() if quick else Table1Config()
    overrides = load_config_file(args.config)
    if "lr" in overrides and overrides.get("lr_grid", True):
        raise ValueError("--config: lr is used only with \"lr_grid\": [] (otherwise each run's "
                         "lr is chosen from lr_grid on held-out fine-tuning images)")
    config = replace_from_dict(base, overrides, "--config")
    return build_section("table1", Table1Config, {}, args, base=config)


def cmd_suite(args) -> None:
    from reproductions.table1 import run_depth_sweep, run_table1, train_scratch

    run = build_section("run", SuiteRun, {}, args)
    check_device(run.device)
    config = suite_config(args, run.quick)
    if args.command != "scratch" and (run.resume or run.scratch_steps is not None):
        raise ValueError("--resume and --scratch-steps apply to `scratch` only")
    if args.command == "scratch":
        if len(config.tasks) != 1 or run.scratch_steps is None:
            raise ValueError("scratch needs one --tasks TASK and --scratch-steps N")
        if not (run.out or "").endswith(".safetensors"):
            raise ValueError("scratch writes a model: give --out PATH.safetensors")
        path = train_scratch(config.tasks[0], config, run.scratch_steps, run.out,
                             run.data_root, run.device, resume=run.resume,
                             overwrite=run.overwrite)
        print(f"wrote {path}")
        return
    out = run.out or SUITE_OUT[args.command]
    check_output_file(out, "--out", ".json")
    if args.command == "depth":
        results = run_depth_sweep(config, out, run.data_root, run.device)
    else:
        # a smoke run never changes a cache it did not start (e.g. the committed choices)
        keep = run.quick and run.grid_cache is not None and Path(run.grid_cache).exists()
        results = run_table1(config, out, run.data_root, run.device, run.grid_cache,
                             update_cache=not keep)
    print(f"wrote {out} ({results['wall_seconds'] / 60:.1f} min); figures: python -m "
          f"reproductions report --results {out}")


def cmd_report(args) -> None:
    from reproductions.report import write_report

    resolve(args, {"report": ReportOptions})
    results = Path(args.results)
    if not results.is_file():
        raise FileNotFoundError(f"--results {args.results} does not exist: run python -m "
                                f"reproductions table1 (or depth) first")
    figures = args.figures or str(results.with_name(results.stem + "_figures"))
    target = f"the table in {args.markdown} and " if args.markdown else ""
    print(f"rewriting {target}the figures in {figures}/ from {args.results}")
    for path in write_report(results, figures, args.markdown or None):
        print(f"wrote {path}")


def cmd_linear(args) -> None:
    from reproductions.linear.experiment import (
        LinearExperimentConfig,
        exact_inner_config,
        run_linear_experiment,
    )

    resolve(args, {"run": LinearRun}, extra=("linear",))
    if args.preset not in ("paper", "exact"):
        raise ValueError(f"--preset must be paper or exact, got {args.preset!r}")
    base = exact_inner_config() if args.preset == "exact" else LinearExperimentConfig()
    config = build_section("linear", LinearExperimentConfig, args.file_values, args, base=base)
    check_writable_dir(args.out, "--out")
    result = run_linear_experiment(config, Path(args.out), sweep=args.sweep)
    print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=1)[:4000])
    print(f"wrote {Path(args.out) / 'figure2.png'} and {Path(args.out) / 'linear.json'}")


def cmd_check(args) -> None:
    from reproductions.check_results import check

    if not Path(args.results).is_dir():
        raise ValueError(f"--results {args.results} is not a folder: pass the folder of the "
                         f"results (reproductions/results)")
    problems = check(Path(args.results))
    if problems:
        raise ValueError(f"{len(problems)} problem(s) in {args.results}: " + "; ".join(problems))
    print(f"committed results OK ({args.results})")


def build_parser() -> argparse.ArgumentParser:
    from reproductions.check_results import RESULTS
    from reproductions.linear.experiment import LinearExperimentConfig
    from reproductions.table1 import Table1Config

    parser = OneLineParser(prog="python -m reproductions", description=__doc__)
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                        help="a Python file run first, e.g. one registering your own tasks "
                        "(metaprior.register_task); repeatable")
    sub = parser.add_subparsers(dest="command", required=True)
    protocols = {
        "table1": "Table 1: SR x2 and MRI x4 (or --tasks), baselines grid-searched on "
                  "fine-tuning images, the PDNet initialisations fine-tuned 0-50 steps",
        "scratch": "Table 1's from-scratch PDNet for one task (--scratch-steps, written to "
                   "--out .safetensors; --resume continues it)",
        "depth": "Fig. 3: the models of depth_models on T1-T4, θ and one inner step",
    }
    for name, text in protocols.items():
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--config", help="JSON of Table1Config fields (e.g. a file of "
                       "reproductions/configs/); flags win")
        add_dataclass_arguments(p, {"table1": Table1Config, "run": SuiteRun})
        p.set_defaults(func=cmd_suite)
    p = sub.add_parser("report", help="figures and markdown table from a table1/depth JSON")
    p.add_argument("--config", help="JSON file of options ({\"report\": {...}}); flags win")
    add_dataclass_arguments(p, {"report": ReportOptions})
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("linear", help="linear Gaussian toy of Sec. 3: meta-train θy on masks "
                       "of area A, fine-tune without ground truth on area B, Fig. 2 + JSON")
    p.add_argument("--config", help="JSON file of options ({\"linear\": ..., \"run\": ...})")
    add_dataclass_arguments(p, {"linear": LinearExperimentConfig, "run": LinearRun})
    p.set_defaults(func=cmd_linear)
    p = sub.add_parser("check", help="the committed results are complete and finite")
    p.add_argument("--results", default=str(RESULTS), help="results folder")
    p.set_defaults(func=cmd_check)
    for p in sub.choices.values():
        p.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)

    def run() -> None:
        parser = build_parser()
        args = parser.parse_args(argv)
        with errors_in_flag_words(parser, argv):  # a section's check named by the flag given
            configure_cpu(args.threads)
            for path in args.plugin:
                load_plugin(path)
            args.func(args)

    one_line_errors(run)


if __name__ == "__main__":
    sys.exit(main())
