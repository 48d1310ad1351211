"""metaprior command line. ``metaprior <command> --help`` for each command.

The product commands: ``meta-train``, ``adapt``, ``measure``, ``reconstruct``, ``evaluate``
and ``demo`` (:mod:`metaprior.commands` holds each one's options and code). Every command
resolves its options the same way: dataclass defaults < ``--config`` JSON < flags
(:func:`metaprior.config.resolve`). The paper's reproductions have their own entry point,
``python -m reproductions``, beside the package.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from metaprior import __version__, pretrained, runtime
from metaprior.extras import MissingExtraError
from metaprior.outputs import RunFolderError, check_writable_dir

THREADS_HELP = ("intra-op CPU threads (default 1: on small 2-core machines, OpenMP spin-waiting "
                "next to any other busy process makes small ops 10-100x slower with 2 threads)")


@dataclass(frozen=True)
class DeviceOptions:
    device: str = "cpu"  # torch device: cpu or cuda


def _setup(args) -> None:
    runtime.configure_cpu(args.threads)


def cmd_meta_train(args) -> None:
    from metaprior.config import build_config, check_device, explicit_values, load_config_file
    from metaprior.train import TrainConfig, meta_train
    from metaprior.train_config import SECTIONS

    file_values = load_config_file(args.config)
    config = build_config(TrainConfig, file_values, args)
    check_device(config.run.device)
    given = explicit_values(TrainConfig, file_values, args)
    arch = config.network.architecture
    for key, value in given.items():  # the other architecture's options would be ignored
        section, name = key.split(".")
        if args.resume:
            continue  # a resumed run keeps its saved configuration, checked by resume_config
        default = getattr(SECTIONS[section](), name)  # the section's own default config
        if key in APPLIES_WITH and value != default:
            option, needed = APPLIES_WITH[key]
            if getattr(getattr(config, option.split(".")[0]), option.split(".")[1]) != needed:
                flag = "--" + option.split(".")[1].replace("_", "-")
                needs = flag if needed is True else f"{flag} {needed}"
                raise ValueError(f"--{name.replace('_', '-')} applies to {needs} only: drop "
                                 f"it or pass {needs}")
        if section not in ARCHITECTURE_SECTIONS:
            continue
        if ARCHITECTURE_SECTIONS[section] != arch and value != default:
            raise ValueError(f"--{name.replace('_', '-')} applies to --architecture "
                             f"{ARCHITECTURE_SECTIONS[section]} only; this run trains {arch}: "
                             f"drop it or pass --architecture {ARCHITECTURE_SECTIONS[section]}")
    meta_train(config, resume=args.resume, progress=not args.no_progress,
               steps=getattr(args, "optim.steps"), overwrite=args.overwrite, given=given)


#: meta-train's option sections that configure one architecture's network.
ARCHITECTURE_SECTIONS = {"model": "pdnet", "hqs": "hqs"}
#: meta-train options that one setting of another uses alone: option -> (that one, its value).
APPLIES_WITH = {"meta.cg_iters": ("meta.hypergradient", "implicit"),
                "meta.cg_tol": ("meta.hypergradient", "implicit"),
                "optim.inner_lr_lr": ("meta.learn_inner_lr", True)}


def _add_meta_train(sub) -> None:
    from metaprior.train_config import SECTIONS

    p = _add_command(
        sub, "meta-train", SECTIONS, cmd_meta_train,
        "meta-train a network on training tasks (bilevel, eq. 2)",
        "Meta-train a network. Each outer step: per task, K inner steps on BSDS "
        "train+test patches, supervised outer loss on BSDS val patches, hypergradient by "
        "maml | first_order | implicit, or reptile's pseudo-gradient (K supervised steps on the "
        "task's two batches in turn) (or --objective joint: plain multi-task pre-training on "
        "the same batches, no inner step); outer Adam on their sum. Writes OUT/config.json, "
        "OUT/log.jsonl, OUT/checkpoints/, OUT/model.safetensors.")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=False,
                   help="continue from OUT/checkpoints/latest with its saved configuration "
                   "(--steps may extend it and --device move it; any other option that differs "
                   "from the saved value is refused)")
    p.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                   help="replace the run already in --out (its files are removed only once "
                   "the new configuration and data have loaded); without it, or --resume, a "
                   "folder holding a run is refused")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_demo(args) -> None:
    from metaprior.config import resolve
    from metaprior.demo import DemoConfig, run_demo

    config = resolve(args, {"demo": DemoConfig, "run": DeviceOptions})["demo"]
    check_writable_dir(config.out, "--out")
    run_demo(config, device=args.device)


def _add_command(sub, name: str, sections: dict[str, type], func, help: str,
                 description: str | None = None, **flag_options) -> argparse.ArgumentParser:
    """A subcommand whose options are the fields of its sections' dataclasses, plus
    ``--config`` (a JSON file of the same fields by section) and ``--threads``."""
    from metaprior.config import add_dataclass_arguments

    p = sub.add_parser(name, help=help, description=description or help)
    names = ", ".join(f'"{k}"' for k in sections)
    p.add_argument("--config", help=f"JSON file of options by section ({names}); flags win")
    p.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    add_dataclass_arguments(p, sections, **flag_options)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    from metaprior.adapt import AdaptConfig
    from metaprior.commands import adapt, evaluate, io
    from metaprior.demo import DemoConfig

    parser = OneLineParser(prog="metaprior",
                                     description=__doc__.split("\n\n")[0].replace("``", ""))
    parser.add_argument("--version", action="version", version=f"metaprior {__version__}")
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                        help="a Python file run before the command, e.g. one that registers "
                        "your own operators as tasks (metaprior.register_task); repeatable")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_command(sub, "demo", {"demo": DemoConfig, "run": DeviceOptions}, cmd_demo,
                 "the product on scikit-image's pictures, end to end (no data root needed)")
    _add_meta_train(sub)
    _add_command(sub, "measure", {"measure": io.MeasureOptions}, io.cmd_measure,
                 "simulate measurements of a task from an image folder")
    names = ", ".join(pretrained.available())
    _add_command(sub, "adapt", {"adapt": AdaptConfig, **adapt.SECTIONS}, adapt.cmd_adapt,
                 "fine-tune a (meta-)model on a task, with or without ground truth",
                 f"Fine-tune a model (a file, or by name: {names}) on a task from a "
                 "measurement file or an image folder. The step rule (lr, λ, optimizer, the "
                 "relative learning rates lr_scales, parameters held fixed) is the model's own "
                 "for the loss (its metadata adapt and adapt.by_loss) unless given; the loss "
                 "is the model's recommended one, else unsupervised (measurement consistency): "
                 "also supervised, equivariant (plus the 90°-rotation equivariant-imaging "
                 "term, no ground truth either) or robust-equivariant (the same for noisy "
                 "data: SURE at the task's noise level instead of consistency).",
                 exclude={"adapt": ("lr_scales",)}, defaults_text=adapt.DEFAULTS_TEXT)
    _add_command(sub, "reconstruct", {"reconstruct": io.ReconstructOptions},
                 io.cmd_reconstruct, "apply a model to a measurement file, write PNGs")
    _add_command(sub, "evaluate", {"evaluate": evaluate.EvaluateOptions},
                 evaluate.cmd_evaluate,
                 "PSNR of a model on any tasks (Set3C, the demo pictures or a folder), each "
                 "at its task's peak; --adapt-steps also scores it after adapting to each image")
    return parser


def load_plugin(path: str) -> None:
    """Run the Python file ``path`` (its tasks register themselves), with a one-line error
    if it is missing or fails."""
    import importlib.util

    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"--plugin {path} does not exist")
    if not file.is_file() or file.suffix != ".py":
        raise FileNotFoundError(f"--plugin {path} is not a .py file")
    spec = importlib.util.spec_from_file_location(f"metaprior_plugin_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's code: report it in one line, whatever it raised
        raise RuntimeError(f"--plugin {path} failed: {type(e).__name__}: {e}") from None


def _switches(parser: argparse.ArgumentParser) -> set[str]:
    """The option strings of every switch of the commands (``--flag`` and ``--no-flag`` of a
    negatable one, the one string of a plain one)."""
    found = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _switches(sub)
        elif isinstance(action, argparse.BooleanOptionalAction) or (
                isinstance(action, argparse._StoreConstAction) and action.const is True):
            found |= set(action.option_strings)  # --flag and --no-flag, or a plain switch
    return found


class OneLineParser(argparse.ArgumentParser):
    """argparse with its usage errors (a wrong type, a missing value, an unknown flag) as one
    line, ``error: <message> (see <command> --help)``, exit status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def legacy_bool_values(argv: list[str], switches: set[str]) -> list[str]:
    """Command lines where a bool option takes a value (``--learn-inner-lr true``,
    ``--overwrite=false``), as switches (``--learn-inner-lr``, ``--no-overwrite``)."""
    out: list[str] = []
    for token in argv:
        flag, eq, given = token.partition("=")
        if eq and flag in switches and given.lower() in ("true", "false"):
            out.append(flag)
            token = given
        value = token.lower()
        if out and out[-1] in switches and value in ("true", "false"):
            if value == "false":  # the switch's opposite, or none for a plain switch
                flag = out[-1]
                opposite = ("--" + flag[5:] if flag.startswith("--no-") else "--no-" + flag[2:])
                if opposite in switches:
                    out[-1] = opposite
                else:
                    out.pop()
            continue
        out.append(token)
    return out


