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

from fakescope.imageio import DEFAULT_MAX_PIXELS, OVERLAY_MAX_SIDE, decode_image, sniff_media_type, to_rgb_array

__all__ = [
    "cam_from_grid",
    "colormap_jet",
    "display_image",
    "draw_cost",
    "grid_record",
    "overlay_png",
    "render_overlay",
]

# What drawing an overlay holds at its peak for each pixel it decodes, by media type: the peak resident
# growth of render_overlay on 16-megapixel RGB and RGBA files, rounded up (tests/core/test_overlay_budget.py
# measures each format against these). WebP decodes through libwebp's animation decoder (two canvases,
# then Pillow's copy); an image with alpha is resized premultiplied, a second full-size copy.
DRAW_BYTES_PER_PIXEL = {"image/webp": 17, "image/avif": 11, "image/heic": 11}
DEFAULT_DRAW_BYTES_PER_PIXEL = 9
# Pillow reads a JPEG holding a multi-picture (MPF) index as MPO, which decode_image does not reduce.
_MPF = b"MPF\x00"


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


def draw_cost(data: bytes, width: int, height: int) -> int:
    """The most memory, in bytes, that :func:`render_overlay` holds at once for ``data``, an image of
    ``width`` x ``height`` pixels: known before anything is decoded, so a caller can budget it.

    A JPEG is decoded at the DCT scale that still covers the overlay (what ``decode_image``'s
    ``at_least`` does); every other format whole, at its own cost per pixel. The bytes themselves count.
    """
    per_pixel = DRAW_BYTES_PER_PIXEL.get(sniff_media_type(data), DEFAULT_DRAW_BYTES_PER_PIXEL)
    if data.startswith(b"\xff\xd8") and _MPF not in data[: 128 * 1024]:
        # Pillow's JpegImageFile.draft: the largest of 8, 4, 2, 1 that both sides still cover.
        scale = next(s for s in (8, 4, 2, 1) if s <= max(1, min(width // OVERLAY_MAX_SIDE, height // OVERLAY_MAX_SIDE)))
        width, height = -(-width // scale), -(-height // scale)
    return len(data) + per_pixel * max(1, width) * max(1, height)


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
    # Shrunk in place (display_image's result, without its copy of the full-size decode, which would
    # double what a draw holds: the pipeline goes on using its image, this is the last use of ours).
    im.thumbnail((OVERLAY_MAX_SIDE, OVERLAY_MAX_SIDE))
    return overlay_png(to_rgb_array(im), cam)
