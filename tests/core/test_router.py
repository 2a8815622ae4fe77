"""A routed detector: thumbnails to the 32x32 model, everything else to the full-size one."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fakescope.checkpoint import CheckpointMeta, Preprocess, save_checkpoint
from fakescope.detector import Detector, Route, RoutedDetector, load_detector
from fakescope.imageio import to_rgb_array
from fakescope.models import create_model
from fakescope.scan import run_scan
from tests.conftest import make_tiny_checkpoint


def make_full_checkpoint(directory: Path) -> Path:
    """A tiny random full-size checkpoint: shorter side to 64, centre crop, four stride-2 stages."""
    torch.manual_seed(1)
    model = create_model("vgg4_full", planes=(4, 4, 8, 8)).eval()
    meta = CheckpointMeta(
        variant="vgg4_full",
        arch=model.cfg,
        preprocess=Preprocess(input_size=(64, 64), interpolation="lanczos", resize="shorter_side"),
        training={"note": "random weights for tests"},
    )
    return save_checkpoint(directory, model, meta)


@pytest.fixture(scope="module")
def routed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("routed")
    make_tiny_checkpoint(root / "small")
    make_full_checkpoint(root / "full")
    spec = {"routes": [{"name": "small", "path": "small", "max_side": 48}, {"name": "full", "path": "full"}]}
    (root / "routes.json").write_text(json.dumps(spec))
    return root


def test_load_detector_reads_routes_and_plain_folders(routed: Path) -> None:
    det = load_detector(routed, device="cpu")
    assert isinstance(det, RoutedDetector)
    assert [d.meta.variant for d in det.members] == ["freqnet_resnet_tiny", "vgg4_full"]
    assert det.model_version.startswith("freqnet_resnet_tiny+vgg4_full@")
    assert (det.route(32, 32), det.route(48, 300), det.route(49, 49), det.route(4000, 3000)) == (0, 0, 1, 1)
    assert isinstance(load_detector(routed / "small", device="cpu"), Detector)


def test_last_route_takes_every_size() -> None:
    with pytest.raises(ValueError, match="must take every size"):
        RoutedDetector([Route("small", "small", 48)], [object()])  # type: ignore[list-item]


def test_scan_answers_each_image_with_its_routes_model(routed: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(src / "1.png")
    Image.fromarray(rng.integers(0, 255, (150, 200, 3), dtype=np.uint8)).save(src / "2.png")
    det = load_detector(routed, device="cpu")
    assert isinstance(det, RoutedDetector)
    run_scan([src], tmp_path / "out", detector=det, progress=False)
    rows = {r["file"].rsplit("/", 1)[-1]: r for r in map(json.loads, (tmp_path / "out" / "results.jsonl").open())}
    small, full = det.members
    assert rows["1.png"]["model_version"] == small.model_version
    assert rows["2.png"]["model_version"] == full.model_version
    for r in rows.values():
        assert r["error"] is None and 0.0 <= r["fake_probability"] <= 1.0
        assert (tmp_path / "out" / r["overlay"]).is_file()
    # The same image answered alone by its member: routing changes who answers, not the answer.
    with Image.open(src / "2.png") as im:
        alone = full.predict(full.prepare(im)[None])[0]
    assert rows["2.png"]["fake_probability"] == pytest.approx(float(alone), abs=1e-5)


def test_shorter_side_resize_keeps_the_aspect_and_crops_the_centre() -> None:
    arr = np.zeros((100, 300, 3), dtype=np.uint8)
    arr[:, 100:200] = 255  # the centre third is white
    out = to_rgb_array(Image.fromarray(arr), (50, 50), "bilinear", "shorter_side")
    assert out.shape == (50, 50, 3)
    assert out[:, 5:45].min() == 255  # only the centre survives the crop
    with pytest.raises(ValueError, match="unknown resize"):
        to_rgb_array(Image.fromarray(arr), (50, 50), "bilinear", "squash")
