"""Theoretical widefield point-spread functions.

The model is the scalar angular-spectrum (Debye) model of an aberration-free
widefield microscope: the emission pupil is a uniform disc of radius ``NA/λ``
(cycles/µm) and defocus ``d`` multiplies it by the phase
``exp(2πi d sqrt((n/λ)² - k²))``. The intensity PSF at defocus ``d`` is
``|IFFT(pupil · phase)|²``. In focus this is exactly the Airy pattern of Born &
Wolf (lateral FWHM ≈ 0.514 λ/NA); out of focus it is Born & Wolf's scalar model
without the paraxial approximation (Gibson–Lanni with matched sample, coverslip
and immersion indices). The PSF is computed on an oversampled grid and binned
back, so pixels integrate the light that falls on them.

Widefield detection conserves flux through focus: every slice of the PSF carries
the same total intensity. ``defocus_psf`` keeps that property (each slice sums
to 1), which is what a simulator needs; ``widefield_psf`` returns a kernel for
deconvolution, normalized to sum 1 over the whole array.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import scipy.fft

__all__ = [
    "airy_fwhm_um",
    "defocus_psf",
    "max_ray_angle_tan",
    "measure_fwhm",
    "widefield_psf",
]

# Light beyond this many µm outside the geometric cone of a defocused slice is
# negligible for our purposes; it sets the internal grid margin.
_MARGIN_UM = 3.0


def _check_optics(
    pixel_size_um: float, na: float, wavelength_um: float, immersion_index: float
) -> None:
    if not pixel_size_um > 0:
        raise ValueError(f"pixel_size_um must be > 0, got {pixel_size_um!r}")
    if not wavelength_um > 0:
        raise ValueError(f"wavelength_um must be > 0, got {wavelength_um!r}")
    if not na > 0:
        raise ValueError(f"na must be > 0, got {na!r}")
    if not immersion_index > na:
        raise ValueError(
            f"immersion_index ({immersion_index!r}) must exceed the numerical aperture ({na!r})"
        )


def airy_fwhm_um(*, na: float, wavelength_um: float) -> float:
    """Lateral FWHM of the in-focus widefield PSF (Airy disc), in µm: 0.5145 λ/NA."""
    return 0.5145 * wavelength_um / na


def max_ray_angle_tan(*, na: float, immersion_index: float) -> float:
    """tan of the marginal ray angle: a slice at defocus d spreads over radius d·tanθ."""
    return na / math.sqrt(immersion_index**2 - na**2)


def _oversampling(pixel_size_um: float, na: float, wavelength_um: float) -> int:
    # The intensity PSF is band-limited to 2 NA/λ; sampling it without aliasing
    # needs a sample spacing <= λ / (4 NA). Use the next integer factor (>= 1).
    return max(1, math.ceil(pixel_size_um * 4.0 * na / wavelength_um - 1e-9))


def _slice(
    defocus_um: float,
    n: int,
    *,
    pixel_size_um: float,
    na: float,
    wavelength_um: float,
    immersion_index: float,
) -> np.ndarray:
    """One PSF slice on an ``n``×``n`` grid of output pixels, centred on pixel ``n // 2``.

    Computed on an ``os``-times finer grid and binned; the result is periodic
    with period ``n`` pixels and sums to 1 (Parseval).
    """
    os_ = _oversampling(pixel_size_um, na, wavelength_um)
    m = n * os_
    dx = pixel_size_um / os_
    k = np.fft.fftfreq(m, d=dx)  # cycles/µm
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    kc = na / wavelength_um
    kn = immersion_index / wavelength_um
    pupil = (k2 <= kc * kc).astype(np.complex128)
    kz = np.sqrt(np.maximum(kn * kn - k2, 0.0))
    # Axis at the centre of output pixel n//2, i.e. sample (n//2)*os + (os-1)/2
    # of the fine grid: a linear phase moves it there (half a sample for even os).
    x0 = ((n // 2) * os_ + (os_ - 1) / 2.0) * dx
    phase = 2.0 * np.pi * (defocus_um * kz - (k[:, None] + k[None, :]) * x0)
    field = scipy.fft.ifft2(pupil * np.exp(1j * phase), workers=-1)
    inten = field.real**2 + field.imag**2
    binned = inten.reshape(n, os_, n, os_).sum(axis=(1, 3))
    return binned / binned.sum()


def _grid_size(defocus_um: float, pixel_size_um: float, na: float, immersion_index: float) -> int:
    radius = abs(defocus_um) * max_ray_angle_tan(na=na, immersion_index=immersion_index)
    n = 2 * math.ceil((radius + _MARGIN_UM) / pixel_size_um) + 1
    return int(scipy.fft.next_fast_len(max(n, 32)))


def _fit(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Centre-crop or zero-pad a centred (n, n) slice to ``shape`` keeping the centre pixel."""
    out = np.zeros(shape, dtype=a.dtype)
    n0, n1 = a.shape
    c_in = (n0 // 2, n1 // 2)
    c_out = (shape[0] // 2, shape[1] // 2)
    sl_in, sl_out = [], []
    for ax in range(2):
        lo = max(-c_in[ax], -c_out[ax])
        hi = min(a.shape[ax] - c_in[ax], shape[ax] - c_out[ax])
        sl_in.append(slice(c_in[ax] + lo, c_in[ax] + hi))
        sl_out.append(slice(c_out[ax] + lo, c_out[ax] + hi))
    out[tuple(sl_out)] = a[tuple(sl_in)]
    return out


def defocus_psf(
    defocus_um: Sequence[float] | np.ndarray,
    *,
    shape: tuple[int, int],
    pixel_size_um: float,
    na: float,
    wavelength_um: float,
    immersion_index: float,
) -> np.ndarray:
    """PSF slices at arbitrary defocus, each normalized to sum 1 (flux conservation).

    Parameters
    ----------
    defocus_um : sequence of float
        Axial distances between the emitter and the focal plane, µm.
    shape : (int, int)
        Lateral size (Y, X) of each returned slice in pixels; the PSF centre is at
        pixel ``(Y // 2, X // 2)``.
    pixel_size_um, na, wavelength_um, immersion_index
        Pixel size (µm), numerical aperture, emission wavelength (µm), refractive
        index of the immersion medium (= sample medium, no aberration).

    Returns
    -------
    numpy.ndarray
        float64 array (K, Y, X). Each slice is computed on a grid large enough to
        hold its defocused cone and then cropped/padded to ``shape``, and finally
        renormalized to sum 1: the light a point source sends to the camera is
        the same at every defocus.
    """
    _check_optics(pixel_size_um, na, wavelength_um, immersion_index)
    shape = (int(shape[0]), int(shape[1]))
    if min(shape) < 1:
        raise ValueError(f"shape must be positive, got {shape!r}")
    d = np.atleast_1d(np.asarray(defocus_um, dtype=np.float64))
    out = np.empty((d.size, *shape), dtype=np.float64)
    cache: dict[float, np.ndarray] = {}
    for i, di in enumerate(d):
        key = round(abs(float(di)), 9)  # the aberration-free PSF is symmetric in z
        if key not in cache:
            n = _grid_size(key, pixel_size_um, na, immersion_index)
            s = _fit(
                _slice(
                    key,
                    n,
                    pixel_size_um=pixel_size_um,
                    na=na,
                    wavelength_um=wavelength_um,
                    immersion_index=immersion_index,
                ),
                shape,
            )
            cache[key] = s / s.sum()
        out[i] = cache[key]
    return out


def widefield_psf(
    *,
    shape: Sequence[int],
    pixel_size_um: float,
    z_step_um: float | None,
    na: float,
    wavelength_um: float,
    immersion_index: float,
) -> np.ndarray:
    """Theoretical widefield PSF, 2D (in-focus slice) or 3D, normalized to sum 1.

    Parameters
    ----------
    shape : (Y, X) or (Z, Y, X)
        Kernel size in pixels. The PSF centre is at index ``s // 2`` on every
        axis (odd sizes give a symmetric kernel).
    pixel_size_um : float
        Lateral pixel size, µm.
    z_step_um : float or None
        Axial voxel size, µm; required for a 3D shape, ignored for 2D.
    na, wavelength_um, immersion_index : float
        Numerical aperture, emission wavelength (µm), immersion refractive index.

    Returns
    -------
    numpy.ndarray
        float32 array of ``shape`` that sums to 1. A 2D shape gives the in-focus
        slice (the kernel that remains once out-of-focus haze is removed); a 3D
        shape gives slices at defocus ``(z - Z//2) * z_step_um``, truncated to the
        lateral ``shape`` (far-out-of-focus slices lose the light outside it).

    Examples
    --------
    >>> h = widefield_psf(shape=(33, 33), pixel_size_um=0.1, z_step_um=None,
    ...                   na=1.4, wavelength_um=0.52, immersion_index=1.515)
    >>> round(float(h.sum()), 5)
    1.0
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"shape must be (Y, X) or (Z, Y, X) with positive sizes, got {shape!r}")
    if len(shape) == 2:
        d = np.zeros(1)
    else:
        if z_step_um is None or not z_step_um > 0:
            raise ValueError(f"a 3D PSF needs z_step_um > 0, got {z_step_um!r}")
        d = (np.arange(shape[0]) - shape[0] // 2) * float(z_step_um)
    yx = shape[-2:]
    # One grid for all slices: large enough for the lateral shape and for the
    # most defocused cone, so nothing wraps into the cropped kernel.
    _check_optics(pixel_size_um, na, wavelength_um, immersion_index)
    n = max(_grid_size(float(np.abs(d).max()), pixel_size_um, na, immersion_index), *yx)
    n = int(scipy.fft.next_fast_len(n))
    slices = np.stack(
        [
            _fit(
                _slice(
                    float(di),
                    n,
                    pixel_size_um=pixel_size_um,
                    na=na,
                    wavelength_um=wavelength_um,
                    immersion_index=immersion_index,
                ),
                yx,
            )
            for di in d
        ]
    )
    psf = slices if len(shape) == 3 else slices[0]
    return (psf / psf.sum()).astype(np.float32)


def measure_fwhm(profile: np.ndarray, *, spacing: float = 1.0) -> float:
    """FWHM of a single-peaked 1D profile by linear interpolation, in ``spacing`` units."""
    p = np.asarray(profile, dtype=np.float64)
    i = int(np.argmax(p))
    half = p[i] / 2.0
    left = i
    while left > 0 and p[left - 1] >= half:
        left -= 1
    right = i
    while right < p.size - 1 and p[right + 1] >= half:
        right += 1
    if left == 0 or right == p.size - 1:
        raise ValueError("profile does not fall below half maximum on both sides")
    xl = left - 1 + (half - p[left - 1]) / (p[left] - p[left - 1])
    xr = right + (p[right] - half) / (p[right] - p[right + 1])
    return float((xr - xl) * spacing)
