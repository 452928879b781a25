"""Per-cell measurements: geometry, intensities, texture, colocalization and radial
distribution, computed for all cells at once.

Every statistic is a sum over pixels grouped by cell label, computed for all cells
at once rather than in a Python loop over regions: intensity sums with
``np.add.reduceat`` over the pixels regrouped by cell (one stable sort), geometry
from row runs, co-occurrence and radial sums with ``np.bincount``; percentiles come
from one sort of (label, value) keys. The feature definitions are documented in
``docs/features.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from .. import ROLES
from ._scale import downsample_labels, otsu, subsample

#: Number of rings of the radial distribution (nucleus centre -> membrane).
N_RINGS = 4
#: Grey levels of the co-occurrence matrices.
TEXTURE_LEVELS = 16
#: Pixel offset of the co-occurrence matrices, in µm (CellProfiler's default is 3 px).
TEXTURE_SCALE_UM = 0.6
#: Directions sampled to find convex-hull vertices.
_HULL_DIRECTIONS = 32
TEXTURE_FEATURES = ("contrast", "homogeneity", "asm", "entropy", "correlation")
PERCENTILES = (5, 50, 95)


def feature_columns(roles: Sequence[str]) -> list[str]:
    """The column names :func:`measure_cells` returns for ``roles``, in order."""
    cols = [
        "cell_id",
        "centroid_y",
        "centroid_x",
        "centroid_y_um",
        "centroid_x_um",
        "bbox_y0",
        "bbox_x0",
        "bbox_y1",
        "bbox_x1",
        "edge",
        "cell_area_px",
        "cell_area_um2",
        "nucleus_area_px",
        "nucleus_area_um2",
        "cytoplasm_area_um2",
        "nucleus_cell_area_ratio",
        "nucleus_centroid_y",
        "nucleus_centroid_x",
        "nucleus_offset_um",
        "major_axis_um",
        "minor_axis_um",
        "orientation",
        "eccentricity",
        "solidity",
        "nucleus_major_axis_um",
        "nucleus_minor_axis_um",
        "nucleus_eccentricity",
        "nucleus_solidity",
    ]
    for role in roles:
        cols += [
            f"{role}_mean",
            f"{role}_std",
            f"{role}_integrated",
            *(f"{role}_p{q:02d}" for q in PERCENTILES),
            f"{role}_nuc_mean",
            f"{role}_cyto_mean",
            f"{role}_nuc_integrated",
            f"{role}_nuc_cyto_ratio",
            f"{role}_background",
            *(f"{role}_tex_{t}" for t in TEXTURE_FEATURES),
        ]
        if role != "nucleus":
            cols += [f"{role}_radial_frac_{i}" for i in range(1, N_RINGS + 1)]
            cols += [f"{role}_radial_meanfrac_{i}" for i in range(1, N_RINGS + 1)]
    if "protein" in roles:
        for ref in roles:
            if ref != "protein":
                cols += [
                    f"protein_{ref}_pearson",
                    f"protein_{ref}_manders_m1",
                    f"protein_{ref}_manders_m2",
                ]
    return cols


def _check(image, nuclei, cells, roles, pixel_size_um) -> tuple[np.ndarray, list[str]]:
    image = np.asarray(image)
    roles = list(roles)
    if image.ndim != 3:
        raise ValueError(f"measure_cells: expected a (C, Y, X) image, got shape {image.shape}")
    if image.shape[0] != len(roles):
        raise ValueError(f"measure_cells: {image.shape[0]} channels but roles {roles}")
    bad = [r for r in roles if r not in ROLES]
    if bad or len(set(roles)) != len(roles):
        raise ValueError(f"measure_cells: roles must be distinct names from {ROLES}, got {roles}")
    for name, lab in (("nuclei", nuclei), ("cells", cells)):
        if lab.shape != image.shape[1:]:
            raise ValueError(f"measure_cells: {name} shape {lab.shape} != image {image.shape[1:]}")
        if not np.issubdtype(lab.dtype, np.integer):
            raise ValueError(f"measure_cells: {name} must be an integer label image")
        if lab.size and lab.min() < 0:
            raise ValueError(f"measure_cells: {name} has negative labels")
    if not (np.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise ValueError(f"measure_cells: pixel_size_um must be > 0, got {pixel_size_um!r}")
    return image, roles


def _nonzero_index(flat: np.ndarray) -> np.ndarray:
    """``np.flatnonzero(flat)``: a bool mask is scanned ~4× faster than int labels."""
    return np.flatnonzero(flat != 0)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


class _Groups:
    """Per-label sums over a set of labelled pixels.

    ``np.bincount`` with weights is ~4× slower when consecutive pixels hit the same
    bin (each add waits for the previous one), which is the case for raster-ordered
    pixels of a cell; spreading every label over 8 interleaved sub-bins removes that
    dependency chain.
    """

    def __init__(self, lab: np.ndarray, n: int):
        self.n = n
        self.key = (lab << 3) | (np.arange(lab.size, dtype=np.intp) & 7)
        self.count = self.sum(None)

    def sum(self, weights: np.ndarray | None) -> np.ndarray:
        out = np.bincount(self.key, weights, minlength=8 * (self.n + 1))
        return out.reshape(self.n + 1, 8).sum(axis=1, dtype=np.float64)


class _Segments:
    """The labelled pixels regrouped by cell, nucleus pixels first within each cell
    (raster order within each part), so that per-cell and per-nucleus sums are
    ``np.add.reduceat`` over contiguous segments: ~4× faster than a weighted
    ``np.bincount`` and no gather per subset. One stable sort, shared by all channels.
    """

    def __init__(self, idx: np.ndarray, lab: np.ndarray, in_nuc: np.ndarray, n: int):
        part = 2 * lab + ~in_nuc  # (cell, 0 = nucleus / 1 = rest)
        # A 16-bit key makes the stable argsort a radix sort.
        small = part.astype(np.uint16) if 2 * (n + 1) <= 1 << 16 else part
        order = np.argsort(small, kind="stable")
        self.pix = np.take(idx, order)  # flat pixel index, in segment order
        sizes = np.bincount(part, minlength=2 * (n + 1))
        starts = np.cumsum(sizes) - sizes
        self.count = sizes.reshape(n + 1, 2).sum(axis=1)
        self.lab = np.repeat(np.arange(n + 1), self.count)  # label of every pixel
        self._cell = (starts[0::2], self.count > 0)
        self._part = (starts, sizes > 0)

    @staticmethod
    def _reduce(w: np.ndarray, starts: np.ndarray, nonempty: np.ndarray) -> np.ndarray:
        # Only non-empty segments start a sum (reduceat returns w[start] for empty
        # ones); each then runs to the next non-empty start, which is its own end.
        out = np.zeros(starts.size)
        if nonempty.any():
            out[nonempty] = np.add.reduceat(w, starts[nonempty])
        return out

    def sum(self, w: np.ndarray) -> np.ndarray:
        """Per-cell sums (n + 1) of ``w`` (values in segment order)."""
        return self._reduce(w, *self._cell)

    def sum_nucleus(self, w: np.ndarray) -> np.ndarray:
        """Per-nucleus sums (n + 1) of ``w`` (values in segment order)."""
        return self._reduce(w, *self._part)[0::2]


class LabelRuns:
    """Horizontal runs of consecutive pixels of one label (raster order), sorted by
    label: geometry (moments, bounding boxes, convex hulls) is computed from the
    ~100× fewer runs instead of the pixels."""

    @classmethod
    def of(cls, labels: np.ndarray) -> LabelRuns:
        """The runs of every label > 0 of a (Y, X) label image."""
        flat = labels.ravel()
        idx = _nonzero_index(flat)
        return cls(idx, np.take(flat, idx), labels.shape[1], int(flat.max(initial=0)))

    def __init__(self, idx: np.ndarray, lab: np.ndarray, width: int, n: int):
        self.n = n
        brk = np.empty(idx.size, bool)
        brk[:1] = True
        np.not_equal(lab[1:], lab[:-1], out=brk[1:])
        brk[1:] |= np.diff(idx) != 1
        # A new row starts a run (numpy's integer // by a scalar is ~5× faster than %).
        row = idx // width
        brk[1:] |= row[1:] != row[:-1]
        starts = np.flatnonzero(brk)
        ends = np.r_[starts[1:], idx.size][: starts.size] - 1  # (none for no pixels)
        run_lab = lab[starts]
        order = np.argsort(run_lab, kind="stable")
        self.lab = run_lab[order]
        self.y = (idx[starts] // width)[order].astype(np.float64)
        self.x0 = (idx[starts] % width)[order].astype(np.float64)
        self.x1 = (idx[ends] % width)[order].astype(np.float64)
        self.first = np.flatnonzero(np.r_[True, self.lab[1:] != self.lab[:-1]])
        self.present = self.lab[self.first] if self.lab.size else self.lab

    def _sum(self, w: np.ndarray) -> np.ndarray:
        return np.bincount(self.lab, w, minlength=self.n + 1)

    def moments(self):
        """Area, centroid and second central moments per label (pixel units)."""
        x0, x1, y = self.x0, self.x1, self.y
        length = x1 - x0 + 1
        sx = (x0 + x1) * length / 2
        # Sum of x² over x0..x1 = S(x1) - S(x0 - 1) with S(m) = m (m + 1) (2m + 1) / 6.
        sxx = (x1 * (x1 + 1) * (2 * x1 + 1) - (x0 - 1) * x0 * (2 * x0 - 1)) / 6
        cnt = self._sum(length)
        cy = _div(self._sum(y * length), cnt)
        cx = _div(self._sum(sx), cnt)
        myy = _div(self._sum(y * y * length), cnt) - cy**2
        mxx = _div(self._sum(sxx), cnt) - cx**2
        mxy = _div(self._sum(y * sx), cnt) - cy * cx
        return cnt, cy, cx, np.maximum(myy, 0), np.maximum(mxx, 0), mxy

    def bbox(self) -> np.ndarray:
        """(n + 1, 4) int: y0, x0, y1, x1 (half-open), zeros for absent labels."""
        out = np.zeros((self.n + 1, 4), np.int64)
        if self.lab.size == 0:
            return out
        last = np.r_[self.first[1:] - 1, self.lab.size - 1]
        out[self.present, 0] = self.y[self.first]
        out[self.present, 2] = self.y[last] + 1
        out[self.present, 1] = np.minimum.reduceat(self.x0, self.first)
        out[self.present, 3] = np.maximum.reduceat(self.x1, self.first) + 1
        return out

    def hull_areas(self) -> np.ndarray:
        """Convex-hull area (px²) of every label, from the pixel corners of its runs.

        For each of ``_HULL_DIRECTIONS`` directions the corner furthest along it is a
        vertex of the hull; those vertices, in angular order, span a polygon inscribed
        in the hull (exact for hulls with fewer vertices than directions; a disc loses
        < 0.7 %), computed for all labels at once.
        """
        area = np.zeros(self.n + 1)
        if self.lab.size == 0:
            return area
        theta = np.arange(_HULL_DIRECTIONS) * (2 * np.pi / _HULL_DIRECTIONS)
        c, s = np.cos(theta), np.sin(theta)
        # The corner of a run furthest along (c, s): right end if c >= 0, top if s >= 0.
        cx = np.where(c >= 0, self.x1[:, None] + 0.5, self.x0[:, None] - 0.5)
        cy = np.where(s >= 0, self.y[:, None] + 0.5, self.y[:, None] - 0.5)
        h = cx * c + cy * s  # (runs, K)
        support = np.maximum.reduceat(h, self.first, axis=0)
        group = np.repeat(np.arange(self.first.size), np.diff(np.r_[self.first, self.lab.size]))
        rows = np.arange(self.lab.size)[:, None]
        arg = np.where(h >= support[group], rows, self.lab.size)
        best = np.minimum.reduceat(arg, self.first, axis=0)  # (labels, K) run index
        k = np.arange(_HULL_DIRECTIONS)[None, :]
        vx, vy = cx[best, k], cy[best, k]
        cross = vx * np.roll(vy, -1, axis=1) - np.roll(vx, -1, axis=1) * vy
        area[self.present] = 0.5 * np.abs(cross.sum(axis=1))
        return area


def _ellipse(myy, mxx, mxy):
    """Major/minor axis lengths (px), eccentricity and orientation (rad, as
    scikit-image: angle between the row axis and the major axis) of the ellipse
    with the same second moments."""
    half_sum = (myy + mxx) / 2
    root = np.sqrt(((myy - mxx) / 2) ** 2 + mxy**2)
    l1 = half_sum + root
    l2 = np.maximum(half_sum - root, 0)
    major = 4 * np.sqrt(l1)
    minor = 4 * np.sqrt(l2)
    ecc = np.sqrt(1 - _div(l2, l1))
    ecc = np.where(l1 > 0, ecc, 0.0)
    # scikit-image's convention: angle (rad) between the row (y) axis and the major
    # axis, in [-pi/2, pi/2]; its inertia tensor is [[mxx, -mxy], [-mxy, myy]].
    a, b, cc = mxx, -mxy, myy
    orientation = np.where(
        a - cc == 0,
        np.where(b < 0, -np.pi / 4, np.pi / 4),
        0.5 * np.arctan2(-2 * b, cc - a),
    )
    return major, minor, ecc, orientation


#: Mean pixels per label above which sorting each label's values separately beats one
#: sort of (label, value) keys (a Python-level call per label against ~1.4 ns a pixel).
_SORT_PER_LABEL_MIN_PX = 2048


def _sort_per_label(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """A copy of ``values`` (grouped by label) with each label's values sorted."""
    out = values.copy()
    ends = np.cumsum(counts)
    for a, b in zip((ends - counts).tolist(), ends.tolist(), strict=True):
        if b - a > 1:
            out[a:b].sort()
    return out


