"""Haar DWT attention and DWT downsampling (wavelet attention of Zhao et al., WA-CNN, 2022)."""

from __future__ import annotations

import ptwt
import torch
from torch import nn

__all__ = ["WaveletAttention", "WaveletDownsample", "haar_dwt"]


def haar_dwt(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One level of the 2-D Haar DWT of a ``(B, C, H, W)`` tensor with even ``H`` and ``W``.

    Returns:
        ``(LL, LH, HL, HH)``, each ``(B, C, H/2, W/2)``.
    """
    ll, *details = ptwt.wavedec2(x.float(), "haar", level=1, mode="zero")
    ((lh, hl, hh),) = details  # one level: one tuple of detail bands
    return ll.to(x.dtype), lh.to(x.dtype), hl.to(x.dtype), hh.to(x.dtype)


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
