"""Nucleus segmentation: background-corrected local-contrast threshold, then a
distance + intensity watershed that splits touching nuclei, then each nucleus is given
back its full extent.

Everything runs on a binned copy of the nucleus channel in which a typical nucleus is
at least ``SegmentParams.work_nucleus_px`` (16) px wide; only the final labels are
brought back to full resolution. Sizes come in µm, so one parameter set fits any
pixel size.

Steps (working scale, ``d`` = nucleus diameter in working pixels):

1. smooth (Gaussian σ = 0.075 d) and subtract a local background (smoothed minimum
   filter over ``background_radius_um``): uneven illumination is removed;
2. foreground = above ``nucleus_threshold_factor`` × Otsu (and 5 noise σ) **and**
   above ``nucleus_local_contrast`` × the local maximum within d/4: the boundary of
   every nucleus falls near its own half-maximum, whether it is dim or a bright
   mitotic figure, and the dim neck between touching nuclei is cut;
3. small holes filled, debris below ``min_nucleus_area_um2`` dropped;
4. seeds = maxima, at least ``split_distance`` apart, of (distance to the background
   / radius + smoothed intensity / its 95th percentile, clipped at 1); watershed of
   that score inside the foreground; neighbours without a saddle between their peaks
   merged (:func:`merge_weak_splits`);
5. each nucleus grown back into the global foreground down to
   ``nucleus_edge_fraction`` × its own mean (:func:`refine_extent`), splits rechecked
   on the full extents, small islands merged into the nucleus they mostly touch
   (:func:`merge_fragments`), fragments below the minimum area dropped.

The module-level constants below are internal tuning values (fractions of ``d`` or
of the score), fixed on ``nuclei_gt``, the CellProfiler examples and simulated
fields; the public knobs are in :class:`~locatlas.segment.SegmentParams`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from ._scale import (
    bin_mean,
    local_background,
    otsu,
    relabel_sequential,
    subsample,
    upsample_labels,
)
from .params import SegmentParams, as_params


def noise_sigma(image: np.ndarray) -> float:
    """Robust noise standard deviation of a (Y, X) image from horizontal pixel
    differences (median absolute difference / (0.6745 √2)); structure barely
    affects it because most neighbouring pixels see the same signal."""
    s = subsample(image, max_pixels=1 << 20)
    diff = np.abs(np.diff(s.astype(np.float32, copy=False), axis=1))
    return float(np.median(diff) / (0.6745 * np.sqrt(2.0)))


def _odd(n: float) -> int:
    return max(3, int(round(n)) | 1)


def _small_holes(mask: np.ndarray, max_hole_px: float) -> np.ndarray:
    """The holes of ``mask`` of at most ``max_hole_px`` pixels. Holes are the background
    regions (4-connected) that do not touch the image border, as filled by
    ``ndi.binary_fill_holes``; one labelling finds them faster than its dilations."""
    background, n = ndi.label(~mask)
    small = np.bincount(background.ravel(), minlength=n + 1) <= max_hole_px
    small[0] = False
    for edge in (background[0], background[-1], background[:, 0], background[:, -1]):
        small[edge] = False
    return small[background]


def _fill_small_holes(mask: np.ndarray, max_hole_px: float) -> np.ndarray:
    """Fill holes of ``mask`` smaller than ``max_hole_px`` pixels (large background
    pockets enclosed by a ring of nuclei stay background)."""
    return mask | _small_holes(mask, max_hole_px)


def _drop_small(labels: np.ndarray, min_px: float) -> np.ndarray:
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_px
    keep[0] = False
    return np.where(keep[labels], labels, 0).astype(np.int32, copy=False)


def merge_weak_splits(
    labels: np.ndarray, score: np.ndarray, *, h: float, max_area_px: float
) -> np.ndarray:
    """Merge touching objects that the watershed split without a real saddle.

    Two neighbours merge when the highest ``score`` on their shared boundary is within
    ``h`` of the lower of their two peaks (an elongated nucleus has one long ridge; two
    touching nuclei have a neck) and their union is below ``max_area_px``.
    """
    n = int(labels.max())
    if n < 2:
        return labels
    keys, saddles = [], []
    for a, b, sa, sb in (
        (labels[:, :-1], labels[:, 1:], score[:, :-1], score[:, 1:]),
        (labels[:-1, :], labels[1:, :], score[:-1, :], score[1:, :]),
    ):
        m = (a != b) & (a > 0) & (b > 0)
        if m.any():
            la, lb = a[m].astype(np.int64), b[m].astype(np.int64)
            keys.append(np.minimum(la, lb) * (n + 1) + np.maximum(la, lb))
            saddles.append(np.minimum(sa[m], sb[m]))
    if not keys:
        return labels
    key = np.concatenate(keys)
    sad = np.concatenate(saddles)
    order = np.argsort(key, kind="stable")
    key, sad = key[order], sad[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    pair = key[starts]
    saddle = np.maximum.reduceat(sad, starts)
    peak = np.zeros(n + 1, np.float32)
    np.maximum.at(peak, labels.ravel(), score.ravel())
    area = np.bincount(labels.ravel(), minlength=n + 1).astype(np.float64)
    lo, hi = pair // (n + 1), pair % (n + 1)
    depth = np.minimum(peak[lo], peak[hi]) - saddle
    cand = np.flatnonzero(depth < h)
    if cand.size == 0:
        return labels
    parent = np.arange(n + 1)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    merged_area = area.copy()
    for k in cand[np.argsort(depth[cand], kind="stable")]:
        ra, rb = root(int(lo[k])), root(int(hi[k]))
        if ra == rb or merged_area[ra] + merged_area[rb] > max_area_px:
            continue
        ra, rb = min(ra, rb), max(ra, rb)
        parent[rb] = ra
        merged_area[ra] += merged_area[rb]
    lut = np.array([root(i) for i in range(n + 1)], dtype=np.int32)
    return lut[labels]


def refine_extent(
    labels: np.ndarray,
    signal: np.ndarray,
    foreground: np.ndarray,
    *,
    beta: float,
    max_hole_px: float,
) -> np.ndarray:
    """Give each nucleus its full extent: grow it into the global foreground and keep
    the pixels brighter than ``beta`` × its own mean signal, then fill its small holes.

    The local-contrast mask that separates nuclei also carves dark chromatin (nucleoli,
    heterochromatin-poor regions) out of textured nuclei; an object-level threshold
    puts them back without merging neighbours, which keep their own seeds.
    """
    n = int(labels.max())
    if n == 0:
        return labels
    grown = watershed(-signal, labels, mask=foreground | (labels > 0))
    count = np.bincount(labels.ravel(), minlength=n + 1)
    total = np.bincount(labels.ravel(), weights=signal.ravel(), minlength=n + 1)
    level = (total / np.maximum(count, 1)).astype(np.float32)
    level[0] = np.inf
    keep = (labels > 0) | (signal > np.float32(beta) * level[grown])
    grown = np.where(keep, grown, 0).astype(np.int32, copy=False)
    return fill_label_holes(grown, max_hole_px)


def fill_label_holes(labels: np.ndarray, max_hole_px: float) -> np.ndarray:
    """Fill background holes smaller than ``max_hole_px`` that are enclosed by objects;
    a hole takes the label of the object just left of its first pixel (in raster order
    that pixel is on the hole's enclosing boundary)."""
    holes = _small_holes(labels > 0, max_hole_px)
    if not holes.any():
        return labels
    hole_lab, n_holes = ndi.label(holes)
    flat = hole_lab.ravel()
    _, first = np.unique(flat, return_index=True)
    first = first[1:] if flat[first[0]] == 0 else first  # drop the background entry
    lut = np.zeros(n_holes + 1, np.int32)
    lut[flat[first]] = labels.ravel()[first - 1]
    return np.where(holes, lut[hole_lab], labels)


def merge_fragments(labels: np.ndarray, *, max_area_px: float, min_contact: float) -> np.ndarray:
    """Merge small objects into the neighbour they mostly touch.

    A textured nucleus can leave a small island (between dark chromatin) with its own
    seed; once the nucleus is grown back to its full extent the island touches it along
    much of its outline. Objects below ``max_area_px`` whose contact with one neighbour
    exceeds ``min_contact`` × their boundary length join that neighbour.
    """
    n = int(labels.max())
    if n < 2:
        return labels
    area = np.bincount(labels.ravel(), minlength=n + 1)
    small = (area < max_area_px) & (area > 0)
    small[0] = False
    if not small.any():
        return labels
    src, dst = [], []
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        m = (a != b) & (small[a] | small[b])
        src.append(a[m])
        dst.append(b[m])
    a = np.concatenate(src + dst).astype(np.int64)
    b = np.concatenate(dst + src).astype(np.int64)
    keep = small[a]
    a, b = a[keep], b[keep]  # a small object, b what lies across its boundary
    if a.size == 0:
        return labels
    boundary = np.bincount(a, minlength=n + 1)
    key = a * (n + 1) + b
    pairs, contact = np.unique(key[b > 0], return_counts=True)
    if pairs.size == 0:
        return labels
    pa, pb = pairs // (n + 1), pairs % (n + 1)
    order = np.lexsort((pb, -contact, pa))  # per small object, largest contact first
    pa, pb, contact = pa[order], pb[order], contact[order]
    first = np.r_[True, pa[1:] != pa[:-1]]
    pa, pb, contact = pa[first], pb[first], contact[first]
    ok = contact >= min_contact * boundary[pa]
    lut = np.arange(n + 1, dtype=np.int32)
    lut[pa[ok]] = pb[ok]
    # Follow chains (a fragment merged into another fragment) to their end.
    for _ in range(4):
        lut = lut[lut]
    return lut[labels]


#: Internal tuning constants (see the module docstring).
_MERGE_H = 0.1
_SIGMA = 0.075
_BRIGHT_SIGMA = 0.15
_MERGE_MAX_AREA = 2.0
_INTENSITY_WEIGHT = 0.5
_INTENSITY_CLIP = 1.0
_FRAGMENT_AREA = 0.3
_REMERGE = 0.1
_FRAGMENT_CONTACT = 0.25


def nuclei_working(
    nucleus: np.ndarray, *, pixel_size_um: float, params: SegmentParams
) -> tuple[np.ndarray, int, dict]:
    """Nucleus labels at the working scale.

    Parameters
    ----------
    nucleus : ndarray (Y, X)
        Nucleus (DNA) channel, any real dtype, full resolution.
    pixel_size_um : float
        Pixel size of ``nucleus`` in µm.
    params : SegmentParams

    Returns
    -------
    labels : ndarray (Yw, Xw) int32
        Labels 1..n on the binned grid (``ceil(Y / factor)`` rows).
    factor : int
        Binning factor (working pixel = ``factor`` × ``pixel_size_um``).
    info : dict
        Threshold and contrast diagnostics for QC (``threshold``, ``noise``,
        ``contrast``: foreground/background separation in noise σ).
    """
    f = params.working_factor(pixel_size_um, nucleus.shape)
    pw = pixel_size_um * f
    d = params.nucleus_diameter_um / pw  # nucleus diameter, working px
    x = bin_mean(nucleus, f)
    sigma = max(0.5, _SIGMA * d)
    s = ndi.gaussian_filter(x, sigma, mode="nearest", truncate=3.0)
    b = s - local_background(s, params.background_radius / pw)

    # Noise of the smoothed image: raw noise σ shrinks by ~2√π σ under a Gaussian.
    noise = noise_sigma(x) / (2.0 * np.sqrt(np.pi) * sigma)
    sample = subsample(b)
    t_otsu = otsu(sample)
    if not np.isfinite(t_otsu):
        return np.zeros(x.shape, np.int32), f, {"threshold": float("nan"), "noise": noise}
    threshold = max(params.nucleus_threshold_factor * t_otsu, 5.0 * noise)
    fg = b > threshold
    if params.nucleus_local_contrast > 0:
        local_max = ndi.maximum_filter(b, size=_odd(0.5 * d), mode="nearest")
        fg &= b > params.nucleus_local_contrast * local_max
    area_px = np.pi * d * d / 4
    fg = _fill_small_holes(fg, 0.3 * area_px)
    min_px = params.min_nucleus_area / (pw * pw)
    lab0, _ = ndi.label(fg)
    fg = _drop_small(lab0, min_px) > 0
    info = {"threshold": float(threshold), "noise": float(noise)}
    above = sample[sample > threshold]
    info["contrast"] = float(np.median(above) / max(noise, 1e-6)) if above.size else 0.0
    if not fg.any():
        return np.zeros(x.shape, np.int32), f, info

    # Seeds: distance to background (shape) plus smoothed brightness (intensity
    # declumping), so both necked and dim-boundary clumps split.
    dist = ndi.distance_transform_edt(fg).astype(np.float32)
    dist = ndi.gaussian_filter(dist, 1.0, mode="nearest", truncate=3.0)
    bright = ndi.gaussian_filter(b, max(0.5, _BRIGHT_SIGMA * d), mode="nearest", truncate=3.0)
    ref = float(np.percentile(subsample(bright)[subsample(fg)], 95)) if fg.any() else 1.0
    bright = np.minimum(bright * np.float32(1.0 / max(ref, 1e-6)), np.float32(_INTENSITY_CLIP))
    score = dist * np.float32(2.0 / d) + bright * np.float32(_INTENSITY_WEIGHT)
    score[~fg] = 0
    peaks = (score >= ndi.maximum_filter(score, size=_odd(params.split_distance / pw))) & fg
    markers, _ = ndi.label(peaks)
    labels = watershed(-score, markers, mask=fg)
    if _MERGE_H > 0:
        labels = merge_weak_splits(labels, score, h=_MERGE_H, max_area_px=_MERGE_MAX_AREA * area_px)
    if params.nucleus_edge_fraction > 0:
        labels = refine_extent(
            labels, b, b > threshold, beta=params.nucleus_edge_fraction, max_hole_px=0.3 * area_px
        )
    if _REMERGE and params.nucleus_edge_fraction > 0:
        # Recheck the splits on the full extents (a textured nucleus can be cut in two
        # halves whose seeds were separated by dark chromatin).
        dist2 = ndi.distance_transform_edt(labels > 0).astype(np.float32)
        dist2 = ndi.gaussian_filter(dist2, 1.0, mode="nearest", truncate=3.0)
        score2 = dist2 * np.float32(2.0 / d) + bright * np.float32(_INTENSITY_WEIGHT)
        labels = merge_weak_splits(
            labels, score2, h=_REMERGE, max_area_px=_MERGE_MAX_AREA * area_px
        )
    if _FRAGMENT_AREA > 0:
        labels = merge_fragments(
            labels, max_area_px=_FRAGMENT_AREA * area_px, min_contact=_FRAGMENT_CONTACT
        )
    labels = _drop_small(labels.astype(np.int32, copy=False), min_px)
    labels, _ = relabel_sequential(labels)
    return labels, f, info


def segment_nuclei(
    nucleus: np.ndarray,
    *,
    pixel_size_um: float,
    params: SegmentParams | dict | None = None,
) -> np.ndarray:
    """Segment nuclei in one (Y, X) DNA image.

    Parameters
    ----------
    nucleus : ndarray (Y, X)
        Nucleus channel, any real dtype.
    pixel_size_um : float
        Pixel size in µm.
    params : SegmentParams, dict or None

    Returns
    -------
    ndarray (Y, X) int32
        Nucleus labels 1..n (0 = background), numbered in raster order of their seeds.

    Examples
    --------
    >>> labels = segment_nuclei(dapi, pixel_size_um=0.2)  # doctest: +SKIP
    """
    params = as_params(params)
    nucleus = np.asarray(nucleus)
    if nucleus.ndim != 2:
        raise ValueError(f"segment_nuclei: expected a (Y, X) image, got shape {nucleus.shape}")
    labels, f, _ = nuclei_working(nucleus, pixel_size_um=pixel_size_um, params=params)
    return upsample_labels(labels, f, nucleus.shape)
