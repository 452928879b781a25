"""Small array helpers shared by the segmentation modules: binning, label upsampling,
robust ranges and thresholds on a deterministic subsample."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def as_float32(image: np.ndarray) -> np.ndarray:
    """``image`` as float32 (a copy only when the dtype differs)."""
    return np.asarray(image, dtype=np.float32)


def _exact_int_blocks(dtype: np.dtype, factor: int) -> bool:
    """Whether block sums of a ``dtype`` image are integers below 2**24, i.e. exact in
    float32 whatever the order of the additions."""
    if not np.issubdtype(dtype, np.integer) or dtype.itemsize > 2:
        return False
    info = np.iinfo(dtype)
    return max(info.max, -int(info.min)) * factor * factor < 1 << 24


def _int_block_sum(image: np.ndarray, factor: int) -> np.ndarray:
    """Block sums of a small-integer image in int32, by strided adds (~8× faster than
    a float32 copy and reshape-sum; same values, see :func:`_exact_int_blocks`)."""
    rows = np.add(image[0::factor], image[1::factor], dtype=np.int32)
    for i in range(2, factor):
        rows += image[i::factor]
    out = rows[:, 0::factor] + rows[:, 1::factor]
    for j in range(2, factor):
        out += rows[:, j::factor]
    return out


def bin_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor`` × ``factor`` blocks of a (Y, X) image (edge-padded), float32."""
    if factor == 1:
        return as_float32(image)
    h, w = image.shape
    ph, pw = (-h) % factor, (-w) % factor
    if ph or pw:
        image = np.pad(image, ((0, ph), (0, pw)), mode="edge")
    if _exact_int_blocks(image.dtype, factor):
        out = _int_block_sum(image, factor).astype(np.float32)
        out *= np.float32(1.0 / (factor * factor))
        return out
    image = as_float32(image)
    hb, wb = image.shape[0] // factor, image.shape[1] // factor
    # Sum in two steps over contiguous axes: cheaper than one reshape-mean on 4-D.
    out = image.reshape(hb, factor, wb * factor).sum(axis=1, dtype=np.float32)
    out = out.reshape(hb, wb, factor).sum(axis=2, dtype=np.float32)
    out *= np.float32(1.0 / (factor * factor))
    return out


def upsample_labels(labels: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling of a binned label image back to ``shape``."""
    if factor == 1:
        return labels[: shape[0], : shape[1]]
    out = np.repeat(np.repeat(labels, factor, axis=0), factor, axis=1)
    return np.ascontiguousarray(out[: shape[0], : shape[1]])


def upsampled_label_counts(labels: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """``np.bincount(upsample_labels(labels, factor, shape).ravel())`` from the binned
    labels, without the full-size image: a binned pixel counts its block's rows ×
    columns inside ``shape``."""
    rows = np.clip(shape[0] - factor * np.arange(labels.shape[0]), 0, factor)
    cols = np.clip(shape[1] - factor * np.arange(labels.shape[1]), 0, factor)
    if (rows == factor).all() and (cols == factor).all():
        counts = np.bincount(labels.ravel()) * (factor * factor)
    else:  # integer weights: the float64 sums are exact
        counts = np.bincount(labels.ravel(), np.outer(rows, cols).ravel()).astype(np.int64)
    present = np.flatnonzero(counts)
    return counts[: present[-1] + 1] if present.size else counts[:1]


def downsample_labels(labels: np.ndarray, factor: int) -> np.ndarray:
    """Label image sampled at the centres of ``factor`` × ``factor`` blocks (the grid
    of :func:`bin_mean`: ``ceil(Y / factor)`` × ``ceil(X / factor)``)."""
    if factor == 1:
        return labels
    h, w = labels.shape
    o = factor // 2
    if h % factor == 0 and w % factor == 0:
        return np.ascontiguousarray(labels[o::factor, o::factor])
    # Centres past the edge read the last row / column (edge padding, without a padded copy).
    rows = np.minimum(np.arange(o, h + (-h) % factor, factor), h - 1)
    cols = np.minimum(np.arange(o, w + (-w) % factor, factor), w - 1)
    return labels[np.ix_(rows, cols)]


def subsample(image: np.ndarray, max_pixels: int = 262_144) -> np.ndarray:
    """A regular-grid subsample of at most ~``max_pixels`` values (deterministic)."""
    n = image.size
    step = max(1, int(np.sqrt(n / max_pixels)))
    return image[::step, ::step] if image.ndim == 2 else image.reshape(-1)[:: step * step]


def robust_range(image: np.ndarray, low: float = 0.1, high: float = 99.9) -> tuple[float, float]:
    """The ``low`` and ``high`` percentiles of ``image`` (from a subsample)."""
    sample = subsample(image).astype(np.float32, copy=False).ravel()
    lo, hi = np.percentile(sample, [low, high])
    return float(lo), float(hi)


def otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (any shape); ``nan`` when they are constant."""
    values = np.asarray(values, dtype=np.float32).ravel()
    lo, hi = float(values.min()), float(values.max())
    if not hi > lo:
        return float("nan")
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centers = (edges[:-1] + edges[1:]) / 2
    hist = hist.astype(np.float64)
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1e-12)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1e-12)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centers[int(np.argmax(between[:-1]))])


def local_background(image: np.ndarray, radius_px: float) -> np.ndarray:
    """Smooth local background of a (Y, X) float32 image: a minimum filter of width
    ~2 × ``radius_px`` then a box mean of the same width, computed on a further binned
    copy (the background is smooth) and interpolated back."""
    h, w = image.shape
    radius_px = max(float(radius_px), 1.0)
    # Bin so the window is ~8 binned pixels wide: the estimate is smooth anyway.
    f = max(1, int(radius_px // 4))
    small = bin_mean(image, f)
    size = max(3, int(round(2 * radius_px / f)) | 1)
    bg = ndi.minimum_filter(small, size=size, mode="nearest")
    bg = ndi.uniform_filter(bg, size=size, mode="nearest")
    if f == 1:
        return bg
    zoom = (h / bg.shape[0], w / bg.shape[1])
    out = ndi.zoom(bg, zoom, order=1, mode="nearest", grid_mode=True)
    return np.ascontiguousarray(out[:h, :w], dtype=np.float32)


def relabel_sequential(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber the non-zero labels of ``labels`` to 1..n in increasing order of the
    old ids; returns (new int32 labels, old ids in new order)."""
    present = np.flatnonzero(np.bincount(labels.ravel()))
    present = present[present > 0]
    lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, dtype=np.int32)
    lut[present] = np.arange(1, present.size + 1, dtype=np.int32)
    return lut[labels], present
