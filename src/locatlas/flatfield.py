"""Flat-field (illumination) correction: fit per plate and channel, apply per field.

The model is BaSiC's multiplicative part, ``I_i(y, x) = S(y, x) · R_i(y, x) + offset``:
with cells at random places across many fields, any per-pixel statistic of
``R_i(y, x)`` over fields is the same everywhere, so the same statistic of the observed
fields is proportional to the shading ``S``. We take the median on downsampled fields
(bounded memory: only ``sample × channels × size²`` floats are held, never the plate),
each field normalized by its mean first so bright fields do not dominate, and smooth
it with a low-degree 2-D Legendre polynomial fitted to its logarithm, which also gives
``S`` at full resolution exactly (no interpolation). ``S`` is scaled to mean 1:
correction keeps the plate's mean intensity. (BaSiC's truncated DCT was tried: its
even extension has a kink at the borders, so 12 frequencies still miss a Gaussian
illumination profile by ~9% in the corners.)

Precision is limited by the content, not the model: nuclei or punctate stains on a
shaded background give ~1% error from 20-40 fields, but broad cytoplasmic stains vary
so much from field to field that a few dozen fields of a few cells each leave 5-15%
RMS error (simulated data), worse than not correcting. A split-half self-check
estimates the error per channel and leaves a channel uncorrected when it is too large.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np

from . import ROLES

__all__ = [
    "apply_flatfield",
    "block_mean",
    "fit_flatfield",
    "flatfield_for_roles",
    "load_flatfield",
    "poly_basis",
    "resize_flatfield",
    "save_flatfield",
]


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor × factor`` blocks of the last two axes (remainder cropped),
    in float32."""
    if factor <= 1:
        return image.astype(np.float32, copy=False)
    y, x = image.shape[-2:]
    ny, nx = y // factor, x // factor
    crop = image[..., : ny * factor, : nx * factor].astype(np.float32, copy=False)
    if factor < 8:
        return _strided_block_mean(crop, factor)
    shape = (*image.shape[:-2], ny, factor, nx, factor)
    return crop.reshape(shape).mean(axis=(-3, -1))


def _strided_block_mean(crop: np.ndarray, factor: int) -> np.ndarray:
    """``crop.reshape(..., ny, f, nx, f).mean(axis=(-3, -1))`` for f < 8, ~10x faster.

    numpy reduces two short axes slowly. It sums each block row left to right, then
    the rows top to bottom (its pairwise summation starts at 8 terms): the same
    additions in the same order give the same float32 result bit for bit.
    """
    total = None
    for i in range(factor):
        row = crop[..., i::factor, 0::factor].copy()
        for j in range(1, factor):
            row += crop[..., i::factor, j::factor]
        if total is None:
            total = row
        else:
            total += row
    total /= np.float32(factor * factor)
    return total


def poly_basis(coords: np.ndarray, n: int, degree: int) -> np.ndarray:
    """Legendre polynomials of degree 0..``degree`` at pixel ``coords`` of an axis of
    ``n`` pixels (mapped to [-1, 1]); shape (len(coords), degree + 1)."""
    from numpy.polynomial import legendre

    t = 2.0 * np.asarray(coords, dtype=np.float64) / max(n - 1, 1) - 1.0
    return legendre.legvander(t, degree)


def _smooth_poly(grid: np.ndarray, degree: int, full_shape: tuple[int, int], factor: int):
    """Fit ``log(grid)`` (non-positive and NaN cells ignored) with a 2-D Legendre
    polynomial of total degree ``degree`` by least squares; ``exp`` of it at every
    pixel of ``full_shape``.

    In the log domain a Gaussian illumination profile is exactly quadratic and cos⁴
    vignetting nearly so, and a total-degree basis has few terms (15 for degree 4), so
    the corners (where a tensor basis extrapolates wildly) stay stable.
    """
    ny, nx = grid.shape
    # Block j covers pixels j*f .. j*f+f-1: its centre is at (j + 1/2) f - 1/2.
    by = poly_basis((np.arange(ny) + 0.5) * factor - 0.5, full_shape[0], degree)
    bx = poly_basis((np.arange(nx) + 0.5) * factor - 0.5, full_shape[1], degree)
    terms = [(i, j) for i in range(degree + 1) for j in range(degree + 1 - i)]
    ok = np.isfinite(grid) & (grid > 0)
    if ok.sum() < len(terms):
        raise ValueError("flat-field: too few valid pixels to fit")
    design = np.stack([np.outer(by[:, i], bx[:, j])[ok] for i, j in terms], axis=1)
    coef = np.linalg.lstsq(design, np.log(grid[ok]), rcond=None)[0]
    fy = poly_basis(np.arange(full_shape[0]), full_shape[0], degree)
    fx = poly_basis(np.arange(full_shape[1]), full_shape[1], degree)
    matrix = np.zeros((degree + 1, degree + 1))
    for c, (i, j) in zip(coef, terms, strict=True):
        matrix[i, j] = c
    return np.exp(fy @ matrix @ fx.T)


