"""Reusable primitives: one idea per module."""

from fakescope.layers.fft import fft_highpass
from fakescope.layers.wavelet import WaveletAttention, WaveletDownsample, haar_dwt

__all__ = ["WaveletAttention", "WaveletDownsample", "fft_highpass", "haar_dwt"]
