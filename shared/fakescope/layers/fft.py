"""FFT high-pass filtering of images and feature maps (FreqNet's HFRI / HFRFS primitive)."""

from __future__ import annotations

from functools import lru_cache

import torch

__all__ = ["fft_highpass"]


@lru_cache(maxsize=64)
def _highpass_mask(h: int, w: int, scale: int, device: torch.device) -> torch.Tensor:
    mask = torch.ones(h, w, device=device)
    ch, cw = h // 2, w // 2
    mask[ch - h // scale : ch + h // scale, cw - w // scale : cw + w // scale] = 0.0
    # Built centred, stored uncentred: multiplying the raw spectrum by it equals shift, mask, unshift
    # without the two copies that fftshift and ifftshift cost on every call.
    return torch.fft.ifftshift(mask, dim=(-2, -1))


def fft_highpass(x: torch.Tensor, scale: int = 4) -> torch.Tensor:
    """Removes the low spatial frequencies of ``x`` and returns the real remainder.

    The spectrum is taken with an orthonormal 2-D FFT and centred with ``fftshift`` so that the
    low frequencies, positive and negative, form one block in the middle; that block
    (``H/scale`` rows and ``W/scale`` columns either side of the centre) is zeroed before the inverse
    transform. This is the published FreqNet filter. Zeroing a corner of the *uncentred* spectrum
    instead (as the CIFAKE solution did) keeps the low negative frequencies and lets smooth content
    through.

    Args:
        x: ``(..., H, W)`` real tensor.
        scale: the zeroed block spans ``2 * H // scale`` by ``2 * W // scale`` bins; must be > 2.

    Returns:
        A real tensor of the same shape holding only the high-frequency content.
    """
    if scale <= 2:
        raise ValueError(f"scale must be > 2, got {scale}")
    h, w = x.shape[-2:]
    # cuFFT has no half-precision path for arbitrary sizes: run the transform in fp32.
    spec = torch.fft.fft2(x.float(), norm="ortho") * _highpass_mask(h, w, scale, x.device)
    return torch.fft.ifft2(spec, norm="ortho").real.to(x.dtype)
