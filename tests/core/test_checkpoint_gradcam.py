import functools
import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from fakescope.checkpoint import CheckpointMeta, Preprocess, load_checkpoint
from fakescope.detector import Detector
from fakescope.gradcam import GradCAM, _normalised, colormap_jet, overlay_png
from fakescope.imageio import InputItem
from fakescope.models import create_model, list_models
from fakescope.models.freqnet_resnet import DetectorNet, FreqNetResNet
from fakescope.overlay import cam_from_grid, render_overlay
from fakescope.pipeline import DecodedImage, classify_items


def test_checkpoint_roundtrip_is_exact(tiny_checkpoint: Path) -> None:
    model, meta = load_checkpoint(tiny_checkpoint)
    saved = load_file(str(tiny_checkpoint / "model.safetensors"))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, saved[k], rtol=0, atol=0)
    assert meta.model_version.startswith("freqnet_resnet_tiny@")


def test_checkpoint_loads_strictly(tiny_checkpoint: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    state = load_file(str(tiny_checkpoint / "model.safetensors"))
    state.pop("head.bias")
    save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(RuntimeError, match=r"head\.bias"):
        load_checkpoint(bad)


def test_checkpoint_errors_name_what_is_missing(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        load_checkpoint(tmp_path)
    cfg = json.loads((tiny_checkpoint / "config.json").read_text())
    cfg["format_version"] = 99
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").write_bytes((tiny_checkpoint / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="format version 99"):
        load_checkpoint(tmp_path)


def test_gradcam_maps_are_normalised(tiny_checkpoint: Path) -> None:
    det = Detector.load(tiny_checkpoint, device="cpu")
    batch = np.random.default_rng(0).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    probs, cams = det.predict_with_cam(batch)
    assert cams.shape == (3, 32, 32)
    assert cams.min() >= 0.0 and cams.max() <= 1.0
    np.testing.assert_allclose(probs, det.predict(batch), rtol=1e-5, atol=1e-6)
    # Hooks are removed after each call.
    assert isinstance(det.model, DetectorNet)
    last = det.model.stages[-1]
    assert not last._forward_hooks and not last._backward_hooks


def test_gradcam_follows_the_requested_class(tiny_checkpoint: Path) -> None:
    det = Detector.load(tiny_checkpoint, device="cpu")
    x = det.to_tensor(np.random.default_rng(1).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8))
    assert isinstance(det.model, DetectorNet)
    cam = GradCAM(det.model, det.model.stages[-1])
    _, real_map = cam(x, 0)
    _, fake_map = cam(x, 1)
    assert not torch.allclose(real_map, fake_map)


def test_colormap_and_overlay() -> None:
    assert colormap_jet(np.array([0.0]))[0].tolist() == [0, 0, 128]
    assert colormap_jet(np.array([1.0]))[0].tolist() == [128, 0, 0]
    png = overlay_png(np.zeros((32, 32, 3), np.uint8), np.ones((4, 4)))
    im = Image.open(io.BytesIO(png))
    assert im.format == "PNG" and im.size == (128, 128)


class _MergesAfterLastStage(FreqNetResNet):
    """Something between the last stage and the pooling: the forward-only shortcut no longer holds,
    and the architecture says so (as a variant merging after its last stage would)."""

    @property
    def features_are_cam_target(self) -> bool:
        return False

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward_features(x) * 2.0


@pytest.mark.parametrize("variant", list_models())
@pytest.mark.parametrize("tta", [False, True])
def test_cams_from_the_head_equal_gradcam_with_hooks(variant: str, tta: bool) -> None:
    torch.manual_seed(0)
    model = create_model(variant).eval()
    meta = CheckpointMeta(
        variant=variant, arch=model.cfg, preprocess=Preprocess(input_size=(32, 32)), tta_hflip=tta, temperature=1.7
    )
    det = Detector(model, meta, torch.device("cpu"))
    assert det.cam_from_head
    batch = np.random.default_rng(2).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    probs, cams = det.predict_with_cam(batch)
    det.cam_from_head = False
    ref_probs, ref_cams = det.predict_with_cam(batch)
    np.testing.assert_allclose(probs, ref_probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cams, ref_cams, atol=2e-5)
    assert cams.max() == pytest.approx(1.0)


def test_cams_fall_back_to_gradients_when_the_features_are_not_the_last_stage() -> None:
    model = _MergesAfterLastStage(create_model("freqnet_resnet_tiny").cfg).eval()
    meta = CheckpointMeta(variant="freqnet_resnet_tiny", arch=model.cfg, preprocess=Preprocess(input_size=(32, 32)))
    assert not Detector(model, meta, torch.device("cpu")).cam_from_head


@pytest.mark.parametrize(("grid_shape", "size"), [((4, 4), (32, 32)), ((8, 8), (32, 32)), ((3, 5), (30, 17))])
def test_the_torch_free_map_from_a_grid_is_torchs_bilinear_resize(
    grid_shape: tuple[int, int], size: tuple[int, int]
) -> None:
    grid = torch.rand(1, 1, *grid_shape) * 3 - 1  # some cells negative: both clip them at 0
    expected = _normalised(grid, size)[0].numpy()
    np.testing.assert_allclose(cam_from_grid(grid[0, 0].numpy(), size), expected, atol=2e-6)


def test_an_overlay_drawn_from_a_stored_grid_is_the_scan_overlay(tiny_checkpoint: Path) -> None:
    det = Detector.load(tiny_checkpoint, device="cpu")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (45, 61, 3), dtype=np.uint8)).save(buf, format="PNG")
    data = buf.getvalue()
    (res,) = classify_items(det, [InputItem("a.png", lambda: data)], overlays=True, grids=True)
    assert res.overlay_png is not None and res.cam_grid is not None
    record = json.loads(json.dumps(res.cam_grid))  # as it comes back from the database
    assert render_overlay(data, record) == res.overlay_png


