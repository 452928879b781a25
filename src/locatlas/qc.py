"""Per-field image quality: focus, saturation, signal.

All scores are per channel and independent of the intensity scale, so one threshold
works for 8-bit, 12-bit and 16-bit data:

- ``focus``: energy of the scale-normalized Laplacian of Gaussian at a physical scale
  (σ = 1 µm) relative to that at 4σ. Blur removes the fine structure first; the ratio
  cancels intensity and cell density. z-stacks: the best plane.
- ``saturated``: fraction of pixels at the detector's maximum.
- ``snr``: (99th percentile - median) / noise σ, the noise σ estimated robustly from
  differences of neighbouring pixels (MAD). An empty field of pure noise gives ≈2.3
  (the Gaussian 99th percentile); a field with cells gives tens to thousands.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import fft, ndimage

from .flatfield import block_mean

__all__ = ["focus_score", "noise_sigma", "saturated_fraction", "signal_to_noise"]

#: Pixels sampled per axis for percentile and noise statistics (2048² -> 256²).
_SAMPLE_PX = 256


def _subsample(plane: np.ndarray) -> np.ndarray:
    step = max(1, max(plane.shape[-2:]) // _SAMPLE_PX)
    return plane[..., ::step, ::step]


def _gaussian_kernels(sigma: float, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """scipy.ndimage's truncated Gaussian and its 2nd derivative (order 0 and 2)."""
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 / sigma**2 * x**2)
    g /= g.sum()
    return g, (x**2 / sigma**4 - 1.0 / sigma**2) * g


@functools.lru_cache(maxsize=8)
def _laplace_spectrum(shape: tuple[int, int], sigma: float, radius: int) -> np.ndarray:
    """rfft2 of the 2-D kernel ``G''(y) G(x) + G(y) G''(x)`` on a ``shape`` grid.

    The kernels are symmetric, so the spectrum is real (the imaginary part is
    rounding noise and dropped).
    """
    g, d2 = _gaussian_kernels(sigma, radius)

    def spectrum(kernel: np.ndarray, n: int, transform) -> np.ndarray:
        wrapped = np.zeros(n)
        wrapped[np.arange(-radius, radius + 1) % n] = kernel  # centred on index 0
        return transform(wrapped).real

    gy, d2y = spectrum(g, shape[0], fft.fft), spectrum(d2, shape[0], fft.fft)
    gx, d2x = spectrum(g, shape[1], fft.rfft), spectrum(d2, shape[1], fft.rfft)
    return np.outer(d2y, gx) + np.outer(gy, d2x)


def _gaussian_laplace(image: np.ndarray, sigma: float, border: int = 0) -> np.ndarray:
    """``ndimage.gaussian_laplace(image, sigma, mode="reflect")`` without its outer
    ``border`` pixels, up to an additive constant (its response to the image mean,
    which the variance ignores). float64; float32 for images smaller than the kernel.

    One 2-D FFT with scipy's truncated kernels instead of four separable float32
    passes: 3-5x faster at these sizes and more precise.
    """
    radius = int(4.0 * sigma + 0.5)  # scipy's truncate=4
    if min(image.shape) <= radius:  # reflected more than once: leave it to scipy
        out = ndimage.gaussian_laplace(image, sigma=sigma, mode="reflect")
        return out[border : out.shape[0] - border, border : out.shape[1] - border]
    # Subtracting the mean keeps the FFT's rounding (relative to its largest term)
    # far below the fine structure, and gives exactly 0 for a constant image.
    # Reflect-pad (scipy's "reflect" is numpy's "symmetric") just enough that the
    # circular convolution never wraps into the pixels returned.
    pad = max(0, radius - border)
    centred = image.astype(np.float64)
    centred -= centred.mean()
    padded = np.pad(centred, pad, mode="symmetric")
    shape = tuple(fft.next_fast_len(n, real=True) for n in padded.shape)
    spectrum = fft.rfft2(padded, shape)
    spectrum *= _laplace_spectrum(shape, float(sigma), radius)
    out = fft.irfft2(spectrum, shape)
    y, x = image.shape
    start = pad + border
    return out[start : start + y - 2 * border, start : start + x - 2 * border]