def _percentiles(lab, values, cnt, n, qs, lab_hi16=None) -> np.ndarray:
    """Per-label percentiles (linear interpolation, as ``np.percentile``) of ``values``
    grouped by label in ascending order (``lab`` non-decreasing), from one sort of
    (label, value) keys or, for large labels of an integer image, from a sort of each
    label's values. Returns (len(qs), n + 1), NaN for empty labels.
    ``lab_hi16`` (optional) is ``lab.astype(uint32) << 16``, shared between channels."""
    out = np.full((len(qs), n + 1), np.nan)
    if lab.size == 0:
        return out
    if np.issubdtype(values.dtype, np.integer) and lab.size >= _SORT_PER_LABEL_MIN_PX * (n + 1):
        keys = _sort_per_label(values, cnt.astype(np.int64))

        def value_at(i):
            return keys[i].astype(np.float64)

    elif np.issubdtype(values.dtype, np.integer):
        vmin = int(values.min())
        span = int(values.max()) - vmin + 1
        if span <= 1 << 16 and n < 1 << 16:
            # Label in the high, value in the low 16 bits: a uint32 sort is ~2× faster.
            keys = values.astype(np.uint32)
            if vmin:
                keys -= np.uint32(vmin)
            keys |= lab_hi16 if lab_hi16 is not None else lab.astype(np.uint32) << 16
            keys.sort()

            def value_at(i):
                return (keys[i] & 0xFFFF).astype(np.float64) + vmin

        else:
            keys = np.sort(lab.astype(np.int64) * span + (values.astype(np.int64) - vmin))

            def value_at(i):
                return (keys[i] % span + vmin).astype(np.float64)

    else:
        v = values.astype(np.float64)
        vmin, vmax = float(v.min()), float(v.max())
        scale = (vmax - vmin) or 1.0
        keys = np.sort(lab + (v - vmin) / scale * 0.5)

        def value_at(i):
            return (keys[i] - np.floor(keys[i])) * 2 * scale + vmin

    counts = cnt.astype(np.int64)
    start = np.r_[0, np.cumsum(counts)[:-1]]
    last = start + np.maximum(counts - 1, 0)
    present = counts > 0
    top = keys.size - 1
    for i, q in enumerate(qs):
        pos = start + (q / 100.0) * np.maximum(counts - 1, 0)
        lo = np.floor(pos).astype(np.int64)
        frac = pos - lo
        a = value_at(np.clip(lo, 0, top))
        b = value_at(np.clip(np.minimum(lo + 1, last), 0, top))
        out[i] = np.where(present, a + frac * (b - a), np.nan)
    return out


