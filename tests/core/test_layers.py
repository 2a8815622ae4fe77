import math

import pytest
import torch

from fakescope.layers import WaveletAttention, WaveletDownsample, fft_highpass, haar_dwt


def test_highpass_removes_smooth_image() -> None:
    h = w = 32
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    # Constant plus the lowest horizontal and vertical frequencies: all inside the zeroed block.
    smooth = 0.7 + 0.2 * torch.cos(2 * math.pi * xx / w) + 0.1 * torch.sin(2 * math.pi * 3 * yy / h)
    out = fft_highpass(smooth[None, None].float(), scale=4)
    assert out.abs().max() < 1e-5


def test_highpass_keeps_one_pixel_checkerboard() -> None:
    h = w = 32
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    checker = ((xx + yy) % 2).float() * 2 - 1  # +-1, the Nyquist frequency in both axes
    out = fft_highpass(checker[None, None], scale=4)
    torch.testing.assert_close(out[0, 0], checker, atol=1e-5, rtol=0)


def test_highpass_removes_low_negative_frequencies() -> None:
    # The published solution's uncentred L-shaped mask let e^{-i 2 pi x / w} through: a true
    # high-pass must not.
    w = 32
    xx = torch.arange(w).float()
    wave = torch.cos(2 * math.pi * -2 * xx / w).expand(w, w)
    assert fft_highpass(wave[None, None], scale=4).abs().max() < 1e-5


def test_highpass_rejects_bad_scale() -> None:
    with pytest.raises(ValueError, match="scale must be > 2"):
        fft_highpass(torch.zeros(1, 1, 8, 8), scale=2)


def test_haar_dwt_is_lossless_energy() -> None:
    x = torch.randn(2, 3, 16, 16)
    bands = haar_dwt(x)
    assert all(b.shape == (2, 3, 8, 8) for b in bands)
    energy = sum(float((b**2).sum()) for b in bands)
    assert energy == pytest.approx(float((x**2).sum()), rel=1e-4)


def test_wavelet_attention_halves_and_reweights() -> None:
    x = torch.randn(2, 4, 16, 16)
    out = WaveletAttention()(x)
    ll = haar_dwt(x)[0]
    assert out.shape == ll.shape
    # LL + LL * A with A > 0: every output keeps LL's sign.
    assert torch.all((out * ll) >= -1e-6)


def test_wavelet_downsample_shapes_and_grad() -> None:
    m = WaveletDownsample(4, 10)
    x = torch.randn(2, 4, 16, 16, requires_grad=True)
    y = m(x)
    assert y.shape == (2, 10, 8, 8)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (1, 5, 8, 12)])
def test_haar_dwt_equals_ptwt(shape: tuple[int, ...]) -> None:
    # The strided-conv DWT must be ptwt's wavedec2 band for band, signs included.
    ptwt = pytest.importorskip("ptwt")
    x = torch.randn(*shape, dtype=torch.float64)
    ll, (lh, hl, hh) = ptwt.wavedec2(x, "haar", level=1, mode="zero")
    for ours, ref in zip(haar_dwt(x), (ll, lh, hl, hh), strict=True):
        torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)


def test_haar_dwt_rejects_odd_sizes() -> None:
    with pytest.raises(ValueError, match="even height and width"):
        haar_dwt(torch.zeros(1, 1, 7, 8))