def fit_flatfield(
    images: Iterable[np.ndarray],
    *,
    size: int = 128,
    order: int = 2,
    statistic: str = "median",
    offset: float = 0.0,
    min_value: float = 0.1,
    max_error: float | None = 0.03,
    min_fields: int = 8,
    return_info: bool = False,
) -> np.ndarray | tuple[np.ndarray, list[dict]]:
    """Estimate a smooth flat-field from many fields of the same optics.

    Parameters
    ----------
    images : iterable of ndarray
        Fields (c, y, x), consumed one at a time (a generator keeps memory bounded).
        All must have the same shape; channels that are all NaN are ignored (a role
        the field lacks).
    size : int
        Working resolution: fields are block-averaged until their longer side is
        about ``size`` px.
    order : int
        Total degree of the log-domain polynomial: 0 = flat; 2 = any (elliptic,
        off-centre) Gaussian profile, the default: few terms keep the estimate stable
        on few fields; 4 follows strong cos⁴ vignetting to <1% but needs more fields.
    statistic : {"median", "mean"}
        Per-pixel statistic across fields (median resists outlier fields).
    offset : float
        Camera dark level subtracted first (same units as ``images``).
    min_value : float
        Lower bound of the result (guards against division by ~0 at dead corners).
    max_error : float or None
        Self-check: the fields are split in two halves (even/odd) and fitted
        separately; half their RMS relative difference estimates the error of the
        full fit. A channel whose estimated error exceeds ``max_error`` is left flat
        (all ones, no correction) rather than corrected with noise. None: no check.
    min_fields : int
        Fewer fields than this (per channel): left flat.
    return_info : bool
        Also return per channel ``{"n_fields", "error", "shading", "applied"}``
        (``shading``: RMS deviation of the fit from flat).

    Returns
    -------
    ndarray, float32, (c, y, x)
        Mean 1 per channel; 1 everywhere for a channel without data or failing the
        self-check.
    """
    if statistic not in ("median", "mean"):
        raise ValueError(f"statistic must be 'median' or 'mean', got {statistic!r}")
    stack: list[np.ndarray] = []
    shape = None
    factor = 1
    for i, image in enumerate(images):
        image = np.asarray(image)
        if image.ndim != 3:
            raise ValueError(f"flat-field image {i}: expected (c, y, x), got shape {image.shape}")
        if shape is None:
            shape = image.shape
            factor = max(1, int(np.ceil(max(shape[1:]) / size)))
        elif image.shape != shape:
            raise ValueError(
                f"flat-field image {i}: shape {image.shape} differs from the first {shape}"
            )
        small = block_mean(image, factor) - np.float32(offset)
        with np.errstate(invalid="ignore", divide="ignore"), _quiet_nan_warnings():
            means = np.nanmean(small, axis=(1, 2), keepdims=True)
            small = np.where(means > 0, small / means, np.nan).astype(np.float32)
        stack.append(small)
    if shape is None:
        raise ValueError("fit_flatfield: no image given")
    data = np.stack(stack)  # (n, c, ny, nx)
    reduce = np.nanmedian if statistic == "median" else np.nanmean

    def fit(subset: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"), _quiet_nan_warnings():
            grid = reduce(subset, axis=0)
        flat = _smooth_poly(grid.astype(np.float64), order, shape[1:], factor)
        return flat / flat.mean()

    out = np.ones(shape, dtype=np.float32)
    info = []
    for c in range(shape[0]):
        have = np.isfinite(data[:, c]).any(axis=(1, 2))
        rec = {"n_fields": int(have.sum()), "error": float("nan"), "shading": 0.0}
        rec["applied"] = False
        if rec["n_fields"] < max(min_fields, 2):
            info.append(rec)
            continue
        sub = data[have, c]
        flat = fit(sub)
        rec["shading"] = float(np.sqrt(np.mean((flat - 1.0) ** 2)))
        if max_error is not None:
            half_a, half_b = fit(sub[0::2]), fit(sub[1::2])
            rec["error"] = float(np.sqrt(np.mean(np.log(half_a / half_b) ** 2)) / 2.0)
            if rec["error"] > max_error:
                info.append(rec)
                continue
        out[c] = np.maximum(flat, min_value)
        rec["applied"] = True
        info.append(rec)
    return (out, info) if return_info else out


class _quiet_nan_warnings:
    """Silence numpy's 'All-NaN slice' warnings (pixels of channels lacking data)."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def apply_flatfield(image: np.ndarray, flatfield: np.ndarray, *, offset: float = 0.0) -> np.ndarray:
    """Divide out the shading: ``(image - offset) / flatfield + offset``.

    Parameters
    ----------
    image : ndarray
        (c, ..., y, x), any dtype.
    flatfield : ndarray
        (c, y, x), mean ~1.

    Returns
    -------
    ndarray, float32, same shape as ``image``.
    """
    image = np.asarray(image)
    flatfield = np.asarray(flatfield, dtype=np.float32)
    if flatfield.shape[0] != image.shape[0] or flatfield.shape[1:] != image.shape[-2:]:
        raise ValueError(
            f"flat-field shape {flatfield.shape} does not fit image {image.shape} (c, ..., y, x)"
        )
    gain = (1.0 / flatfield).reshape(
        (flatfield.shape[0],) + (1,) * (image.ndim - 3) + flatfield.shape[1:]
    )
    if offset:
        out = image.astype(np.float32)
        out -= np.float32(offset)
        out *= gain
        out += np.float32(offset)
        return out
    return np.multiply(image, gain, dtype=np.float32)


def resize_flatfield(flatfield: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A (c, y, x) flat-field linearly resampled to (c, *shape) (it is smooth)."""
    from scipy.ndimage import zoom

    flatfield = np.asarray(flatfield, dtype=np.float32)
    if flatfield.shape[1:] == tuple(shape):
        return flatfield
    factors = (1.0, shape[0] / flatfield.shape[1], shape[1] / flatfield.shape[2])
    out = zoom(flatfield, factors, order=1, mode="nearest", grid_mode=True)
    return out[:, : shape[0], : shape[1]]


def flatfield_for_roles(
    flatfield: np.ndarray | dict | str | os.PathLike, roles: list[str], shape: tuple[int, int]
) -> np.ndarray:
    """The (c, y, x) flat-field of a field whose channels are ``roles``.

    ``flatfield`` is an array over all of :data:`locatlas.ROLES` (as written by
    ``estimate_plate_flatfield``), an array over exactly ``roles``, a dict role ->
    (y, x), or a path to a ``.npy``/``.npz`` file of those. A role without an entry
    gets 1 (no correction); a flat-field of another size is resampled.
    """
    if isinstance(flatfield, str | os.PathLike):
        flatfield = load_flatfield(flatfield)
    if isinstance(flatfield, dict):
        by_role = flatfield
    else:
        arr = np.asarray(flatfield)
        if arr.ndim != 3:
            raise ValueError(f"flat-field must be (c, y, x), got shape {arr.shape}")
        if arr.shape[0] == len(ROLES):
            by_role = dict(zip(ROLES, arr, strict=True))
        elif arr.shape[0] == len(roles):
            by_role = dict(zip(roles, arr, strict=True))
        else:
            raise ValueError(
                f"flat-field has {arr.shape[0]} channels; expected {len(ROLES)} (all roles) "
                f"or {len(roles)} ({roles})"
            )
    planes = []
    for role in roles:
        plane = by_role.get(role)
        planes.append(
            np.ones(shape, np.float32) if plane is None else np.asarray(plane, np.float32)
        )
    out = []
    for plane in planes:
        if plane.shape != tuple(shape):
            plane = resize_flatfield(plane[None], shape)[0]
        out.append(plane)
    return np.stack(out)


def save_flatfield(path: str | os.PathLike, flatfield: np.ndarray | dict) -> None:
    """Save a flat-field: ``.npz`` with one array per role, or ``.npy`` (c, y, x)."""
    from .atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        if str(path).endswith(".npz"):
            if not isinstance(flatfield, dict):
                flatfield = dict(zip(ROLES, np.asarray(flatfield), strict=True))
            np.savez(fh, **{k: np.asarray(v, np.float32) for k, v in flatfield.items()})
        else:
            np.save(fh, np.asarray(flatfield, dtype=np.float32))


def load_flatfield(path: str | os.PathLike) -> np.ndarray | dict[str, np.ndarray]:
    """Load what :func:`save_flatfield` wrote (.npz -> dict role -> (y, x); .npy -> array)."""
    if str(path).endswith(".npz"):
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    return np.load(path)