def focus_score(
    plane: np.ndarray, *, pixel_size_um: float, scale_um: float = 1.0, ratio: float = 4.0
) -> float:
    """Fine-to-coarse energy ratio of a (y, x) plane (higher = sharper).

    ``var(σ²∇²G_σ * I) / var(σ'²∇²G_σ' * I)`` with ``σ = scale_um`` and
    ``σ' = ratio × σ`` (scale-normalized Laplacians of Gaussian). Blur removes the fine
    structure first, and the ratio cancels the amount of content (few or many cells,
    bright or dim), so one threshold fits many datasets. Measured on HPA nuclei at
    0.08 µm/px: 0.17-0.36 in focus, 0.08-0.11 after a 1 µm Gaussian blur, ~0.03 after
    2 µm, ~0.01 after 4 µm. Pure noise scores high (~15): check emptiness first.

    The plane is block-averaged first so that σ is 2-4 px: the cost is the same for
    any pixel size and pixel noise is ignored.
    """
    sigma_px = scale_um / pixel_size_um
    factor = max(1, int(sigma_px // 2))
    small = block_mean(np.asarray(plane), factor)
    sigma = sigma_px / factor
    if min(small.shape) < 3:
        return math.nan  # a line (e.g. an xz scan's y = 1): no 2-D focus to measure
    # The coarse scale is smooth: measure it on a 2x coarser grid (8x cheaper).
    coarser = block_mean(small, 2) if ratio >= 2 and min(small.shape) >= 16 else small
    step = small.shape[0] // coarser.shape[0]
    coarse_sigma = sigma * ratio / step
    # Reflected edges create structure that is not in the sample: drop a 2σ' border.
    b = int(np.ceil(2 * coarse_sigma))
    if min(coarser.shape) <= 4 * b + 8:
        b = 0
    fine = _gaussian_laplace(small, sigma, border=b * step) * sigma**2
    coarse = _gaussian_laplace(coarser, coarse_sigma, border=b) * coarse_sigma**2
    denom = float(coarse.var())
    return float(fine.var() / denom) if denom > 0 else 0.0


def saturated_fraction(image: np.ndarray, *, saturation_value: float) -> float:
    """Fraction of pixels >= ``saturation_value``."""
    image = np.asarray(image)
    return float(np.count_nonzero(image >= saturation_value) / max(image.size, 1))


def noise_sigma(plane: np.ndarray) -> float:
    """Robust σ of pixel noise from horizontal neighbour differences (MAD).

    Uses a central crop of at most 512² full-resolution pixels.
    """
    plane = np.asarray(plane)
    y, x = plane.shape[-2:]
    cy, cx = max(0, (y - _SAMPLE_PX) // 2), max(0, (x - _SAMPLE_PX) // 2)
    # crop first: converting the whole plane to float32 costs more than the statistic
    crop = plane[..., cy : cy + _SAMPLE_PX, cx : cx + _SAMPLE_PX].astype(np.float32)
    d = np.diff(crop, axis=-1)
    return float(np.median(np.abs(d - np.median(d))) * 1.4826 / np.sqrt(2.0))


def signal_to_noise(plane: np.ndarray, *, quantum: float = 1.0) -> float:
    """(p99 - median) / noise σ of a (y, x) plane; 0 for a constant plane.

    ``quantum`` is the intensity step of the source data (257 for 8-bit data scaled
    to 16 bits): σ is at least its quantization noise, ``quantum / sqrt(12)``.
    """
    plane = np.asarray(plane)
    p50, p99 = np.percentile(_subsample(plane).astype(np.float32), [50, 99])
    spread = float(p99 - p50)
    if spread <= 0:
        return 0.0
    sigma = max(noise_sigma(plane), quantum / np.sqrt(12.0))
    return spread / sigma
