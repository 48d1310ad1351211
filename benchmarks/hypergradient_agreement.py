"""How far first-order MAML is from second-order MAML on the real meta-training problem.

For each training task, on one meta-batch of BSDS patches, the cosine and the relative
difference between the ``maml`` and ``first_order`` hypergradients, with one Adam inner step
and with one SGD inner step (both at the run's inner learning rate), at the random
initialisation and at a trained model. Also the amplification of Adam's first step,
:math:`\\partial\\phi/\\partial g = \\eta\\,\\epsilon/(|g| + \\epsilon)^2` per parameter: where
:math:`|g|` is below about :math:`\\sqrt{\\epsilon\\eta}`, the second-order term
:math:`\\eta\\,\\mathrm{diag}(\\epsilon/(|g|+\\epsilon)^2)\\,H` is no longer small.

Usage::

    METAPRIOR_DATA=../shared/data python benchmarks/hypergradient_agreement.py \\
        --run runs/bsds-d20-fo-2000 --out hypergradient_agreement.json
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_json
from metaprior.checkpoint import load_tensors
from metaprior.config import from_dict
from metaprior.meta.inner import adam
from metaprior.meta.maml import grad_dict
from metaprior.meta.problem import inner_loss
from metaprior.meta.step import task_hypergradient
from metaprior.train import MetaTrainer, TrainConfig

EPS = inspect.signature(adam).parameters["eps"].default  # the inner Adam's ε


def flat(params: dict) -> torch.Tensor:
    return torch.cat([v.detach().flatten() for v in params.values()])


def agreement(trainer: MetaTrainer, theta: dict, batches, meta) -> dict:
    out = {}
    for inner, outer in batches:
        row = {}
        for opt in ("adam", "sgd"):
            g = {}
            for mode in ("maml", "first_order"):
                config = dataclasses.replace(meta, hypergradient=mode, inner_optimizer=opt,
                                             inner_steps=1, workers=1)
                g[mode] = flat(task_hypergradient(trainer.model, theta, inner, outer,
                                                  config).grads)
            a, b = g["maml"], g["first_order"]
            row[opt] = {"cosine": float(a @ b / (a.norm() * b.norm())),
                        "rel_diff": float((a - b).norm() / a.norm())}
        # the first inner gradient g at θ, for Adam's amplification η ε / (|g| + ε)²
        loss = inner_loss(trainer.model, theta, theta, inner, meta.inner_loss, meta.prox_lambda)
        inner_grad = flat(grad_dict(loss, theta))
        amp = meta.inner_lr * EPS / (inner_grad.abs() + EPS) ** 2
        row["adam_amplification"] = {"median": float(amp.median()), "max": float(amp.max()),
                                     "frac_above_1": float((amp > 1).double().mean())}
        out[inner.task] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a finished meta-train run folder")
    ap.add_argument("--out", default="hypergradient_agreement.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = from_dict(TrainConfig, json.loads((args.run / "config.json").read_text()))
    trainer = MetaTrainer(cfg, log=lambda *_: None)
    results = {}
    for label in ("init", "trained"):
        if label == "trained":
            trainer.model.load_state_dict(load_tensors(args.run / "model.safetensors"))
        theta = dict(trainer.model.named_parameters())
        results[label] = agreement(trainer, theta, trainer._sample_meta_batch(), cfg.meta)
        for task, row in results[label].items():
            print(f"{label:8s} {task:8s} adam cos {row['adam']['cosine']:+.4f}  "
                  f"sgd cos {row['sgd']['cosine']:+.6f}  Adam amplification median "
                  f"{row['adam_amplification']['median']:.2g}, >1 for "
                  f"{100 * row['adam_amplification']['frac_above_1']:.0f} % of parameters")
    path = write_json(args.out, {"run": str(args.run), "results": results, "machine": machine()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
