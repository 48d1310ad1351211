"""Process-wide CPU settings of a run: intra-op threads and the C heap.

An unrolled network's step allocates its activations and frees them all at the end, about
1.4 GB a step for the recommended model's 24 iterations on 8 patches of 64². glibc's
allocator hands the top of its heap back to the system whenever more than its trim threshold
(adapted as it goes, a few MB at first) lies free there, and in some processes it keeps doing
so: every step then faults the same pages in again (one demo run spent 82 of its 248 s in the
kernel; ``benchmarks/bench_heap.py``, ``docs/performance.md``). :func:`keep_freed_memory`
keeps freed memory for the next step; a process then holds its peak heap until it exits.
Every command calls :func:`configure_cpu`.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's largest mmap threshold on 64-bit systems
TRIM_THRESHOLD_MAX = 2**31 - 1  # an int


def keep_freed_memory() -> bool:
    """Have glibc keep freed blocks for reuse: blocks up to 32 MB come from the heap rather
    than their own mappings, and the heap is never trimmed. Returns whether it applied (False
    off Linux or under another C library)."""
    if not sys.platform.startswith("linux"):
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
                and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_MAX))


def configure_cpu(threads: int) -> None:
    """``threads`` intra-op threads (``--threads``) and :func:`keep_freed_memory`."""
    import torch  # here, so that the command line starts (and answers Ctrl-C) before torch

    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    keep_freed_memory()
