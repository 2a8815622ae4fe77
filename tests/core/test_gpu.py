"""The GPU path (fp16 autocast, pinned host batches copied without blocking) gives the CPU's answers.

Runs where CUDA is present (a GPU worker's host, the device machine) and is skipped elsewhere.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fakescope.detector import Detector
from fakescope.imageio import InputItem
from fakescope.overlay import cam_from_grid
from fakescope.pipeline import classify_items

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_gpu_results_match_the_cpu(tiny_checkpoint: Path) -> None:
    items = [InputItem(f"{i}.png", functools.partial(_png, i)) for i in range(70)]
    cpu = list(classify_items(Detector.load(tiny_checkpoint, device="cpu"), items, batch_size=32, grids=True))
    gpu_det = Detector.load(tiny_checkpoint, device="cuda")
    x = gpu_det.to_tensor(np.zeros((2, *gpu_det.input_size, 3), np.uint8))
    assert x.is_cuda and x.is_contiguous(memory_format=torch.channels_last)
    gpu = list(classify_items(gpu_det, items, batch_size=32, grids=True))
    for a, b in zip(cpu, gpu, strict=True):
        assert a.error is None and b.error is None
        assert a.fake_probability is not None and b.fake_probability is not None
        assert b.fake_probability == pytest.approx(a.fake_probability, abs=5e-3)  # fp16 on the GPU
        if abs(a.fake_probability - 0.5) > 0.01:
            assert a.prediction == b.prediction
        assert a.cam_grid is not None and b.cam_grid is not None
        maps = [cam_from_grid(np.array(g["grid"]), g["size"]) for g in (a.cam_grid, b.cam_grid)]
        np.testing.assert_allclose(maps[1], maps[0], atol=0.05)
