"""One line describing the machine a benchmark ran on, printed with every figure (the ops/ scripts)."""

from __future__ import annotations

import os
import platform


def describe() -> str:
    """CPU model, core count, GPU, Python and torch versions, in one line."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
        tv = str(torch.__version__)
    except ImportError:
        gpu, tv = "no torch", "-"
    return f"{cpu}, {os.cpu_count()} logical cores, {gpu}, Python {platform.python_version()}, torch {tv}"