def _field_background(channel: np.ndarray, cells: np.ndarray) -> float:
    """Median of the pixels outside all cells (subsampled); the 1st percentile of the
    field when cells cover (almost) everything."""
    s_img, s_lab = subsample(channel), subsample(cells)
    outside = s_img[s_lab == 0]
    if outside.size >= 0.02 * s_img.size and outside.size >= 64:
        return float(np.median(outside))
    return float(np.percentile(s_img, 1.0))


def _glcm_features(glcm: np.ndarray) -> dict[str, np.ndarray]:
    """Haralick-style features of symmetric co-occurrence matrices (n, L, L)."""
    levels = glcm.shape[1]
    total = glcm.sum(axis=(1, 2))
    p = glcm / np.where(total > 0, total, 1)[:, None, None]
    i = np.arange(levels, dtype=np.float64)
    diff2 = (i[:, None] - i[None, :]) ** 2
    contrast = (p * diff2).sum(axis=(1, 2))
    homogeneity = (p / (1 + diff2)).sum(axis=(1, 2))
    asm = (p * p).sum(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = np.where(p > 0, np.log2(np.where(p > 0, p, 1)), 0)
    entropy = -(p * logp).sum(axis=(1, 2))
    pi = p.sum(axis=2)
    mu = (pi * i).sum(axis=1)
    var = (pi * (i[None, :] - mu[:, None]) ** 2).sum(axis=1)
    cov = (p * (i[:, None] - mu[:, None, None]) * (i[None, :] - mu[:, None, None])).sum(axis=(1, 2))
    correlation = np.where(var > 1e-12, cov / np.where(var > 1e-12, var, 1), 1.0)
    empty = total == 0
    feats = {
        "contrast": contrast,
        "homogeneity": homogeneity,
        "asm": asm,
        "entropy": entropy,
        "correlation": correlation,
    }
    return {k: np.where(empty, np.nan, v) for k, v in feats.items()}


def _glcm(grid: np.ndarray, lo: float, hi: float, pairs, n: int) -> np.ndarray:
    """Symmetric co-occurrence matrices (n + 1, L, L) of a channel sampled on the texture
    grid, quantised to ``TEXTURE_LEVELS`` levels over [lo, hi]."""
    q_scale = np.float32(TEXTURE_LEVELS / max(float(hi - lo), 1e-12))
    qg = grid.astype(np.float32)
    qg -= np.float32(lo)
    qg *= q_scale
    np.clip(qg, 0, TEXTURE_LEVELS - 1, out=qg)
    qg = qg.astype(np.uint8)
    size = (n + 1) * TEXTURE_LEVELS**2
    glcm = np.zeros(size, np.float64)
    for sa, sb, same, base in pairs:
        # Level pair as one byte (TEXTURE_LEVELS² <= 256), so only one array is masked.
        code = qg[sa] * np.uint8(TEXTURE_LEVELS)
        code += qg[sb]
        glcm += np.bincount(base + code[same], minlength=size)
    glcm = glcm.reshape(n + 1, TEXTURE_LEVELS, TEXTURE_LEVELS)
    return glcm + glcm.transpose(0, 2, 1)


def _where(mask: np.ndarray, values: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``np.where(mask, values, 0)`` written into ``out`` (no new full-size array)."""
    out.fill(0)
    np.copyto(out, values, where=mask)
    return out


def _mask_product(mask: np.ndarray, values: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``values × mask`` written into ``out``: ``np.where(mask, values, 0)`` for finite
    values >= 0."""
    return np.multiply(values, mask, out=out)


def _edge_distance(cells: np.ndarray, step: int) -> np.ndarray:
    """Distance (px) from each pixel of a cell to that cell's boundary (its border
    with the background or another cell), on a ``step``-times coarser grid."""
    lab = downsample_labels(cells, step)
    inner = lab > 0
    inner[:, 1:] &= lab[:, 1:] == lab[:, :-1]
    inner[:, :-1] &= lab[:, :-1] == lab[:, 1:]
    inner[1:, :] &= lab[1:, :] == lab[:-1, :]
    inner[:-1, :] &= lab[:-1, :] == lab[1:, :]
    inner[0, :] = inner[-1, :] = False  # the field edge counts as a boundary
    inner[:, 0] = inner[:, -1] = False
    dist = ndi.distance_transform_edt(inner).astype(np.float32)
    return (dist + np.float32(0.5)) * np.float32(step)


def measure_cells(
    image: np.ndarray,
    nuclei: np.ndarray,
    cells: np.ndarray,
    *,
    roles: Sequence[str],
    pixel_size_um: float,
) -> pd.DataFrame:
    """Measure every cell of a field.

    Parameters
    ----------
    image : ndarray (C, Y, X)
        The field, any real dtype; channel ``i`` has role ``roles[i]``.
    nuclei, cells : ndarray (Y, X) int
        Labels from :func:`segment_field`: cell ``k`` contains nucleus ``k``. The
        nucleus of cell ``k`` is the set of pixels labelled ``k`` in both.
    roles : sequence of str
        Channel roles (a subset of ``locatlas.ROLES``).
    pixel_size_um : float
        Pixel size (µm).

    Returns
    -------
    pandas.DataFrame
        One row per cell id present in ``cells`` (ascending), columns as in
        :func:`feature_columns` and documented in ``docs/features.md``.

    Examples
    --------
    >>> table = measure_cells(img, nuclei, cells, roles=["nucleus", "er"],
    ...                       pixel_size_um=0.2)  # doctest: +SKIP
    """
    nuclei = np.asarray(nuclei)
    cells = np.asarray(cells)
    image, roles = _check(image, nuclei, cells, roles, pixel_size_um)
    columns = feature_columns(roles)
    height, width = cells.shape
    n = int(cells.max()) if cells.size else 0
    flat = cells.ravel()
    idx = _nonzero_index(flat)
    lab = np.take(flat, idx).astype(np.intp)
    if idx.size == 0:
        empty = pd.DataFrame({c: pd.Series(dtype="float64") for c in columns})
        return empty.astype({"cell_id": "int32", "edge": "bool"})
    ps = float(pixel_size_um)
    in_nuc = np.take(nuclei.ravel(), idx) == lab
    seg = _Segments(idx, lab, in_nuc, n)
    ids = np.flatnonzero(seg.count)
    out: dict[str, np.ndarray] = {"cell_id": ids.astype(np.int32)}

    # --- geometry (from row runs) ------------------------------------------------------
    runs = LabelRuns(idx, lab, width, n)
    nruns = LabelRuns(idx[in_nuc], lab[in_nuc], width, n)
    cnt, cy, cx, myy, mxx, mxy = runs.moments()
    ncnt, ncy, ncx, nmyy, nmxx, nmxy = nruns.moments()
    major, minor, ecc, orient = _ellipse(myy, mxx, mxy)
    nmajor, nminor, necc, _ = _ellipse(nmyy, nmxx, nmxy)
    bbox = runs.bbox()[ids]
    out["centroid_y"] = cy[ids]
    out["centroid_x"] = cx[ids]
    out["centroid_y_um"] = cy[ids] * ps
    out["centroid_x_um"] = cx[ids] * ps
    for j, name in enumerate(("bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1")):
        out[name] = bbox[:, j]
    out["edge"] = (
        (bbox[:, 0] == 0) | (bbox[:, 1] == 0) | (bbox[:, 2] == height) | (bbox[:, 3] == width)
    )
    out["cell_area_px"] = cnt[ids].astype(np.int64)
    out["cell_area_um2"] = cnt[ids] * ps * ps
    out["nucleus_area_px"] = ncnt[ids].astype(np.int64)
    out["nucleus_area_um2"] = ncnt[ids] * ps * ps
    out["cytoplasm_area_um2"] = (cnt[ids] - ncnt[ids]) * ps * ps
    out["nucleus_cell_area_ratio"] = ncnt[ids] / cnt[ids]
    out["nucleus_centroid_y"] = ncy[ids]
    out["nucleus_centroid_x"] = ncx[ids]
    out["nucleus_offset_um"] = np.hypot(ncy[ids] - cy[ids], ncx[ids] - cx[ids]) * ps
    out["major_axis_um"] = major[ids] * ps
    out["minor_axis_um"] = minor[ids] * ps
    out["orientation"] = orient[ids]
    out["eccentricity"] = ecc[ids]
    out["solidity"] = np.minimum(_div(cnt, runs.hull_areas())[ids], 1.0)
    out["nucleus_major_axis_um"] = nmajor[ids] * ps
    out["nucleus_minor_axis_um"] = nminor[ids] * ps
    out["nucleus_eccentricity"] = necc[ids]
    out["nucleus_solidity"] = np.minimum(_div(ncnt, nruns.hull_areas())[ids], 1.0)

    # --- texture pairs: on a stride-``t`` grid, partner ``d`` grid steps right / down ---
    scale_px = TEXTURE_SCALE_UM / ps
    t = 2 if scale_px >= 2 else 1
    d = max(1, int(round(scale_px / t)))
    grid = cells[::t, ::t]
    pairs = []  # (slices of the first and the partner pixels, mask, key base)
    for sa, sb in (
        ((slice(None), slice(None, -d)), (slice(None), slice(d, None))),
        ((slice(None, -d), slice(None)), (slice(d, None), slice(None))),
    ):
        la, lb = grid[sa], grid[sb]
        same = (la == lb) & (la > 0)
        pairs.append((sa, sb, same, la[same].astype(np.intp) * TEXTURE_LEVELS**2))

    # --- radial position: distance to the nucleus centre / (that + distance to the edge),
    # on a stride-``r`` grid for cells wide enough (sums over >= ~500 px per cell).
    diam = np.sqrt(4 * np.median(cnt[ids]) / np.pi)
    r = 2 if diam >= 48 else 1
    rgrid = cells[::r, ::r]
    rflat = rgrid.ravel()
    ridx = _nonzero_index(rflat)
    rlab = np.take(rflat, ridx).astype(np.intp)
    ry = ridx // rgrid.shape[1]  # (// with a scalar is much faster than divmod)
    rx = ridx - ry * rgrid.shape[1]
    ry *= r
    rx *= r
    rpix = ry * width + rx  # index into the full-resolution field
    step = max(r, int(diam // 24))
    edge_d = _edge_distance(cells, step)
    d_edge = edge_d[
        np.minimum(ry // step, edge_d.shape[0] - 1), np.minimum(rx // step, edge_d.shape[1] - 1)
    ]
    centre_y = np.where(ncnt > 0, ncy, cy).astype(np.float32)
    centre_x = np.where(ncnt > 0, ncx, cx).astype(np.float32)
    dy = ry.astype(np.float32) - centre_y[rlab]
    dx = rx.astype(np.float32) - centre_x[rlab]
    d_centre = np.sqrt(dy * dy + dx * dx)
    ring = (np.float32(N_RINGS) * d_centre / (d_centre + d_edge)).astype(np.intp)
    np.minimum(ring, N_RINGS - 1, out=ring)
    ring_groups = _Groups(rlab * N_RINGS + ring, (n + 1) * N_RINGS - 1)
    ring_area = ring_groups.count.reshape(n + 1, N_RINGS)
    ring_area_frac = ring_area / np.maximum(ring_area.sum(axis=1, keepdims=True), 1)

    # --- intensities, texture, radial distribution per role ---------------------------
    # Pixel values are read in segment order (``seg.pix``); statistics that subsample
    # the field read it in raster order (``idx[::k]``), as before the regrouping.
    seg_hi16 = (
        np.repeat(np.arange(n + 1, dtype=np.uint32) << 16, seg.count) if n < 1 << 16 else None
    )
    sample_idx = idx[:: max(1, idx.size // 262_144)]  # for field-wide statistics
    samples: dict[str, np.ndarray] = {}
    backgrounds: dict[str, float] = {}
    chan_values: dict[str, np.ndarray] = {}
    sums: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    scratch = np.empty(idx.size)  # one reused buffer for per-pixel products
    for c, role in enumerate(roles):
        channel = image[c]
        flat_ch = channel.ravel()
        raw = np.take(flat_ch, seg.pix)
        v = raw.astype(np.float64)
        bg = _field_background(channel, cells)
        s = seg.sum(v)
        s2 = seg.sum(np.multiply(v, v, out=scratch))
        sn = seg.sum_nucleus(v)
        mean = _div(s, cnt)
        out[f"{role}_mean"] = mean[ids]
        out[f"{role}_std"] = np.sqrt(np.maximum(_div(s2, cnt) - mean**2, 0))[ids]
        out[f"{role}_integrated"] = (s - bg * cnt)[ids]
        pct = _percentiles(seg.lab, raw, cnt, n, PERCENTILES, seg_hi16)
        for q, row in zip(PERCENTILES, pct, strict=True):
            out[f"{role}_p{q:02d}"] = row[ids]
        nuc_mean = _div(sn, ncnt)
        cyto_mean = _div(s - sn, cnt - ncnt)
        out[f"{role}_nuc_mean"] = nuc_mean[ids]
        out[f"{role}_cyto_mean"] = cyto_mean[ids]
        out[f"{role}_nuc_integrated"] = (sn - bg * ncnt)[ids]
        out[f"{role}_nuc_cyto_ratio"] = _div(nuc_mean - bg, cyto_mean - bg)[ids]
        out[f"{role}_background"] = np.full(ids.size, bg)

        # Texture: symmetric co-occurrence matrices on the field's robust range.
        samples[role] = np.take(flat_ch, sample_idx)
        lo, hi = np.percentile(samples[role], [0.1, 99.9])
        glcm = _glcm(channel[::t, ::t], lo, hi, pairs, n)
        for name, values in _glcm_features(glcm[ids]).items():
            out[f"{role}_tex_{name}"] = values

        backgrounds[role] = bg
        if "protein" in roles:
            chan_values[role] = v  # kept for colocalization
        sums[role] = (s, s2)
        if role != "nucleus":
            # Background-corrected intensity per ring: sum(v) - bg × ring area.
            rv = np.take(flat_ch, rpix).astype(np.float64)
            rs = ring_groups.sum(rv).reshape(n + 1, N_RINGS) - bg * ring_area
            total = rs.sum(axis=1, keepdims=True)
            frac = rs / np.where(total > 0, total, np.nan)
            meanfrac = frac / np.where(ring_area_frac > 0, ring_area_frac, np.nan)
            for i in range(N_RINGS):
                out[f"{role}_radial_frac_{i + 1}"] = frac[ids, i]
                out[f"{role}_radial_meanfrac_{i + 1}"] = meanfrac[ids, i]

    # --- colocalization of the protein with each reference channel --------------------
    if "protein" in roles:
        vx = chan_values["protein"]
        sx, sxx = sums["protein"]
        x = vx - backgrounds["protein"]  # Manders: background-corrected
        np.maximum(x, 0, out=x)
        sxc = seg.sum(x)
        x_bright = vx > otsu(samples["protein"])
        m = np.maximum(cnt, 1)
        y = np.empty_like(x)
        # x and y are finite and >= 0 for an integer image, where the product with a mask
        # equals np.where(mask, values, 0) and takes one pass instead of two.
        masked = _mask_product if np.issubdtype(image.dtype, np.integer) else _where
        for ref in roles:
            if ref == "protein":
                continue
            vy = chan_values[ref]
            sy, syy = sums[ref]
            cov = seg.sum(np.multiply(vx, vy, out=scratch)) - sx * sy / m
            var = np.maximum(sxx - sx * sx / m, 0) * np.maximum(syy - sy * sy / m, 0)
            pearson = np.clip(_div(cov, np.sqrt(var)), -1, 1)
            ty = otsu(samples[ref])
            np.subtract(vy, backgrounds[ref], out=y)
            np.maximum(y, 0, out=y)
            m1 = _div(seg.sum(masked(vy > ty, x, scratch)), sxc)
            m2 = _div(seg.sum(masked(x_bright, y, scratch)), seg.sum(y))
            out[f"protein_{ref}_pearson"] = pearson[ids]
            out[f"protein_{ref}_manders_m1"] = m1[ids]
            out[f"protein_{ref}_manders_m2"] = m2[ids]

    table = pd.DataFrame(out)
    return table[columns]
