"""Haar DWT attention and DWT downsampling (wavelet attention of Zhao et al., WA-CNN, 2022)."""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["WaveletAttention", "WaveletDownsample", "haar_dwt"]


@lru_cache(maxsize=32)
def _haar_filters(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # The four 2x2 analysis filters of one Haar level, in ptwt's band order and signs (LL, LH, HL,
    # HH with LH the vertical-difference band): a test holds this equal to ptwt.wavedec2.
    f = torch.tensor(
        [
            [[1.0, 1.0], [1.0, 1.0]],
            [[1.0, 1.0], [-1.0, -1.0]],
            [[1.0, -1.0], [1.0, -1.0]],
            [[1.0, -1.0], [-1.0, 1.0]],
        ],
        device=device,
        dtype=dtype,
    )
    return (f / 2.0).unsqueeze(1)  # (4, 1, 2, 2)


def haar_dwt(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One level of the 2-D Haar DWT of a ``(B, C, H, W)`` tensor with even ``H`` and ``W``.

    Computed as one fixed-weight, stride-2 grouped convolution: the Haar filters are 2x2 and do not
    overlap, so this is exactly ptwt's ``wavedec2(x, "haar", level=1)`` at a fraction of its cost
    (ptwt pads, runs two separable passes and permutes; on CPU that was most of a DWT's time).

    Returns:
        ``(LL, LH, HL, HH)``, each ``(B, C, H/2, W/2)``.
    """
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"haar_dwt needs even height and width, got {h}x{w}")
    weight = _haar_filters(x.device, x.dtype).repeat(c, 1, 1, 1)  # (4C, 1, 2, 2)
    bands = F.conv2d(x, weight, stride=2, groups=c)  # (B, 4C, H/2, W/2), channel-major
    bands = bands.view(b, c, 4, h // 2, w // 2)
    return bands[:, :, 0], bands[:, :, 1], bands[:, :, 2], bands[:, :, 3]


class WaveletAttention(nn.Module):
    """Halves the resolution with the DWT and re-weights LL where the high-frequency energy lies.

    ``out = LL + LL * A`` where ``A`` is a softmax over spatial positions (per channel) of the summed
    high-frequency sub-bands ``LH + HL + HH``, rescaled by the number of positions so that a uniform
    map is 1 everywhere. Unlike max pooling it keeps the low band intact and lets the detail bands
    decide where to look.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ll, lh, hl, hh = haar_dwt(x)
        high = (lh + hl + hh).flatten(2)
        attn = torch.softmax(high.float(), dim=-1).to(x.dtype) * high.shape[-1]
        return ll + ll * attn.view_as(ll)


class WaveletDownsample(nn.Module):
    """Stride-2 replacement: the DWT downsamples losslessly, a 1x1 conv mixes the four sub-bands."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(4 * in_chs, out_chs, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.proj(torch.cat(haar_dwt(x), dim=1)))
