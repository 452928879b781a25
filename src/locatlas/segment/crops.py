"""Per-cell crops of fixed physical size for the localization model.

The whole field is resampled once to the crop resolution (``size_um / size_px`` µm per
pixel: integer block-mean binning, then linear interpolation for the remaining
factor), so every crop is a plain slice and crops of one field share one intensity
scale (the field's 0.1–99.9 percentile range of each channel -> 0..1).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ._scale import bin_mean, robust_range
from .features import LabelRuns


def _resample(channel: np.ndarray, ratio: float) -> np.ndarray:
    """Resample a (Y, X) image to float32 by ``ratio`` output px per input px (< 1 shrinks):
    block-mean by the integer part of 1/ratio (anti-aliasing), then linear zoom."""
    k = int(np.floor(1.0 / ratio + 1e-9)) if ratio < 1 else 1
    channel = bin_mean(channel, k)  # float32 (integer images binned without a copy)
    ratio = ratio * k
    if abs(ratio - 1.0) < 1e-9:
        return channel
    out_shape = tuple(max(1, int(round(s * ratio))) for s in channel.shape)
    return ndi.zoom(
        channel, np.divide(out_shape, channel.shape), order=1, grid_mode=True, mode="nearest"
    )


def _resample_labels(labels: np.ndarray, ratio: float, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of a label image onto a grid of ``shape`` covering
    the same field (pixel centres mapped through the pixel-edge convention)."""
    h, w = labels.shape
    ys = np.minimum(((np.arange(shape[0]) + 0.5) * (h / shape[0])).astype(np.intp), h - 1)
    xs = np.minimum(((np.arange(shape[1]) + 0.5) * (w / shape[1])).astype(np.intp), w - 1)
    return labels[ys[:, None], xs[None, :]]


def _cell_centroids(
    cells: np.ndarray,
    cell_ids: np.ndarray | None,
    centroids: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The cell ids to crop and their centroid rows and columns (full-resolution px)."""
    if centroids is not None:
        if cell_ids is None:
            raise ValueError("extract_crops: centroids need the cell_ids they belong to")
        cell_ids = np.asarray(cell_ids, dtype=np.int64).ravel()
        cy, cx = (np.asarray(c, dtype=np.float64).ravel() for c in centroids)
        if not cy.size == cx.size == cell_ids.size:
            raise ValueError("extract_crops: one centroid per cell id expected")
        return cell_ids, cy, cx
    # areas and centroids from the row runs of the labels
    counts, cy, cx = LabelRuns.of(cells).moments()[:3]
    if cell_ids is None:
        cell_ids = np.flatnonzero(counts)
        cell_ids = cell_ids[cell_ids > 0]
    cell_ids = np.asarray(cell_ids, dtype=np.int64).ravel()
    missing = [int(k) for k in cell_ids if k < 1 or k >= counts.size or counts[k] == 0]
    if missing:
        raise ValueError(f"extract_crops: cell ids not in the label image: {missing[:10]}")
    return cell_ids, cy[cell_ids], cx[cell_ids]


def extract_crops(
    image: np.ndarray,
    cells: np.ndarray,
    nuclei: np.ndarray,
    *,
    pixel_size_um: float,
    size_um: float = 40.0,
    size_px: int = 64,
    cell_ids: np.ndarray | None = None,
    centroids: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut a fixed-size, fixed-resolution crop around every cell.

    Parameters
    ----------
    image : ndarray (C, Y, X)
        The field, any real dtype.
    cells, nuclei : ndarray (Y, X) int
        Labels from :func:`segment_field` (cell ``k`` contains nucleus ``k``).
    pixel_size_um : float
        Pixel size of ``image`` (µm).
    size_um : float
        Side of the crop in µm.
    size_px : int
        Side of the crop in pixels (crop resolution = ``size_um / size_px`` µm/px).
    cell_ids : array of int, optional
        Cells to crop, in this order; default every cell id present, ascending.
    centroids : (ndarray, ndarray), optional
        Centroid rows and columns (full-resolution px) of ``cell_ids``, e.g. the
        ``centroid_y`` / ``centroid_x`` columns of :func:`measure_cells` (saves a scan
        of the labels); default computed from ``cells``.

    Returns
    -------
    crops : ndarray (N, C, S, S) float16
        Each channel scaled by the field's 0.1–99.9 percentile range to 0..1 (clipped),
        centred on the cell centroid; zero outside the image.
    masks : ndarray (N, 2, S, S) uint8
        ``[cell mask, nucleus mask]`` of that cell only (1 inside).
    """
    image = np.asarray(image)
    cells = np.asarray(cells)
    nuclei = np.asarray(nuclei)
    if image.ndim != 3:
        raise ValueError(f"extract_crops: expected a (C, Y, X) image, got shape {image.shape}")
    if cells.shape != image.shape[1:] or nuclei.shape != image.shape[1:]:
        raise ValueError(
            f"extract_crops: label shapes {cells.shape}/{nuclei.shape} != image {image.shape[1:]}"
        )
    if not (pixel_size_um > 0 and size_um > 0 and int(size_px) > 0):
        raise ValueError("extract_crops: pixel_size_um, size_um and size_px must be > 0")
    size_px = int(size_px)
    n_ch = image.shape[0]
    cell_ids, cy, cx = _cell_centroids(cells, cell_ids, centroids)
    n = cell_ids.size
    crops = np.zeros((n, n_ch, size_px, size_px), np.float16)
    masks = np.zeros((n, 2, size_px, size_px), np.uint8)
    if n == 0:
        return crops, masks

    ratio = pixel_size_um * size_px / size_um  # output px per input px
    half = size_px // 2
    pad = size_px
    scaled = None  # (C, Y + 2 pad, X + 2 pad) float16, zero outside the image
    for c in range(n_ch):
        lo, hi = robust_range(image[c], 0.1, 99.9)
        ch = _resample(image[c], ratio)
        ch = (ch - np.float32(lo)) * np.float32(1.0 / max(hi - lo, 1e-12))
        np.clip(ch, 0, 1, out=ch)
        if scaled is None:
            scaled = np.zeros((n_ch, ch.shape[0] + 2 * pad, ch.shape[1] + 2 * pad), np.float16)
        # Converted to float16 once per field, not once per (overlapping) crop.
        scaled[c, pad:-pad, pad:-pad] = ch
    grid = scaled.shape[1] - 2 * pad, scaled.shape[2] - 2 * pad
    cell_r = np.pad(_resample_labels(cells, ratio, grid), pad)
    nuc_r = np.pad(_resample_labels(nuclei, ratio, grid), pad)
    sy, sx = grid[0] / cells.shape[0], grid[1] / cells.shape[1]
    for i, k in enumerate(cell_ids):
        # Centre of the cell on the resampled grid (pixel-centre convention).
        y0 = int(np.floor((cy[i] + 0.5) * sy)) - half + pad
        x0 = int(np.floor((cx[i] + 0.5) * sx)) - half + pad
        sl = (slice(y0, y0 + size_px), slice(x0, x0 + size_px))
        crops[i] = scaled[:, sl[0], sl[1]]
        masks[i, 0] = cell_r[sl] == k
        masks[i, 1] = nuc_r[sl] == k
    return crops, masks
