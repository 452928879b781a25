"""Optics and camera: blur, illumination shading, background, shot and read noise.

Units: photo-electrons before :func:`expose`, ADU (uint16) after it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: Emission wavelength (µm) per role: DAPI, tubulin (far red), ER (yellow), protein (green).
EMISSION_UM = (0.46, 0.67, 0.58, 0.52)
#: Objective numerical aperture of the simulated microscope.
NA = 0.95
CAMERA = {"offset_adu": 100.0, "gain_adu_per_e": 0.9, "read_noise_e": 2.2, "full_well": 65535}


def psf_sigma_px(pixel_size_um: float, *, na: float = NA) -> tuple[float, ...]:
    """Gaussian sigma (px) of the in-focus PSF per channel: 0.21 λ / NA."""
    return tuple(0.21 * lam / na / pixel_size_um for lam in EMISSION_UM)


def blur(plane: np.ndarray, sigma_px: float) -> np.ndarray:
    """In-focus optical blur (Gaussian approximation of the PSF)."""
    if sigma_px < 0.2:
        return plane.astype(np.float32, copy=True)
    return ndimage.gaussian_filter(plane.astype(np.float32), sigma_px, mode="reflect")


def shading(shape: tuple[int, int], seed: int, channel: int) -> np.ndarray:
    """Smooth illumination shading (vignetting + tilt), max about 1, differing per channel.

    The same ``seed`` (one microscope / plate) gives the same shading in every field.
    """
    r = np.random.default_rng([seed, 5003, channel])
    ny, nx = shape
    yy = np.linspace(-1, 1, ny, dtype=np.float32)[:, None]
    xx = np.linspace(-1, 1, nx, dtype=np.float32)[None, :]
    cy, cx = (float(v) for v in r.uniform(-0.25, 0.25, 2))
    strength = float(r.uniform(0.15, 0.35))
    ty, tx = (float(v) for v in r.uniform(-0.06, 0.06, 2))
    fy = 1.0 - 0.5 * strength * (yy - cy) ** 2 + ty * yy  # separable: cheap
    fx = 1.0 - 0.5 * strength * (xx - cx) ** 2 + tx * xx
    s = fy * fx
    return (s / s.max()).astype(np.float32)


def background(shape: tuple[int, int], rng: np.random.Generator, level: float) -> np.ndarray:
    """Uneven background (medium, out-of-focus light), photons, mean about ``level``.

    A sum of a few random separable cosines over the field: smooth, cheap."""
    ny, nx = shape
    yy = np.linspace(0, 1, ny, dtype=np.float32)[:, None]
    xx = np.linspace(0, 1, nx, dtype=np.float32)[None, :]
    var = np.zeros(shape, dtype=np.float32)
    for _ in range(3):
        ky, kx = rng.uniform(0.5, 3.0, 2) * np.pi
        py, px = rng.uniform(0, 2 * np.pi, 2)
        var += np.cos(float(ky) * yy + float(py)) * np.cos(float(kx) * xx + float(px))
    return (level * (1.0 + 0.1 * var)).clip(0.0, None).astype(np.float32)


def expose(photons: np.ndarray, rng: np.random.Generator, camera: dict | None = None) -> np.ndarray:
    """Shot noise, read noise, gain and offset: expected photo-electrons -> uint16 ADU.

    Exact Poisson where the mean is below 10 e-, its Gaussian limit (variance =
    mean, rounded to whole electrons) above, which is close there and much faster.
    """
    cam = {**CAMERA, **(camera or {})}
    read = np.float32(cam["read_noise_e"])
    offset = np.float32(cam["offset_adu"])
    gain = np.float32(cam["gain_adu_per_e"])
    photons = np.asarray(photons, dtype=np.float32)
    out = np.empty(photons.shape, dtype=np.uint16)
    # One plane at a time, in place: bounded temporaries for large fields.
    for idx in np.ndindex(photons.shape[:-2]):
        lam = np.maximum(photons[idx], np.float32(0.0))
        # Shot and read noise in one Gaussian draw (variance = mean + read²) ...
        e = rng.standard_normal(lam.shape, dtype=np.float32)
        e *= np.sqrt(lam + read * read)
        e += lam
        low = lam < 10.0
        if np.any(low):
            # ... except at low counts: exact Poisson electrons plus read noise.
            sub = lam[low]
            e[low] = rng.poisson(sub).astype(np.float32) + read * rng.standard_normal(
                sub.shape, dtype=np.float32
            )
        e *= gain
        e += offset
        np.rint(e, out=e)
        np.clip(e, 0, cam["full_well"], out=e)
        out[idx] = e
    return out
