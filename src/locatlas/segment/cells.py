"""Cell segmentation seeded by nuclei, grown on the cytoplasmic reference channels.

On a binned grid (``SegmentParams.cell_factor``: a nucleus at least
``work_cell_nucleus_px`` = 12 px wide), with ``d`` the nucleus diameter there:

1. each cytoplasmic channel is scaled to its field range (1st–99.5th percentile) and
   the channels are averaged, so a bright ER stain does not drown the microtubules;
   smoothed (σ = 0.1 d) and a smooth background (minimum filter over 2 ×
   ``cell_max_distance_um``) subtracted;
2. foreground = signal above ``cell_threshold_factor`` × Otsu (of its logarithm:
   cytoplasm brightness varies several-fold from cell to cell), plus the nuclei,
   within ``cell_max_distance_um`` of a nucleus;
3. seeded watershed of the inverted signal from the nuclei (grown by 0.15 d, past
   their dim rim), inside the foreground: two touching cells part along the dimmest
   line between their nuclei. Foreground farther than ``cell_orphan_distance_um``
   from every nucleus seeds decoy regions, dropped afterwards;
4. foreground that no nucleus reaches (cytoplasm without a nucleus: a cell whose
   nucleus lies outside the field or was missed) is dropped and counted for QC;
5. each cell is trimmed where its signal falls below 0.3 × its own mean (the blur
   halo around bright cells).

Without a cytoplasmic channel cells are the nuclei grown by ``cell_expand_um``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import expand_labels, watershed

from ._scale import (
    bin_mean,
    downsample_labels,
    local_background,
    otsu,
    subsample,
    upsample_labels,
)
from .params import SegmentParams


def _normalised_mean(channels: Sequence[np.ndarray], factor: int) -> np.ndarray:
    acc = None
    for ch in channels:
        x = bin_mean(ch, factor)
        lo, hi = np.percentile(subsample(x), [1.0, 99.5])
        scale = np.float32(1.0 / max(float(hi - lo), 1e-6))
        x = (x - np.float32(lo)) * scale
        acc = x if acc is None else acc + x
    acc *= np.float32(1.0 / len(channels))
    return acc


def grow_labels(labels: np.ndarray, radius_px: int) -> np.ndarray:
    """Grow labels into the background by ``radius_px`` (3×3 max-filter steps; where two
    labels meet, the larger id wins): a cheap stand-in for a Euclidean expansion when
    the radius is a few pixels."""
    out = labels
    for _ in range(max(0, radius_px)):
        out = np.where(out > 0, out, ndi.maximum_filter(out, size=3))
    return out


def _distance_to_nuclei(nuclei_w: np.ndarray, step: int) -> np.ndarray:
    """Distance (working px) to the nearest nucleus, on a ``step``-times coarser grid
    brought back by repetition: exact enough for a distance cap, ~step² faster."""
    coarse = ~(downsample_labels(nuclei_w, step) > 0) if step > 1 else ~(nuclei_w > 0)
    if coarse.all():
        return np.full(nuclei_w.shape, np.inf, np.float32)
    dist = ndi.distance_transform_edt(coarse).astype(np.float32) * np.float32(step)
    return upsample_labels(dist, step, nuclei_w.shape)


#: Internal tuning constants: seed margin around each nucleus (× nucleus diameter),
#: cell edge (× the cell's mean signal), background window (× cell_max_distance).
_SEED_MARGIN = 0.15
_EDGE_FRACTION = 0.3
_BG_RADIUS = 2.0


def cells_working(
    cyto: Sequence[np.ndarray],
    nuclei: np.ndarray,
    *,
    pixel_size_um: float,
    params: SegmentParams,
) -> tuple[np.ndarray, int, dict]:
    """Cell labels on the cell step's working grid.

    Parameters
    ----------
    cyto : sequence of ndarray (Y, X)
        Full-resolution cytoplasmic reference channels (may be empty).
    nuclei : ndarray (Y, X) int32
        Full-resolution nucleus labels.
    pixel_size_um : float
        Full-resolution pixel size (µm).
    params : SegmentParams

    Returns
    -------
    cells_w : ndarray (Yw, Xw) int32
        Cell ``k`` grown from nucleus ``k``; 0 = background.
    factor : int
        Binning factor of the grid (``params.cell_factor``).
    info : dict
        ``orphan_area_fraction``: share of the cytoplasm foreground that no nucleus
        reached; ``n_orphan_regions``: how many such regions (larger than the
        minimum nucleus area) were dropped; ``grown``: how cells were made.
    """
    factor = params.cell_factor(pixel_size_um, nuclei.shape)
    nuclei_w = downsample_labels(nuclei, factor)
    pw = pixel_size_um * factor
    d = params.nucleus_diameter_um / pw
    info: dict = {"orphan_area_fraction": 0.0, "n_orphan_regions": 0}
    if not cyto:
        dist = params.cell_expand / pw
        info["grown"] = "expanded"
        return expand_labels(nuclei_w, distance=dist).astype(np.int32, copy=False), factor, info
    info["grown"] = "watershed"
    r = _normalised_mean(cyto, factor)
    r = ndi.gaussian_filter(r, max(0.5, 0.1 * d), mode="nearest", truncate=3.0)
    if _BG_RADIUS > 0:
        # Smooth background (minimum over ~2 × the farthest reach of a cell): removes
        # additive haze and ramps; fields without any gap between cells lose only
        # their dimmest cytoplasm level.
        r = r - local_background(r, _BG_RADIUS * params.cell_max_distance / pw)
    nuc = nuclei_w > 0
    # Otsu of log signal: cytoplasm brightness is multiplicative from cell to cell.
    sample = subsample(r)
    floor = float(np.percentile(sample, 1.0))
    span = float(np.percentile(sample, 99.5)) - floor
    eps = max(span * 1e-3, 1e-6)
    logs = np.log(np.maximum(sample - floor, 0) + eps)
    t_log = otsu(logs)
    if np.isfinite(t_log):
        threshold = floor + (np.exp(t_log) - eps) * params.cell_threshold_factor
        fg = (r > threshold) | nuc
    else:
        fg = nuc.copy()
    step = max(1, int(d // 8))
    dist = _distance_to_nuclei(nuclei_w, step)
    reach = fg & (dist <= params.cell_max_distance / pw)
    # Seeds: the nuclei grown by a small margin, past the dim rim that blur and the
    # nuclear exclusion of the cytoplasm stain leave around them; otherwise a
    # neighbour flooding through bright cytoplasm could surround a seed first.
    markers = grow_labels(nuclei_w, int(round(_SEED_MARGIN * d)))
    markers = np.where(reach, markers, 0)
    n = int(nuclei_w.max())
    if params.orphan_distance > 0:
        # Decoy seeds where the cytoplasm is far from every nucleus (all such pixels,
        # so that a decoy holds the bright core of its cell from the start): a cell whose own
        # nucleus is missing (out of the field, out of focus) floods from them and is
        # dropped instead of being swallowed by its neighbours.
        far = reach & (dist > params.orphan_distance / pw)
        if far.any():
            decoys, _ = ndi.label(far)
            markers = np.where(decoys > 0, decoys + n, markers)
    cells_w = watershed(-r, markers, mask=reach, compactness=params.cell_compactness * pw)
    cells_w = np.where(cells_w > n, 0, cells_w).astype(np.int32, copy=False)
    orphan = fg & (cells_w == 0)
    fg_area = int(np.count_nonzero(fg))
    if fg_area:
        info["orphan_area_fraction"] = float(np.count_nonzero(orphan) / fg_area)
        if orphan.any():
            lab_o, n_o = ndi.label(orphan)
            sizes = np.bincount(lab_o.ravel(), minlength=n_o + 1)[1:]
            info["n_orphan_regions"] = int(
                np.count_nonzero(sizes >= params.min_nucleus_area / pw**2)
            )
    if _EDGE_FRACTION > 0 and n:
        # Each cell ends where its signal falls below a fraction of its own mean: the
        # blur halo of a bright cell is not cytoplasm, the dim edge of a dim cell is.
        count = np.bincount(cells_w.ravel(), minlength=n + 1)[: n + 1]
        total = np.bincount(cells_w.ravel(), weights=r.ravel(), minlength=n + 1)[: n + 1]
        level = (total / np.maximum(count, 1)).astype(np.float32)
        keep = (r > np.float32(_EDGE_FRACTION) * level[cells_w]) | (nuclei_w > 0)
        cells_w = np.where(keep, cells_w, 0)
    return cells_w, factor, info