# Draws one overlay and prints how far the process's peak resident size rose doing it (KiB).
_DRAW_AND_MEASURE = """
import json, resource, sys
from fakescope.overlay import render_overlay
data, record = open(sys.argv[1], "rb").read(), json.load(open(sys.argv[2]))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
png = render_overlay(data, record)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
open(sys.argv[3], "wb").write(png)
"""


def test_an_overlay_of_a_large_jpeg_is_drawn_from_a_reduced_decode(tiny_checkpoint: Path, tmp_path: Path) -> None:
    # A 35-megapixel photo: about 100 MiB decoded whole, for an overlay 384 pixels across.
    ramp = np.linspace(0, 255, 7000, dtype=np.uint8)
    arr = np.empty((5000, 7000, 3), np.uint8)
    arr[..., 0], arr[..., 1], arr[..., 2] = ramp[None, :], ramp[:5000, None], 71
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=80)
    data = buf.getvalue()
    del arr
    det = Detector.load(tiny_checkpoint, device="cpu")
    (res,) = classify_items(det, [InputItem("big.jpg", lambda: data)], overlays=True, grids=True)
    assert res.overlay_png is not None and res.cam_grid is not None
    (tmp_path / "big.jpg").write_bytes(data)
    (tmp_path / "grid.json").write_text(json.dumps(res.cam_grid))

    # In a process of its own: its peak resident size is this draw's, not the test session's.
    out = subprocess.run(
        [sys.executable, "-c", _DRAW_AND_MEASURE, *(str(tmp_path / n) for n in ("big.jpg", "grid.json", "o.png"))],
        capture_output=True,
        text=True,
        check=True,
    )
    grew_mib = int(out.stdout.strip()) / 1024
    print(f"drawing the overlay of a {len(data) / 2**20:.1f} MiB 7000x5000 JPEG raised the peak by {grew_mib:.1f} MiB")
    assert grew_mib < 32, grew_mib  # decoded whole, the peak rose by about 270 MiB
    # The same map as the scan's overlay, on a background a DCT scale away.
    a = np.asarray(Image.open(tmp_path / "o.png"), dtype=np.int16)
    b = np.asarray(Image.open(io.BytesIO(res.overlay_png)), dtype=np.int16)
    assert a.shape == b.shape == (274, 384, 3)
    assert np.abs(a - b).mean() < 2, np.abs(a - b).mean()


def test_decoding_in_line_or_on_threads_gives_the_same_results_in_order(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    det = Detector.load(tiny_checkpoint, device="cpu")
    rng = np.random.default_rng(5)
    items = []
    for i in range(11):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
        data = buf.getvalue() if i != 4 else b"not an image"
        items.append(InputItem(f"{i}.png", functools.partial(bytes, data)))
    runs = {
        threads: list(classify_items(det, items, batch_size=4, grids=True, decode_threads=threads))
        for threads in (0, 2)
    }
    # Left to itself, a single-thread CPU model decodes in line; with more threads, on threads.
    seen: set[str] = set()
    monkeypatch.setattr("fakescope.pipeline.decode_item", _recording_threads(seen))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    list(classify_items(det, items, batch_size=4))
    assert seen == {"MainThread"}
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    seen.clear()
    list(classify_items(det, items, batch_size=4))
    assert seen and "MainThread" not in seen
    inline, threaded = runs[0], runs[2]
    assert [r.name for r in inline] == [r.name for r in threaded] == [f"{i}.png" for i in range(11)]
    assert inline[4].error is not None and inline[4].error == threaded[4].error
    for a, b in zip(inline, threaded, strict=True):
        assert (a.prediction, a.fake_probability, a.sha256, a.cam_grid, a.overlay_png) == (
            b.prediction,
            b.fake_probability,
            b.sha256,
            b.cam_grid,
            b.overlay_png,
        )


def _recording_threads(seen: set[str]) -> Callable[..., DecodedImage]:
    """decode_item, noting the name of each thread it runs on in ``seen``."""
    import threading

    from fakescope.pipeline import decode_item

    def decode(*args: Any, **kwargs: Any) -> DecodedImage:
        seen.add(threading.current_thread().name)
        return decode_item(*args, **kwargs)

    return decode
