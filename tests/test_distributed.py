"""Meta-training across processes (gloo on CPU): the split outer step equals the one-process
step, a torchrun run equals a one-process run, and a lost rank stops the others with one
line, after which the run resumes with another number of ranks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from metaprior.checkpoint import load_tensors

TINY = ["--dataset", "demo", "--depth", "2", "--patch-size", "32", "--inner-batch", "2",
        "--outer-batch", "2", "--val-batch", "2", "--inner-lr", "0.01", "--lr", "0.01",
        "--no-progress"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: Meta-batches of the split tests: more tasks than ranks (5 tasks, unevenly split), and fewer
#: (2 tasks on 3 ranks: the inpainting task's batch of 3, per-sample masks, split in 1 + 2).
PROBLEMS = {"tasks": (("denoise", "deblur", "inpaint", "sr2", "inpaint"), 2),
            "batch": (("inpaint", "sr2"), 3)}


def _problem(which: str = "tasks"):
    """A float64 depth-2 PDNet and a meta-batch, the same in every process."""
    from metaprior.models import PDNet, PDNetConfig
    from metaprior.tasks import get_task

    torch.manual_seed(0)
    model = PDNet(PDNetConfig(depth=2, width=4)).double()
    g = torch.Generator().manual_seed(1)
    names, size = PROBLEMS[which]
    batches = [tuple(get_task(n).sample(torch.rand(size, 1, 32, 32, generator=g,
                                                   dtype=torch.float64), g)
                     for _ in range(2)) for n in names]
    for pair in batches:  # real masks and kernels in float64 too
        for module in (m for b in pair for m in b.physics.modules()):
            for name, buf in module._buffers.items():
                if buf is not None and buf.is_floating_point():
                    module._buffers[name] = buf.double()
    return model, batches


def _modes():
    from metaprior.meta.config import MetaConfig

    modes = {m: MetaConfig(hypergradient=m, inner_lr=1e-2, workers=1, cg_iters=5)
             for m in ("maml", "first_order", "implicit")}
    modes["reptile"] = MetaConfig(hypergradient="reptile", inner_steps=2, inner_lr=1e-2,
                                  workers=1)
    modes["joint"] = MetaConfig(objective="joint", workers=1)
    modes["maml+theta"] = MetaConfig(inner_lr=1e-2, workers=1, outer_theta_weight=0.5)
    return modes


def _worker(rank: int, world: int, port: int, out: str, which: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    from metaprior import distributed
    from metaprior.meta.step import meta_gradient

    model, batches = _problem(which)
    theta = dict(model.named_parameters())
    result = {"inner_sums": 0}
    real = distributed.task_group_sum

    def counted(*a, **kw):
        result["inner_sums"] += 1
        return real(*a, **kw)
    distributed.task_group_sum = counted
    for mode, cfg in _modes().items():
        total, records = meta_gradient(model, theta, batches, cfg)
        result[mode] = {"total": {k: v.tolist() for k, v in total.items()},
                        "losses": [[r.inner_loss, r.outer_loss] for r in records],
                        "tasks": [r.task for r in records]}
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


@pytest.mark.parametrize("which, world", [("tasks", 2), ("batch", 3)])
def test_ranks_give_the_one_process_hypergradient(tmp_path, which, world):
    """maml, first_order, implicit, reptile, joint and a θ-scored outer loss: the all-reduced
    sum over the ranks equals the one-process sum (1e-12 relative overall, 1e-9 for every
    tensor) in float64, on every rank, with every task's losses; with more ranks than tasks
    the ranks split a task's batch."""
    from metaprior.meta.step import meta_gradient

    mp.spawn(_worker, args=(world, _free_port(), str(tmp_path), which), nprocs=world,
             join=True)
    model, batches = _problem(which)
    theta = dict(model.named_parameters())
    for rank in range(world):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        # 3 ranks, 2 tasks: ranks 0 and 2 share the inpainting task's inner batch (one sum per
        # inner step of maml, first_order and the θ-scored maml)
        assert got["inner_sums"] == (3 if which == "batch" and rank != 1 else 0)
        for mode, cfg in _modes().items():
            total, records = meta_gradient(model, theta, batches, cfg)
            other = {k: torch.tensor(got[mode]["total"][k], dtype=torch.float64)
                     for k in total}
            flat = torch.cat([v.reshape(-1) for v in total.values()])
            error = torch.cat([(other[k] - v).reshape(-1) for k, v in total.items()])
            assert float(error.norm()) <= 1e-12 * float(flat.norm()), mode
            for k, v in total.items():  # each tensor, down to the tiniest first-layer gradient
                assert float((other[k] - v).norm()) <= 1e-9 * float(v.norm()), (mode, k)
            assert got[mode]["tasks"] == [r.task for r in records]
            ref = [x for r in records for x in (r.inner_loss, r.outer_loss)]
            assert [x for pair in got[mode]["losses"] for x in pair] == pytest.approx(ref,
                                                                                     rel=1e-6)


def _torchrun(nproc: int, args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                           str(nproc), "--master-port", str(_free_port()), "-m", "metaprior",
                           *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, **kw)


