"""The machine a result was measured on, recorded beside benchmark and study results."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def machine_info() -> dict:
    """The machine a result was measured on (CPU model, the vector instructions PyTorch uses
    on it, its bfloat16 instructions, cores, threads, torch, CUDA device, Python)."""
    cpu, bfloat16 = platform.processor() or platform.machine(), []
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
        elif line.startswith("flags"):  # what precision="bfloat16" runs on
            bfloat16 = sorted(set(line.split()) & {"avx512_bf16", "amx_bf16", "avx_ne_convert"})
            break
    return {"cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_bfloat16": bfloat16, "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "python": platform.python_version()}
