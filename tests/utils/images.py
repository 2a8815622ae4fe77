"""Large test images that cost little to send and much to decode."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

__all__ = ["gradient", "gradient_png"]


def gradient(shade: int, side: int = 6000) -> Image.Image:
    """``side``² pixels of smooth gradient, blue at ``shade`` (a different ``shade``, different bytes).

    At the default 36 megapixels (under the 40 MP limit) it is about 120 KB as a PNG and takes over
    a second to decode and shrink: an image slow to process that is quick to send.
    """
    ramp = np.linspace(0, 255, side, dtype=np.uint8)
    arr = np.empty((side, side, 3), np.uint8)
    arr[..., 0], arr[..., 1], arr[..., 2] = ramp[None, :], ramp[:, None], shade
    return Image.fromarray(arr)


def gradient_png(shade: int, side: int = 6000) -> bytes:
    """:func:`gradient` as PNG bytes."""
    buf = io.BytesIO()
    gradient(shade, side).save(buf, "PNG")
    return buf.getvalue()
