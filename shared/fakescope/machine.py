"""The machine code runs on: the device ``"auto"`` means, and one line describing it, printed with
every benchmark figure (the ops/ scripts)."""

from __future__ import annotations

import os
import platform

__all__ = ["describe", "resolve_device"]


def resolve_device(device: str = "auto") -> str:
    """The torch device ``device`` names: ``auto`` is the first CUDA device when there is one, else the
    CPU; any other name is returned as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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
