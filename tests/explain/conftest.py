"""Tiny CLIP, Idefics2 and LoRA checkpoints saved to disk once per session, for the production loaders."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fakescope.explain import ENV_BACKEND, ENV_CLIP_MODEL, ENV_VLM_LORA, ENV_VLM_MAX_NEW_TOKENS, ENV_VLM_MODEL
from tests.utils.tiny_explain import save_tiny_clip, save_tiny_idefics2

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def data_dir(*parts: str) -> Path:
    """A folder of the shared data, or a skip when this checkout has none."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path.resolve()


@pytest.fixture
def shared_data() -> Callable[..., Path]:
    """``shared_data("genimage_explained", "FAKE")``: a shared-data path, skipping when absent."""
    return data_dir


@pytest.fixture(autouse=True)
def _no_explain_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The developer's shell may point these at real weights; every test states what it loads.
    for var in (ENV_BACKEND, ENV_CLIP_MODEL, ENV_VLM_MODEL, ENV_VLM_LORA, ENV_VLM_MAX_NEW_TOKENS):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    transformers = pytest.importorskip("transformers")
    del transformers
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="session")
def tiny_idefics2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    return save_tiny_idefics2(tmp_path_factory.mktemp("idefics2") / "tiny-idefics2")


def write_images(folder: Path, n: int, size: int = 40, seed: int = 0) -> list[Path]:
    """``n`` smooth random RGB images, saved as PNG (lossless, so the pixels are what the test wrote)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(n):
        base = rng.integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)
        im = Image.fromarray(base).resize((size, size), Image.Resampling.BICUBIC)
        paths.append(folder / f"img{k}.png")
        im.save(paths[-1])
    return paths


@pytest.fixture
def make_images() -> Callable[..., list[Path]]:
    """``make_images(folder, n, size=40, seed=0)`` writes test images and returns their paths."""
    return write_images


@pytest.fixture(scope="session")
def tiny_lora(tmp_path_factory: pytest.TempPathFactory, tiny_idefics2: Path) -> Path:
    """A LoRA adapter trained for two steps by the fine-tuning command on the tiny Idefics2."""
    pytest.importorskip("peft")
    from fakescope.explain.finetune import main

    root = tmp_path_factory.mktemp("lora")
    images = write_images(root / "FAKE", 2)
    records = [
        {"file": f"FAKE/{images[0].name}", "label": "fake", "explanation": {"Artificial smoothness": "It is waxy."}},
        {"file": f"FAKE/{images[1].name}", "explanation": "The wheels are not round."},
        {"file": f"FAKE/{images[1].name}", "label": "real", "explanation": "A real photo."},
    ]
    (root / "train.json").write_text(json.dumps(records))
    out = root / "adapter"
    assert main(["--base", str(tiny_idefics2), "--data", str(root / "train.json"), "--out", str(out),
                 "--max-steps", "2", "--lr", "1e-2", "--device", "cpu"]) == 0  # fmt: skip
    return out
