"""Synthetic CIFAKE-layout data: 'real' images are smooth, 'fake' ones carry a periodic grid trace."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def synth_image(label: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.uniform(40, 210, size=(4, 4, 3))
    img = np.asarray(Image.fromarray(base.astype(np.uint8)).resize((32, 32), Image.Resampling.BICUBIC), dtype=float)
    if label == "fake":
        # The upsampling checkerboard that transposed convolutions leave: a 2-pixel period.
        yy, xx = np.mgrid[0:32, 0:32]
        img += 18.0 * (((xx + yy) % 2) * 2 - 1)[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def write_cifake(root: Path, n_per_label: int, fmt: str = "PNG") -> Path:
    for label in ("REAL", "FAKE"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_label):
            arr = synth_image(label.lower(), seed=i + (10_000 if label == "FAKE" else 0))
            Image.fromarray(arr).save(root / label / f"{i}.png", format=fmt)
    return root


@pytest.fixture
def synth_cifake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FAKESCOPE_CACHE_DIR", str(tmp_path / "cache"))
    return write_cifake(tmp_path / "cifake", 40)


@pytest.fixture
def synth_tar(synth_cifake: Path, tmp_path: Path) -> Path:
    path = tmp_path / "more.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for f in sorted(synth_cifake.rglob("*.png"))[:20]:
            data = f.read_bytes()
            info = tarfile.TarInfo(f"more/{f.parent.name}/x{f.name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path
