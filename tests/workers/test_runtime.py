"""What a worker process derives from its own resources."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from workers import runtime


@pytest.mark.parametrize("threads", [1, 2])
def test_decoding_threads_follow_the_models_threads_on_cpu(monkeypatch: pytest.MonkeyPatch, threads: int) -> None:
    monkeypatch.setattr(runtime, "detector", lambda: SimpleNamespace(device=torch.device("cpu")))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert runtime.decode_threads() == threads
    finally:
        torch.set_num_threads(before)


def test_decoding_threads_on_a_gpu_are_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "detector", lambda: SimpleNamespace(device=torch.device("cuda")))
    assert runtime.decode_threads() == min(8, os.cpu_count() or 1)
