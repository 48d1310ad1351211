"""Adapted solvers against the classical ones on validation operators and validation images.

For each operator: TV and DPIR-FFDNet with their one hyper-parameter grid-searched on BSDS500
train crops, then every model given, before adaptation (θ) and after fine-tuning on a stream of
BSDS500 train patches (supervised or without ground truth), scored after 0, 1, 5, 20 and 50
steps. Everything is scored on validation images only (BSDS500 val centre crops; for ``mri4``
the held-out fine-tuning knee slices), never on Set3C or the MRI test slices. Given several
fine-tuning learning rates, the one kept is chosen as the baselines' hyper-parameters are: by
PSNR after the last step on the grid-search crops (``grid_psnr``), not on the scored ones;
or, with ``--choose-lr label-free``, without ground truth: by the lowest robust-equivariant
loss of the grid-search crops' measurements (``grid_label_free``, the criterion of
``metaprior.search_lr(criterion="label-free")``). Every lr's curves are kept too
(``curves_by_lr``).

The operators: ``sr2`` and ``mri4`` (Table 1's, on their validation data), and four of our own,
outside the training families of :mod:`metaprior.families`:

* ``val-diffraction``: a fixed optical (Zernike) blur, deepinv ``DiffractionBlurGenerator``
  (seed 7), noise std 0.01;
* ``val-blocks``: 4×4-pixel blocks missing at random (rate 0.5), noise std 0.01;
* ``val-sr3``: ×3 bilinear-filtered downsampling, noise std 0.01;
* ``val-radial``: 2-D variable-density random k-space points (25 %), no noise.

    python -m reproductions.solver_validation --models hqs-families \
        --operators val-diffraction,val-blocks,val-sr3,val-radial --losses equivariant \
        --lr 3e-3 --out reproductions/results/solver_validation.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import deepinv as dinv
import torch

import metaprior as mp
from metaprior import baselines as bl
from metaprior.checkpoint import write_bytes_atomic
from metaprior.data import PatchSampler, bsds500
from metaprior.evaluate import finetune_and_score, score
from metaprior.metrics import mean_std
from metaprior.physics import RealMRI
from reproductions.table1 import Table1Config, centre_crop, load_task_data, spread


def _diffraction(shape, generator, device):
    gen = dinv.physics.generator.DiffractionBlurGenerator((25, 25), fc=0.15,
                                                          rng=torch.Generator().manual_seed(7))
    psf = gen.step(batch_size=1, seed=7)["filter"].float()
    physics = dinv.physics.BlurFFT(img_size=tuple(shape[1:]), filter=psf, device=device)
    physics.norm_sq_bound = 1.0
    return physics


def _blocks(shape, generator, device):
    b, _, h, w = shape
    coarse = (torch.rand((b, 1, -(-h // 4), -(-w // 4)), generator=generator) >= 0.5).float()
    mask = coarse.repeat_interleave(4, -2).repeat_interleave(4, -1)[..., :h, :w]
    physics = dinv.physics.Inpainting(img_size=tuple(shape[1:]), mask=mask.to(device),
                                      device=device)
    physics.norm_sq_bound = 1.0  # a 0/1 mask
    return physics


def _sr3(shape, generator, device):
    return dinv.physics.Downsampling(img_size=tuple(shape[1:]), filter="bilinear", factor=3,
                                     device=device, padding="circular")


def _radial(shape, generator, device):
    h, w = shape[-2:]
    fy = torch.fft.fftshift(torch.fft.fftfreq(h))[:, None]
    fx = torch.fft.fftshift(torch.fft.fftfreq(w))[None, :]
    density = torch.exp(-(fx**2 + fy**2) / (2 * 0.12**2))
    density = density * (0.25 * h * w / density.sum())
    g = torch.Generator().manual_seed(11)
    mask = (torch.rand((h, w), generator=g) < density.clamp(max=1)).float()
    mask[h // 2 - 4: h // 2 + 4, w // 2 - 4: w // 2 + 4] = 1.0
    return RealMRI(mask, tuple(shape[1:]), device=device)


OPERATORS = {
    "val-diffraction": mp.Task("val-diffraction", _diffraction, noise_sigma=0.01),
    "val-blocks": mp.Task("val-blocks", _blocks, noise_sigma=0.01),
    "val-sr3": mp.Task("val-sr3", _sr3, noise_sigma=0.01),
    "val-radial": mp.Task("val-radial", _radial),
}


def operator_data(name: str, args) -> dict:
    """Fine-tuning stream, grid-search batches and validation batches of one operator."""
    if name in ("sr2", "mri4"):
        data = load_task_data(name, Table1Config(tasks=(name,), grid_images=args.val_images,
                                                 grid_crop=args.crop),
                              args.data_root)
        return {"stream": data.select_stream, "grid": data.grid, "val": data.val,
                "peak": data.peak}
    task = OPERATORS[name]
    train = bsds500(args.data_root, ("train", "test"))

    def stream():
        sampler = PatchSampler(train, args.patch_size, seed=0)
        g = torch.Generator().manual_seed(1)
        return lambda step: task.sample(sampler.sample(args.batch), g)

    g = torch.Generator().manual_seed(2)
    grid = [task.sample(centre_crop(im, args.crop).unsqueeze(0), g)
            for im in spread(train, 4)]
    val = [task.sample(centre_crop(im, args.crop).unsqueeze(0), g)
           for im in spread(bsds500(args.data_root, ("val",)), args.val_images)]
    return {"stream": stream, "grid": grid, "val": val, "peak": 1.0}


def load(name: str):
    if name == "hqs-dpir":  # the unrolled DPIR before any training
        return mp.HQSNet(), {}
    return mp.load_model(name)


def add_shared_args(ap: argparse.ArgumentParser) -> None:
    """The options this script shares with :mod:`reproductions.solver_iterations`."""
    ap.add_argument("--dihedral", action="store_true",
                    help="HQSNets denoise iteration k in the k-th rotation/flip "
                         "(HQSNetConfig.dihedral)")
    ap.add_argument("--crop", type=int, default=120)
    ap.add_argument("--val-images", type=int, default=8)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", required=True)


def with_test_options(model, iterations: int = 0, dihedral: bool = False):
    """An HQSNet resampled to ``iterations`` (0: as it is) and with ``dihedral`` turned on."""
    if (iterations or dihedral) and not isinstance(model, mp.HQSNet):
        raise SystemExit(f"--iterations and --dihedral apply to HQSNets, not to a "
                         f"{type(model).__name__}")
    if iterations:
        model = model.with_iterations(iterations)
    if dihedral:
        model = mp.HQSNet.from_state(replace(model.config, dihedral=True), model.state_dict())
    return model


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="hqs-dpir")
    ap.add_argument("--operators", default="val-diffraction,val-blocks,val-sr3,val-radial")
    ap.add_argument("--losses", default="equivariant")
    ap.add_argument("--lr", default="3e-3",
                    help="fine-tuning lr, or a comma list (the best on the grid crops is kept)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--iterations", type=int, default=0,
                    help="run HQSNets with this many iterations (schedule resampled; 0: theirs)")
    ap.add_argument("--frozen", default="", help="parameter prefixes held fixed, e.g. denoiser")
    ap.add_argument("--precision", default="float32", choices=("float32", "bfloat16"),
                    help="bfloat16: mixed-precision fine-tuning steps (AdaptConfig.precision)")
    ap.add_argument("--coarse-iterations", type=int, default=0,
                    help="adapt an N-iteration copy and carry its change over "
                         "(AdaptConfig.coarse_iterations; 0: the model itself)")
    ap.add_argument("--choose-lr", default="grid-psnr", choices=("grid-psnr", "label-free"),
                    help="keep the lr of the best PSNR on the grid crops, or of the lowest "
                         "label-free loss of their measurements (no ground truth)")
    ap.add_argument("--baselines", default="tv,dpir-ffdnet")
    ap.add_argument("--patch-size", type=int, default=60)
    ap.add_argument("--batch", type=int, default=8)
    add_shared_args(ap)
    args = ap.parse_args(argv)
    mp.configure_cpu(1)  # as every command: one thread, the heap kept
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {"operators": {}}
    results["command"] = "python -m reproductions.solver_validation " + " ".join(
        sys.argv[1:] if argv is None else argv)
    denoiser = None
    for op in args.operators.split(","):
        t0 = time.perf_counter()
        data = operator_data(op, args)
        entry = results["operators"].setdefault(op, {"baselines": {}, "models": {}})
        for name in filter(None, args.baselines.split(",")):
            if name in entry["baselines"]:
                continue
            kind = name.partition("-")[0]
            if kind in bl.DPIR_ITERATIONS and denoiser is None:
                denoiser = bl.make_denoiser("ffdnet")
            value, _grid = bl.grid_search(lambda v, k=kind, d=denoiser: bl.method(k, v, d),
                                         bl.GRIDS[kind], data["grid"], data["peak"])
            t_score = time.perf_counter()
            psnrs = score(bl.method(kind, value, denoiser), data["val"], data["peak"])
            entry["baselines"][name] = {
                "value": value, "psnr": mean_std(psnrs)[0],
                "sec_per_image": (time.perf_counter() - t_score) / len(psnrs)}
            print(f"{op} {name} ({value:g}): {entry['baselines'][name]['psnr']:.2f}", flush=True)
        for model_name in args.models.split(","):
            model, _meta = load(model_name)
            model = with_test_options(model, args.iterations, args.dihedral)
            theta = mp.parameters_of(model)
            for loss in args.losses.split(","):
                tag = (f"{Path(model_name).stem}"
                       + (f"@{args.iterations}" if args.iterations else "")
                       + ("/dihedral" if args.dihedral else "") + f"/{loss}"
                       + (f"/frozen-{args.frozen}" if args.frozen else "")
                       + (f"/{args.precision}" if args.precision != "float32" else "")
                       + (f"/coarse{args.coarse_iterations}" if args.coarse_iterations
                          else "")
                       + ("/lr-label-free" if args.choose_lr == "label-free" else ""))
                rows = []
                for lr in (float(v) for v in args.lr.split(",")):
                    rule = mp.AdaptConfig(steps=args.steps, lr=lr, loss=loss,
                                          frozen=tuple(filter(None, args.frozen.split(","))),
                                          precision=args.precision,
                                          coarse_iterations=args.coarse_iterations)
                    try:  # the grid-search crops are scored too, to choose the lr on
                        run = finetune_and_score(model, theta, data["stream"](), rule,
                                                 data["grid"] + data["val"],
                                                 [n for n in (0, 1, 5, 20, 50) if n < args.steps],
                                                 data["peak"])
                    except FloatingPointError:
                        continue
                    n_grid = len(data["grid"])
                    row = {"lr": lr, "s_per_step": run["s_per_step"],
                           "frozen": list(rule.frozen), "precision": rule.precision,
                           "coarse_iterations": rule.coarse_iterations}
                    for key, part in (("grid_psnr", slice(None, n_grid)),
                                      ("psnr", slice(n_grid, None))):
                        row[key] = {n: mean_std(r["psnr"][part])[0]
                                    for n, r in run["records"].items()}
                    row["grid_label_free"] = mp.label_free_loss(
                        model, run["params"], data["grid"])
                    rows.append(row)
                    print(f"{op} {tag} lr {lr:g}: "
                          + " ".join(f"{n}:{v:.2f}" for n, v in row["psnr"].items())
                          + f" (grid {row['grid_psnr'][args.steps]:.2f}; "
                          + f"{run['s_per_step']:.2f} s/step)", flush=True)
                if rows:
                    finite = [r for r in rows if math.isfinite(r["grid_label_free"])]
                    best = (min(finite or rows, key=lambda r: r["grid_label_free"])
                            if args.choose_lr == "label-free" else
                            max(rows, key=lambda r: r["grid_psnr"][args.steps]))
                    entry["models"][tag] = {**best, "lrs_tried": {
                        str(r["lr"]): r["grid_psnr"][args.steps] for r in rows},
                        "label_free_by_lr": {str(r["lr"]): r["grid_label_free"] for r in rows},
                        "curves_by_lr": {str(r["lr"]): {k: r[k] for k in ("psnr", "grid_psnr")}
                                         for r in rows}}
        entry["seconds"] = entry.get("seconds", 0.0) + time.perf_counter() - t0
        results["machine"] = {"platform": platform.platform(), "threads": 1,
                              "torch": torch.__version__}
        out.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(out, json.dumps(results, indent=1, default=str).encode())
    return results


if __name__ == "__main__":
    main()
