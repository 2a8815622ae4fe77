"""The resize-history measurement: its round trips, and the size-only figure it reads off the manifest."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from fakescope.data import as_jpeg
from ops import protocol
from ops.resize_history import SIDE, lanczos_round_trip, resaved, size_only


def test_the_round_trip_returns_to_the_stored_size_and_changes_only_fine_detail() -> None:
    rng = np.random.default_rng(0)
    flat = np.full((SIDE, SIDE, 3), 120, dtype=np.uint8)
    noisy = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    assert lanczos_round_trip(flat, 256).shape == (SIDE, SIDE, 3)
    assert lanczos_round_trip(flat, 256).dtype == np.uint8
    assert np.abs(lanczos_round_trip(flat, 256).astype(int) - 120).max() <= 1  # nothing to resample
    assert np.abs(lanczos_round_trip(noisy, 256).astype(int) - noisy).mean() > 5  # pixel noise is not kept


def test_resaving_without_a_size_is_one_jpeg_round_trip() -> None:
    images = np.random.default_rng(1).integers(0, 256, (2, SIDE, SIDE, 3), dtype=np.uint8)
    assert np.array_equal(resaved(images), np.stack([as_jpeg(im, 90) for im in images]))
    assert not np.array_equal(resaved(images, 256), resaved(images))


def test_size_only_scores_each_fold_by_its_fakes_original_sizes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = tmp_path / "manifest.csv"
    rows = [
        ("real", "real", "photos", 800),
        ("real", "real", "photos", 1000),
        ("fake", "small-gen", "ar", 256),  # every fake smaller than every real: 1.0
        ("fake", "big-gen", "diff", 2000),  # every fake larger: 0.0
        ("fake", "big-gen", "diff", 900),  # one larger, one smaller than 900: 0.5 for it
    ]
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["track", "label", "generator", "family", "orig_width", "orig_height"])
        for label, gen, fam, side in rows:
            w.writerow(["full", label, gen if label == "fake" else fam, fam, side * 2, side])
    monkeypatch.setattr(protocol, "MANIFEST", manifest)
    assert size_only(manifest) == {"ar": 1.0, "diff": pytest.approx(0.25)}


def test_spearman_uses_average_ranks_for_ties() -> None:
    from ops.resize_history import ranks, spearman

    assert ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [2.5, 0.0, 2.5, 1.0]
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert np.isnan(spearman(x, np.ones(4)))
