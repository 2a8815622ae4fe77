"""The GradCAM overlay from its cell grid: what ``fakescope scan`` writes and the API draws on demand.

A worker keeps each image's GradCAM *grid* (the ReLU'd weighted sum of the last stage's maps, one
value per cell: 8x8 for the shipped detector at 32x32) with its result, not a PNG. Anyone holding
the original and that grid draws the same overlay: the grid is resized to the model's input size
(bilinear, as ``torch.nn.functional.interpolate(..., align_corners=False)``), scaled to [0, 1], then
blended over the display-size image with the jet colormap. This module needs no torch, so the API
(which never imports it) renders an overlay the first time someone asks for it, byte for byte the
one ``fakescope scan`` writes for the same image and checkpoint.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from fakescope.imageio import DEFAULT_MAX_PIXELS, OVERLAY_MAX_SIDE, decode_image, to_rgb_array

__all__ = ["cam_from_grid", "colormap_jet", "display_image", "grid_record", "overlay_png", "render_overlay"]


def _source_index(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output index: the two input indices and the weight of the second (half-pixel centres)."""
    scale = in_size / out_size
    src = np.maximum((np.arange(out_size, dtype=np.float32) + 0.5) * np.float32(scale) - 0.5, 0.0)
    i0 = np.floor(src).astype(np.int64)
    i0 = np.minimum(i0, in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, (src - i0).astype(np.float32)


def cam_from_grid(grid: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """``(h, w)`` non-negative cell values to an ``(H, W)`` map in [0, 1] at ``size = (H, W)``."""
    g = np.maximum(np.asarray(grid, dtype=np.float32), 0.0)
    out_h, out_w = int(size[0]), int(size[1])
    y0, y1, ly = _source_index(out_h, g.shape[0])
    x0, x1, lx = _source_index(out_w, g.shape[1])
    top = g[y0][:, x0] * (1 - lx) + g[y0][:, x1] * lx
    bottom = g[y1][:, x0] * (1 - lx) + g[y1][:, x1] * lx
    cam = top * (1 - ly)[:, None] + bottom * ly[:, None]
    lo, hi = cam.min(), cam.max()
    return ((cam - lo) / max(float(hi - lo), 1e-8)).astype(np.float32)


def colormap_jet(cam: np.ndarray) -> np.ndarray:
    """``(H, W)`` values in [0, 1] to ``(H, W, 3)`` uint8 with the jet colormap (OpenCV's formula)."""
    v = np.clip(cam, 0.0, 1.0)[..., None]
    rgb = np.clip(1.5 - np.abs(4.0 * v - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def overlay_png(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45, min_side: int = 128) -> bytes:
    """The heatmap of ``cam`` blended over ``image`` (``(H, W, 3)`` uint8), as PNG bytes.

    The map is resized to the image; images smaller than ``min_side`` are upscaled with nearest
    neighbour first, so a 32x32 verdict is still readable on a screen without inventing detail.
    """
    h, w = image.shape[:2]
    scale = max(1, int(np.ceil(min_side / max(1, min(h, w)))))
    base = Image.fromarray(image)
    if scale > 1:
        base = base.resize((w * scale, h * scale), Image.Resampling.NEAREST)
    cam_img = Image.fromarray((np.clip(cam, 0, 1) * 255).astype(np.uint8)).resize(base.size, Image.Resampling.BILINEAR)
    heat = colormap_jet(np.asarray(cam_img, dtype=np.float32) / 255.0)
    blended = (np.asarray(base, dtype=np.float32) * (1 - alpha) + heat.astype(np.float32) * alpha).astype(np.uint8)
    buf = io.BytesIO()
    # zlib level 1: a blended heatmap barely compresses better at the default level 6, which took
    # several times longer and was a large share of a classify worker's time per image.
    Image.fromarray(blended).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def display_image(im: Image.Image) -> np.ndarray:
    """The image an overlay is drawn on: at most ``OVERLAY_MAX_SIDE`` a side, RGB uint8."""
    display = im.copy()
    display.thumbnail((OVERLAY_MAX_SIDE, OVERLAY_MAX_SIDE))
    return to_rgb_array(display)


def grid_record(grid: np.ndarray, input_size: Sequence[int]) -> dict[str, Any]:
    """The JSON a result row keeps: the grid's cells (float32 values, exact through JSON) and the size
    of the model input its map is drawn at."""
    return {"grid": np.asarray(grid, dtype=np.float32).tolist(), "size": [int(input_size[0]), int(input_size[1])]}


def render_overlay(data: bytes, record: dict[str, Any], max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """The overlay PNG of an original (its bytes) and its result's :func:`grid_record`.

    Raises:
        fakescope.imageio.ImageError: the original does not decode (it did when it was classified).
    """
    # Drawn at most OVERLAY_MAX_SIDE a side: a JPEG is decoded no larger than that needs (the API draws
    # these on demand, for signed URLs anyone holding one may ask for). Unless both sides are at least
    # twice that, it is the same decode as the scan's, so the same PNG; past that, the same map on a
    # background a DCT scale away from the scan's.
    im = decode_image(data, max_pixels=max_pixels, at_least=(OVERLAY_MAX_SIDE, OVERLAY_MAX_SIDE))
    cam = cam_from_grid(np.asarray(record["grid"], dtype=np.float32), record["size"])
    return overlay_png(display_image(im), cam)
