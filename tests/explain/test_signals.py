"""The measurements move the way the artifacts they stand for say they should."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from fakescope.explain.signals import SIGNALS, measure, size_bucket


@pytest.fixture
def photo(shared_data: Callable[..., Path]) -> np.ndarray:
    path = sorted(shared_data("genimage_explained", "REAL").glob("*.jpg"))[0]
    return np.asarray(Image.open(path).convert("RGB"))


def test_every_signal_is_finite_even_on_degenerate_images() -> None:
    rng = np.random.default_rng(0)
    for img in (
        np.zeros((4, 4, 3), np.uint8),
        np.full((40, 5, 3), 255, np.uint8),
        np.zeros((64, 64, 3), np.uint8),
        rng.integers(0, 256, (1, 1, 3), dtype=np.uint8),
        rng.integers(0, 256, (2, 300, 3), dtype=np.uint8),
    ):
        m = measure(img)
        assert set(m.values) == set(SIGNALS)
        assert all(np.isfinite(v) for v in m.values.values())


def test_measurement_is_deterministic(photo: np.ndarray) -> None:
    assert measure(photo).values == measure(photo.copy()).values


def test_nearest_neighbour_upsampling_raises_the_grid_peak(photo: np.ndarray) -> None:
    im = Image.fromarray(photo)
    up = np.asarray(im.resize((128, 128), Image.Resampling.BICUBIC).resize((256, 256), Image.Resampling.NEAREST))
    assert measure(up).values["grid_peak"] > measure(photo).values["grid_peak"] + 6.0


def test_blur_lowers_fine_detail_and_flat_noise(photo: np.ndarray) -> None:
    blurred = np.asarray(Image.fromarray(photo).filter(ImageFilter.GaussianBlur(2)))
    a, b = measure(photo).values, measure(blurred).values
    assert b["texture_energy"] < a["texture_energy"] / 3
    assert b["flat_noise"] < a["flat_noise"] / 3
    assert b["hf_energy"] < a["hf_energy"] / 3


def test_saturation_boost_raises_saturation(photo: np.ndarray) -> None:
    grey = photo.mean(axis=2, keepdims=True)
    boosted = np.clip((photo - grey) * 2 + grey, 0, 255).astype(np.uint8)
    assert measure(boosted).values["saturation"] > measure(photo).values["saturation"] * 1.3


def test_cam_details_say_where_the_detector_looked() -> None:
    cam = np.zeros((32, 32), np.float32)
    cam[:8, -8:] = 1.0
    d = measure(np.zeros((32, 32, 3), np.uint8), cam).details
    assert d["cam_y"] < 1 / 3 and d["cam_x"] > 2 / 3
    assert d["cam_top_tenth"] == pytest.approx(1.0)  # all the mass lies on 64 of the 102 hottest pixels


def test_size_buckets() -> None:
    assert size_bucket(32, 32) == "small"
    assert size_bucket(256, 256) == "large"
