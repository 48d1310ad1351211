"""``metaprior evaluate``: PSNR of a model on any tasks (registered, parametrised or from a
plugin), before and optionally after a few adaptation steps on each image."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from metaprior.outputs import check_output_file


@dataclass(frozen=True)
class EvaluateOptions:
    model: str  # model .safetensors, run folder or model name (metaprior.pretrained)
    tasks: tuple[str, ...] = ("denoise", "tv", "deblur", "inpaint", "sr2", "mri4")  # task names
    images: str = "set3c"  # set3c | demo | a folder
    data_root: str | None = None  # data root of --images set3c (default $METAPRIOR_DATA)
    json: str | None = None  # also write the per-image PSNRs here
    adapt_steps: int = 0  # also score after N inner steps on each image (Fig. 3; 0: off)
    seed: int = 0  # random seed of the operators and the noise
    device: str = "cpu"  # torch device: cpu or cuda
    overwrite: bool = False  # replace an existing --json


def cmd_evaluate(args) -> None:
    from metaprior.adapt import AdaptConfig, parameters_of
    from metaprior.checkpoint import load_model, write_bytes_atomic
    from metaprior.config import resolve
    from metaprior.evaluate import load_eval_images, summarize, task_table
    from metaprior.tasks import get_task

    resolve(args, {"evaluate": EvaluateOptions})
    if not args.tasks:
        raise ValueError("--tasks is empty: name at least one task, e.g. --tasks sr2,mri4")
    if args.adapt_steps < 0:
        raise ValueError(f"--adapt-steps must be >= 0 (0: no adaptation), got "
                         f"{args.adapt_steps}")
    if args.data_root is not None and args.images != "set3c":
        raise ValueError(f"--data-root applies to --images set3c (--images {args.images} is "
                         f"read as given): drop --data-root")
    if args.json:
        check_output_file(args.json, "--json", ".json", overwrite=args.overwrite)
    model, meta = load_model(args.model, args.device)
    images = [im.to(args.device) for im in load_eval_images(args.images, args.data_root)]
    adapt = AdaptConfig.from_model(meta, steps=args.adapt_steps) if args.adapt_steps else None
    rows = task_table(model, parameters_of(model), list(args.tasks), images, args.seed, adapt)
    extra = f" {'adapted (dB)':>15s}" if adapt else ""
    print(f"{'task':10s} {'A^+ y (dB)':>15s} {'model (dB)':>15s}{extra}   [{args.images}, "
          f"{len(images)} images]")
    for r in rows:
        extra = f" {summarize(r['adapted']):>15s}" if adapt else ""
        print(f"{r['task']:10s} {summarize(r['pseudo_inverse']):>15s} "
              f"{summarize(r['model']):>15s}{extra}   peak {get_task(r['task']).peak}")
    if adapt:
        print(f"adapted: {adapt.steps} {adapt.loss} {adapt.optimizer} steps (lr {adapt.lr}, "
              f"λ {adapt.prox_lambda}) on each image's own measurements"
              + (" and ground truth" if adapt.loss == "supervised" else ""))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(args.json, json.dumps(rows, indent=1).encode())
