"""Fixtures every test suite shares: offline hubs and a tiny detector checkpoint built from config."""

from __future__ import annotations

import os

# No test may reach a model hub: loaders must take what the tests saved to disk.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path

import pytest
import torch

from fakescope.checkpoint import CheckpointMeta, Preprocess, save_checkpoint
from fakescope.models import create_model

TINY_ARCH = {"layers": (1, 1, 1, 1), "planes": (4, 4, 8, 8), "stem_chs": 8}


def make_tiny_checkpoint(directory: Path, seed: int = 0) -> Path:
    """A randomly initialised, very small detector saved through the production checkpoint code."""
    torch.manual_seed(seed)
    model = create_model("freqnet_resnet_tiny", **TINY_ARCH).eval()
    meta = CheckpointMeta(
        variant="freqnet_resnet_tiny",
        arch=model.cfg,
        preprocess=Preprocess(input_size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
        training={"note": "random weights for tests"},
    )
    return save_checkpoint(directory, model, meta)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a tiny random-weight checkpoint, shared by the whole test session."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")
