r"""Meta-training across processes with ``torch.distributed`` (launched by ``torchrun``).

The outer step is a sum over tasks, :math:`\nabla_\theta \sum_i \mathcal L_{\rm outer}
(\phi_i(\theta))` (eq. 2 of the paper), so it splits exactly: rank :math:`r` of :math:`R`
computes the hypergradients of tasks :math:`i \equiv r \pmod R`, one all-reduce sums them,
and every rank applies the same outer update. With more ranks than tasks, the ranks that
share a task split its batches (:func:`shares`, :func:`task_group_sum`). Every rank draws the
whole meta-batch, so a run does not depend on the number of ranks. Backends: gloo on CPU,
NCCL on CUDA. Details and faults: ``docs/distributed.md``.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

#: Environment variables torchrun sets for every worker.
ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched() -> bool:
    """Whether this process was started as one of several workers (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """Whether a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0 (or a single process): the one that writes files."""
    return rank() == 0


def setup(device: str, timeout: float = 600.0) -> str:
    """Join the process group described by torchrun's environment (no-op for one process).

    Returns the device this rank uses: ``device`` on CPU, ``cuda:LOCAL_RANK`` when ``device``
    is ``cuda`` (one GPU per rank).
    """
    if not launched() or active():
        return rank_device(device)
    missing = [k for k in ENV if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE > 1 but {', '.join(missing)} unset: launch with "
                           f"torchrun --nproc-per-node N -m metaprior meta-train ...")
    backend = "nccl" if str(device).startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    _learn_peers(backend)
    return rank_device(device)


#: (pid, host id) of every rank, learned at setup: lets a surviving rank name a dead peer.
_PEERS: list[tuple[int, int]] = []


def _host_id() -> int:
    import socket
    import zlib

    return zlib.crc32(socket.gethostname().encode())


def _learn_peers(backend: str) -> None:
    """Exchange (pid, host) between ranks (tensors only, nothing pickled)."""
    mine = torch.tensor([os.getpid(), _host_id()], dtype=torch.int64)
    if backend == "nccl":
        mine = mine.cuda()
    everyone = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, mine)
    _PEERS[:] = [(int(t[0]), int(t[1])) for t in everyone]


def _dead_peers(wait: float = 2.0) -> list[int]:
    """Ranks on this machine whose process no longer exists (other machines: unknown),
    waiting up to ``wait`` seconds for one to be gone: a killed process closes its sockets,
    which is how this rank learns of it, before the kernel marks it dead."""
    import time

    local = [(r, pid) for r, (pid, host) in enumerate(_PEERS)
             if r != rank() and host == _host_id()]
    deadline = time.monotonic() + wait
    while True:
        dead = [r for r, pid in local if not _alive(pid)]
        if dead or not local or time.monotonic() >= deadline:
            return dead
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:  # no /proc (macOS): trust kill(pid, 0)
        return True


def rank_device(device: str) -> str:
    """The device of this rank: ``device``, or ``cuda:LOCAL_RANK`` for ``cuda`` under torchrun."""
    if str(device) == "cuda" and launched():
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return str(device)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shares(n: int) -> list[tuple[int, int, int]]:
    r"""This rank's work in a meta-batch of ``n`` tasks, as ``(task, part, parts)``.

    With :math:`R \le n` ranks, rank :math:`r` computes the whole of tasks
    :math:`i \equiv r \pmod R` (``part 0 of 1``). With more ranks than tasks, the ranks
    :math:`r \equiv i \pmod n` share task :math:`i`: rank :math:`r` computes part
    :math:`\lfloor r / n \rfloor` of its batches (:meth:`~metaprior.tasks.TaskBatch.split`),
    so no rank idles.
    """
    r, world = rank(), world_size()
    if world <= n:
        return [(i, 0, 1) for i in range(r, n, world)]
    i = r % n
    return [(i, r // n, len(range(i, world, n)))]


#: Process groups of the ranks that share each task, per number of tasks (see :func:`shares`).
_TASK_GROUPS: dict[int, list] = {}


def task_group_sum(tensors: dict[str, torch.Tensor], task: int, tasks: int
                   ) -> dict[str, torch.Tensor]:
    r""":math:`\sum` of every tensor over the ranks that share task ``task`` of ``tasks``
    (more ranks than tasks), in one all-reduce that autograd differentiates: its backward
    pass sums the incoming gradients over the same ranks."""
    from torch.distributed.nn.functional import all_reduce

    if tasks not in _TASK_GROUPS:  # collective: every rank creates every group, in order
        _TASK_GROUPS[tasks] = [dist.new_group(list(range(i, world_size(), tasks)))
                               for i in range(tasks)]
    try:
        flat = all_reduce(_flatten(tensors), op=dist.ReduceOp.SUM,
                          group=_TASK_GROUPS[tasks][task])
    except RuntimeError as e:
        raise PeerLostError(_lost(e)) from None
    return _unflatten(flat, tensors)


def _flatten(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """One flat buffer of every tensor, in the dict's order (one collective instead of many)."""
    return torch.cat([t.reshape(-1) for t in tensors.values()])


def _unflatten(flat: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`_flatten`: views of ``flat`` shaped like ``like``'s tensors."""
    out, offset = {}, 0
    for k, t in like.items():
        out[k] = flat[offset:offset + t.numel()].view_as(t)
        offset += t.numel()
    return out


def all_reduce_sum(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    r""":math:`\sum_{\rm ranks}` of every tensor, in one all-reduce of one flat buffer (same
    keys, shapes and order on every rank)."""
    if not active():
        return tensors
    flat = _flatten(tensors)
    try:
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    except RuntimeError as e:
        raise PeerLostError(_lost(e)) from None
    return _unflatten(flat, tensors)


def barrier() -> None:
    if active():
        try:
            dist.barrier()
        except RuntimeError as e:
            raise PeerLostError(_lost(e)) from None


class PeerLostError(RuntimeError):
    """Another rank stopped answering (died, or was killed): this rank stops too."""


def _lost(error: Exception) -> str:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    dead = _dead_peers()
    who = (f"rank {', '.join(map(str, dead))} died" if dead else
           "a rank on another machine, or one that hangs")
    return (f"rank {rank()} of {world_size()}: a peer rank stopped answering ({who}; "
            f"{first[:200]}); resume from the last checkpoint with --resume (any number of "
            f"ranks)")


def agree(ok: bool, what: str) -> None:
    """Collective check that every rank succeeded at ``what``: a rank that did not has raised
    its own error; the others raise one naming the step, instead of waiting for it forever."""
    if not active():
        return
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        flag = flag.cuda()
    try:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    except RuntimeError as e:
        raise PeerLostError(_lost(e)) from None
    if ok and int(flag) == 0:
        raise RuntimeError(f"rank {rank()}: another rank failed while {what} (its error says "
                           f"why); stopping")