def one_line_errors(func, *args):
    """``func(*args)``, with a bad input (``ValueError``, ``OSError``, a failed run) reported as
    ``error: <one line>`` and exit status 1 instead of a traceback: what every command, the
    reproductions and the example scripts do."""
    try:
        return func(*args)
    except (ValueError, OSError, FloatingPointError, RuntimeError, RunFolderError,
            MissingExtraError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        message = lines[0][:500] if lines else type(e).__name__  # one line, whatever e holds
        raise SystemExit(f"error: {message}") from None
    except KeyboardInterrupt:
        print("error: interrupted (a run that wrote checkpoints continues from the last one "
              "with --resume)", file=sys.stderr)
        if hasattr(signal, "SIGINT") and hasattr(os, "kill"):  # die by SIGINT, as Python
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # does: a calling shell stops too
            os.kill(os.getpid(), signal.SIGINT)
        raise SystemExit(130) from None


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    one_line_errors(_main, argv)  # the parser's loading too: Ctrl-C is one line


def _main(argv: list[str]) -> None:
    from metaprior.config import errors_in_flag_words

    parser = build_parser()
    args, unknown = parser.parse_known_args(legacy_bool_values(argv, _switches(parser)))
    if unknown:  # named by the command's own parser, which points at its own --help
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        commands.choices[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    with errors_in_flag_words(parser, argv):  # a section's check named by the flag given
        for path in args.plugin:
            load_plugin(path)
        _setup(args)
        args.func(args)


if __name__ == "__main__":
    sys.exit(main())
