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

# The service stack's fixtures (service_env, service_stack; see tests/utils/stack.py), for
# every suite that asks for them; nothing is started until a test does.
pytest_plugins = ["tests.utils.stack"]

TINY_ARCH = {"layers": (1, 1, 1, 1), "planes": (4, 4, 8, 8), "stem_chs": 8}


def make_tiny_checkpoint(directory: Path, seed: int = 0, domain: bool = True) -> Path:
    """A randomly initialised, very small detector saved through the production checkpoint code.

    With ``domain``, a domain model (fakescope.domain) fitted on smooth colour fields, the kind of
    image the tests call in domain, so saturated noise scores out of domain.
    """
    torch.manual_seed(seed)
    model = create_model("freqnet_resnet_tiny", **TINY_ARCH).eval()
    meta = CheckpointMeta(
        variant="freqnet_resnet_tiny",
        arch=model.cfg,
        preprocess=Preprocess(input_size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
        training={"note": "random weights for tests"},
    )
    save_checkpoint(directory, model, meta)
    if domain:
        _add_domain(directory, seed)
    return directory


def _add_domain(directory: Path, seed: int) -> None:
    import json

    import numpy as np

    from fakescope.detector import Detector
    from fakescope.domain import fit_domain

    det = Detector.load(directory, device="cpu")
    rng = np.random.default_rng(seed)
    small = rng.uniform(40, 210, size=(96, 4, 4, 3)).astype(np.float32)
    images = np.clip(np.kron(small, np.ones((1, 8, 8, 1), dtype=np.float32)), 0, 255).astype(np.uint8)
    domain = fit_domain(det.pooled_features(images[:64]), torch.from_numpy(rng.integers(0, 2, 64)))
    domain = domain.with_threshold(det.pooled_features(images[64:]))
    cfg = json.loads((directory / "config.json").read_text())
    cfg["domain"] = domain.save(directory)
    (directory / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a tiny random-weight checkpoint, shared by the whole test session."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")