@pytest.mark.parametrize("tasks", [[], ["--tasks", "inpaint"]], ids=["4-tasks", "1-task"])
def test_torchrun_meta_training_equals_one_process(tmp_path, tasks):
    """3 outer steps under ``torchrun --nproc-per-node 2`` end at the one-process model (to
    float32 summation order), with the same log; only rank 0 wrote files. With one task, the
    two ranks split its batches."""
    from metaprior.cli import main

    # Outer lr 3e-3, not TINY's 1e-2: one outer Adam step of 1e-2 takes λ_k from its initial
    # 1e-2 to within float noise of 0, the kink of |λ_k|, where the next inner Adam step
    # (≈ lr·sign of the gradient) turns summation-order noise into an O(lr) change.
    run = ["meta-train", *TINY, *tasks, "--lr", "0.003", "--steps", "3", "--ckpt-every", "2",
           "--val-every", "2"]
    proc = _torchrun(2, [*run, "--out", str(tmp_path / "two")])
    assert proc.returncode == 0, proc.stderr[-2000:]
    main([*run, "--out", str(tmp_path / "one")])
    a = load_tensors(tmp_path / "one" / "model.safetensors")
    b = load_tensors(tmp_path / "two" / "model.safetensors")
    for k in a:
        assert float((a[k] - b[k]).abs().max()) <= 1e-5 * float(a[k].abs().max()) + 1e-9, k
    logs = [[json.loads(x) for x in (tmp_path / n / "log.jsonl").read_text().splitlines()]
            for n in ("one", "two")]
    assert [r["step"] for r in logs[1]] == [0, 1, 2]
    assert [r["outer_loss"] for r in logs[1]] == pytest.approx(
        [r["outer_loss"] for r in logs[0]], rel=1e-5)
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").glob("step_*")) == [
        "step_0000002", "step_0000003"]


def test_a_killed_rank_stops_the_other_and_the_run_resumes_on_one(tmp_path):
    """Kill rank 1 mid-run: rank 0 exits non-zero within the bound with one line naming the
    lost peer; ``--resume`` then finishes the run in one process from the last checkpoint."""
    port = _free_port()
    out = tmp_path / "run"
    args = [sys.executable, "-m", "metaprior", "meta-train", *TINY, "--steps", "60",
            "--ckpt-every", "2", "--val-every", "0", "--dist-timeout", "60", "--out", str(out)]
    procs = []
    for rank in range(2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    try:
        deadline = time.time() + 300
        while not (out / "checkpoints" / "step_0000004").exists():
            assert time.time() < deadline and procs[0].poll() is None, procs[0].stderr.read()
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGKILL)
        killed_at = time.time()
        _, err = procs[0].communicate(timeout=120)
        waited = time.time() - killed_at
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[0].returncode == 1 and waited < 90
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and "peer rank stopped answering (rank 1 died" in lines[0], err[-2000:]
    assert "Traceback" not in err
    from metaprior.checkpoint import latest_checkpoint
    from metaprior.cli import main

    assert int(latest_checkpoint(out).name.split("_")[1]) < 60
    main(["meta-train", *TINY, "--resume", "--no-progress", "--out", str(out)])
    steps = [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(60))


def test_a_meta_batch_may_repeat_a_task_family(tmp_path):
    """``--tasks`` listing a family twice gives two tasks a step with their own operators,
    logged under distinct keys."""
    from metaprior.cli import main

    main(["meta-train", *TINY, "--tasks", "denoise,inpaint-mix,inpaint-mix", "--steps", "1",
          "--val-every", "0", "--out", str(tmp_path / "run")])
    record = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    assert list(record["tasks"]) == ["denoise", "inpaint-mix", "inpaint-mix#2"]
    a, b = record["tasks"]["inpaint-mix"], record["tasks"]["inpaint-mix#2"]
    assert a["inner_loss"] != b["inner_loss"]


@pytest.mark.parametrize("parts", [2, 3, 5])
def test_the_parts_of_a_task_sum_to_its_hypergradient(parts):
    """In one process (no inner-batch sharing), whatever the number of parts (more than the
    batch's 3 samples included: empty parts do nothing), the weighted parts of every task sum
    to its hypergradient and losses, for every objective; an implicit or Reptile task is
    computed whole by part 0."""
    from metaprior.meta.step import _part, task_hypergradient

    model, batches = _problem("batch")
    theta = dict(model.named_parameters())
    for mode, cfg in _modes().items():
        for inner, outer in batches:
            whole = task_hypergradient(model, theta, inner, outer, cfg)
            work = [w for w in (_part(inner, outer, 0, 1, k, parts, cfg)
                                for k in range(parts)) if w]
            assert len(work) == (1 if mode in ("implicit", "reptile") else min(parts, 3))
            got = [task_hypergradient(model, theta, i, o, cfg, share=share)
                   for i, o, share in work]
            total = {k: sum(r.grads[k] for r in got) for k in whole.grads}
            error = torch.cat([(total[k] - g).reshape(-1) for k, g in whole.grads.items()])
            norm = torch.cat([g.reshape(-1) for g in whole.grads.values()]).norm()
            assert float(error.norm()) <= 1e-12 * float(norm), mode
            for k, g in whole.grads.items():
                assert float((total[k] - g).norm()) <= 1e-9 * float(g.norm()), (mode, k)
            assert sum(r.outer_loss for r in got) == pytest.approx(whole.outer_loss, rel=1e-12)
            assert sum(r.inner_loss for r in got) == pytest.approx(whole.inner_loss, rel=1e-12)
