"""End-to-end checks on the real data sets (marked ``data``; CI runs them)."""

from __future__ import annotations

import pytest
import torch

from metaprior.adapt import AdaptConfig, fine_tune, load_into, parameters_of
from metaprior.data import PatchSampler, bsds500, set3c
from metaprior.evaluate import score, task_batches
from metaprior.metrics import mean_std
from metaprior.models import PDNet, PDNetConfig
from metaprior.tasks import get_task


@pytest.mark.data
@pytest.mark.slow
def test_sr2_pdnet_200_steps_beats_zero_filling_on_set3c(data_root):
    """Depth-10 PDNet, 200 supervised Adam steps on BSDS train+test SR ×2 patches (8 × 64²),
    evaluated on Set3C with colour channels folded into the batch."""
    torch.manual_seed(0)
    model = PDNet(PDNetConfig(depth=10))
    task = get_task("sr2")
    sampler = PatchSampler(bsds500(data_root, ("train", "test")), 64, seed=0)
    g = torch.Generator().manual_seed(1)
    result = fine_tune(model, parameters_of(model),
                       lambda step: task.sample(sampler.sample(8), g),
                       AdaptConfig(steps=200, lr=1e-2, loss="supervised"))
    load_into(model, result.params)
    batches = task_batches(task, set3c(data_root), seed=0)
    zero_fill = mean_std(score(lambda b: b.physics.A_adjoint(b.y), batches))[0]
    pdnet = mean_std(score(lambda b: model(b.y, b.physics), batches))[0]
    print(f"\nSR x2 on Set3C: zero filling {zero_fill:.2f} dB, PDNet (200 steps) {pdnet:.2f} dB")
    assert pdnet > zero_fill + 10
