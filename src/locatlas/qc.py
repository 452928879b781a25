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

import math

import numpy as np
from scipy import ndimage

from .flatfield import block_mean

__all__ = ["focus_score", "noise_sigma", "saturated_fraction", "signal_to_noise"]

#: Pixels sampled per axis for percentile and noise statistics (2048² -> 256²).
_SAMPLE_PX = 256


def _subsample(plane: np.ndarray) -> np.ndarray:
    step = max(1, max(plane.shape[-2:]) // _SAMPLE_PX)
    return plane[..., ::step, ::step]


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
    plane = np.asarray(plane, dtype=np.float32)
    sigma_px = scale_um / pixel_size_um
    factor = max(1, int(sigma_px // 2))
    small = block_mean(plane, factor)
    sigma = sigma_px / factor
    if min(small.shape) < 3:
        return math.nan  # a line (e.g. an xz scan's y = 1): no 2-D focus to measure
    fine = ndimage.gaussian_laplace(small, sigma=sigma, mode="reflect") * np.float32(sigma**2)
    # The coarse scale is smooth: measure it on a 2x coarser grid (8x cheaper).
    coarser = block_mean(small, 2) if ratio >= 2 and min(small.shape) >= 16 else small
    step = small.shape[0] // coarser.shape[0]
    coarse_sigma = sigma * ratio / step
    coarse = ndimage.gaussian_laplace(coarser, sigma=coarse_sigma, mode="reflect")
    coarse *= np.float32(coarse_sigma**2)
    # Reflected edges create structure that is not in the sample: drop a 2σ' border.
    b = int(np.ceil(2 * coarse_sigma))
    if min(coarse.shape) > 4 * b + 8:
        fine, coarse = fine[b * step : -b * step, b * step : -b * step], coarse[b:-b, b:-b]
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
    plane = np.asarray(plane, dtype=np.float32)
    y, x = plane.shape[-2:]
    cy, cx = max(0, (y - _SAMPLE_PX) // 2), max(0, (x - _SAMPLE_PX) // 2)
    crop = plane[..., cy : cy + _SAMPLE_PX, cx : cx + _SAMPLE_PX]
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
