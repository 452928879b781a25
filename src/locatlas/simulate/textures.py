"""Random textures and rasterisation helpers (vectorised, seeded).

All functions take an explicit :class:`numpy.random.Generator` and return new
arrays; lengths are in pixels unless a name says ``_um``.
"""

from __future__ import annotations

import numpy as np
from scipy import fft, ndimage


def fourier_noise(
    shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    scale_px: float,
    highpass_px: float | None = None,
) -> np.ndarray:
    """Smooth (or band-pass) Gaussian random field with zero mean and unit std.

    Parameters
    ----------
    shape
        (Y, X) in pixels.
    scale_px
        Correlation length: white noise low-passed by a Gaussian of this sigma.
    highpass_px
        If given, structures larger than about this sigma are removed (band-pass).

    Returns
    -------
    float32 array (Y, X); periodic in both axes.
    """
    white = rng.standard_normal(shape, dtype=np.float32)
    spec = fft.rfft2(white, workers=1)
    fy = fft.fftfreq(shape[0]).astype(np.float32)[:, None]
    fx = fft.rfftfreq(shape[1]).astype(np.float32)[None, :]
    f2 = fy * fy + fx * fx
    filt = np.exp(-2.0 * np.pi**2 * scale_px**2 * f2)
    if highpass_px is not None:
        filt = filt - np.exp(-2.0 * np.pi**2 * highpass_px**2 * f2)
    out = fft.irfft2(spec * filt, s=shape, workers=1).astype(np.float32)
    sd = float(out.std())
    return out / sd if sd > 0 else out


def coarse_noise(
    shape: tuple[int, int], rng: np.random.Generator, *, scale_px: float, factor: int = 8
) -> np.ndarray:
    """Like :func:`fourier_noise` for large ``scale_px``, computed on a grid
    ``factor`` times coarser and interpolated (much faster)."""
    small = (max(4, -(-shape[0] // factor)), max(4, -(-shape[1] // factor)))
    base = fourier_noise(small, rng, scale_px=max(scale_px / factor, 0.5))
    zoom = (shape[0] / small[0], shape[1] / small[1])
    out = ndimage.zoom(base, zoom, order=1, mode="grid-wrap", grid_mode=True)
    return out[: shape[0], : shape[1]].astype(np.float32)


def splat(
    shape: tuple[int, int], ys: np.ndarray, xs: np.ndarray, weights: np.ndarray | float = 1.0
) -> np.ndarray:
    """Accumulate points into an image with bilinear weights (sub-pixel positions).

    Points outside the image are dropped. Returns float32 (Y, X).
    """
    ys = np.asarray(ys, dtype=np.float64).ravel()
    xs = np.asarray(xs, dtype=np.float64).ravel()
    w = np.broadcast_to(np.asarray(weights, dtype=np.float64), ys.shape).ravel()
    y0 = np.floor(ys)
    x0 = np.floor(xs)
    fy = ys - y0
    fx = xs - x0
    y0 = y0.astype(np.int64)
    x0 = x0.astype(np.int64)
    idx, wts = [], []
    for dy, dx, ww in (
        (0, 0, (1 - fy) * (1 - fx)),
        (0, 1, (1 - fy) * fx),
        (1, 0, fy * (1 - fx)),
        (1, 1, fy * fx),
    ):
        yy = y0 + dy
        xx = x0 + dx
        ok = (yy >= 0) & (yy < shape[0]) & (xx >= 0) & (xx < shape[1])
        idx.append(yy[ok] * shape[1] + xx[ok])
        wts.append((w * ww)[ok])
    # One bincount over all four corners: a single pass over the output image.
    out = np.bincount(
        np.concatenate(idx), weights=np.concatenate(wts), minlength=shape[0] * shape[1]
    )
    return out.reshape(shape).astype(np.float32)


def blobs(
    shape: tuple[int, int],
    ys: np.ndarray,
    xs: np.ndarray,
    *,
    peak: np.ndarray | float,
    sigma_px: float,
    psf_sigma_px: float = 0.0,
) -> np.ndarray:
    """Gaussian blobs of standard deviation ``sigma_px`` whose peak *after* the
    optical blur ``psf_sigma_px`` (applied later) is about ``peak``."""
    total = sigma_px**2 + psf_sigma_px**2
    amp = np.asarray(peak, dtype=np.float64) * 2.0 * np.pi * max(total, 0.25)
    img = splat(shape, ys, xs, amp)
    if sigma_px > 0.3:
        img = ndimage.gaussian_filter(img, sigma_px, mode="constant")
    return img


def lookup_shifted(
    texture: np.ndarray, labels: np.ndarray, shift_y: np.ndarray, shift_x: np.ndarray
) -> np.ndarray:
    """Sample ``texture`` at ``(y - shift_y[label], x - shift_x[label])``.

    Makes a texture fixed in the field at time 0 move with each cell over time.
    ``shift_*`` are per-label integer pixel shifts (index 0 = background).
    """
    if not np.any(shift_y) and not np.any(shift_x):
        return texture
    ny, nx = texture.shape
    yy = (np.arange(ny)[:, None] - shift_y[labels]) % ny
    xx = (np.arange(nx)[None, :] - shift_x[labels]) % nx
    return texture[yy, xx]


def polyline_points(
    y0: np.ndarray,
    x0: np.ndarray,
    angle0: np.ndarray,
    *,
    n_steps: int,
    step_px: float,
    curvature_sd: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Persistent random walks (filaments) from start points.

    Returns (ys, xs) of shape (n_filaments, n_steps + 1).
    ``curvature_sd`` is the sd of the change of direction per step (radians).
    """
    n = len(y0)
    turns = rng.normal(0.0, curvature_sd, size=(n, n_steps)).astype(np.float32)
    angles = angle0[:, None] + np.cumsum(turns, axis=1)
    dy = np.concatenate([np.zeros((n, 1)), np.sin(angles) * step_px], axis=1)
    dx = np.concatenate([np.zeros((n, 1)), np.cos(angles) * step_px], axis=1)
    return y0[:, None] + np.cumsum(dy, axis=1), x0[:, None] + np.cumsum(dx, axis=1)
