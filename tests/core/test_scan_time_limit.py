"""``fakescope scan``'s per-image time limit: an input that costs long to decode gets its own error
and the scan answers every other input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from fakescope.cli import main
from fakescope.pipeline import IMAGE_TIME_LIMIT_ERROR
from tests.utils.images import gradient_png


def test_a_slow_image_gets_its_own_error_and_the_scan_answers_the_rest(tiny_checkpoint: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(91_200)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(src / f"{i}.png")
    (src / "2-big.png").write_bytes(gradient_png(7))  # over a second to decode and shrink here
    out = tmp_path / "out"
    args = ["scan", str(src), "--out", str(out), "--checkpoint", str(tiny_checkpoint), "--device", "cpu", "-q"]
    assert main([*args, "--explain", "--image-time-limit", "0.1"]) == 0

    records = {r["file"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert len(records) == 5
    (slow,) = [r for name, r in records.items() if name.endswith("2-big.png")]
    assert slow["error"] == f"{IMAGE_TIME_LIMIT_ERROR} of 0.1 s" and slow["prediction"] is None
    others = [r for name, r in records.items() if not name.endswith("2-big.png")]
    assert all(r["error"] is None and r["prediction"] in ("real", "fake") for r in others), others
    assert len(json.loads((out / "task1.json").read_text())) == 4
