"""Command line: ``metaprior <command> --help``."""

from __future__ import annotations

import argparse
import sys

import torch

THREADS_HELP = ("intra-op CPU threads (default 1: on small 2-core machines, OpenMP spin-waiting "
                "next to any other busy process makes small ops 10-100x slower with 2 threads)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _setup(args) -> None:
    if args.threads < 1:
        raise SystemExit(f"error: --threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda requested but no CUDA device is available: "
                         "use --device cpu")


def cmd_demo(args) -> None:
    from metaprior.demo import DemoConfig, run_demo

    run_demo(DemoConfig(steps=args.steps, seed=args.seed), device=args.device)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metaprior", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="train briefly on the embedded demo images and print a PSNR "
                       "table for every task (no data root needed)")
    _common(p)
    p.add_argument("--steps", type=int, default=150, help="training steps (default 150)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    _setup(args)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    sys.exit(main())
