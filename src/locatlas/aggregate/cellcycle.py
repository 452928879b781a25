"""Cell-cycle position of each cell and per-protein tests of cycle dependence.

Position (dimensionless, 0 = G1, 1 = G2/M) comes from DNA content (the integrated
nucleus intensity) and nuclear area, each relative to its G1 peak in the same cell
line and plate::

    dna_pos  = log2(DNA / DNA_G1)                       # DNA doubles from G1 to G2
    area_pos = log2(area / area_G1) / log2(area_ratio)  # area ratio G2/G1 ~ 2**(2/3)
    position = (1 - w) * dna_pos + w * area_pos

The G1 peaks are the modes of log2 histograms accumulated while streaming (an
asynchronous population has most cells in G1). When two cell-cycle marker columns
are given (e.g. FUCCI: a G1 marker and an S/G2 marker), the position is instead the
polar angle of their standardised log intensities (Mahdessian et al. 2021, Nature).

The dependence test: a protein's log intensity, centred per well and time point, is
binned by position; the statistic is the fraction of variance explained by the bins
(eta squared). Its p-value comes from permuting intensities against positions
(vectorised; permutation matrices are shared between proteins with the same
sample size); q-values are Benjamini-Hochberg over protein x cell line. A protein
is called cycle dependent when ``q < fdr`` and ``eta2 >= min_effect``.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd
from scipy import ndimage

from locatlas.aggregate.statistics import fdr_bh, permutations_of

PHASES = ("G1", "S", "G2M")


class Log2Histogram:
    """Streaming histograms of ``log2(x)`` per key, in bins of ``width``."""

    def __init__(self, width: float = 0.02):
        self.width = width
        self._counts: dict[object, dict[int, int]] = defaultdict(dict)

    def add(self, keys: pd.DataFrame, values: np.ndarray) -> None:
        """Add positive finite ``values`` (others are ignored) under the row keys.

        ``keys``: one row per value; its columns together form the histogram key.
        """
        ok = np.isfinite(values) & (values > 0)
        if not ok.any():
            return
        frame = keys.loc[ok].reset_index(drop=True)
        cols = list(frame.columns)
        frame["_b"] = np.floor(np.log2(values[ok]) / self.width).astype(np.int64)
        counts = frame.groupby([*cols, "_b"], sort=False, observed=True).size()
        for idx, c in counts.items():
            key, bin_ = tuple(str(x) for x in idx[:-1]), int(idx[-1])
            d = self._counts[key]
            d[bin_] = d.get(bin_, 0) + int(c)

    def keys(self) -> list:
        return sorted(self._counts, key=str)

    def mode(self, key, *, smooth_bins: float = 3.0) -> float:
        """log2 value of the highest peak of the smoothed histogram of ``key``."""
        d = self._counts.get(key)
        if not d:
            return np.nan
        lo, hi = min(d), max(d)
        h = np.zeros(hi - lo + 1)
        for b, c in d.items():
            h[b - lo] = c
        hs = ndimage.gaussian_filter1d(h, smooth_bins, mode="constant")
        return float((lo + int(np.argmax(hs)) + 0.5) * self.width)

    def histogram(self, key) -> tuple[np.ndarray, np.ndarray]:
        """(log2 bin centres, counts) of ``key``."""
        d = self._counts.get(key, {})
        if not d:
            return np.zeros(0), np.zeros(0)
        lo, hi = min(d), max(d)
        h = np.zeros(hi - lo + 1)
        for b, c in d.items():
            h[b - lo] = c
        return (np.arange(lo, hi + 1) + 0.5) * self.width, h


def cycle_position(
    dna: np.ndarray,
    nucleus_area: np.ndarray | None,
    *,
    log2_dna_g1: np.ndarray | float,
    log2_area_g1: np.ndarray | float | None = None,
    area_weight: float = 0.2,
    area_g2_ratio: float = 2 ** (2 / 3),
) -> np.ndarray:
    """Cell-cycle position from DNA content and nuclear area (not clipped).

    Parameters
    ----------
    dna
        ``(n,)`` integrated nucleus intensity (any unit, same as the G1 peak).
    nucleus_area
        ``(n,)`` nuclear area in um^2, or ``None`` to use DNA alone.
    log2_dna_g1, log2_area_g1
        log2 G1 peaks, scalar or per cell.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` float64; about 0 in G1 and 1 in G2/M. NaN where DNA is missing.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        pos = np.log2(np.asarray(dna, np.float64)) - log2_dna_g1
        if nucleus_area is not None and area_weight > 0 and log2_area_g1 is not None:
            apos = (np.log2(np.asarray(nucleus_area, np.float64)) - log2_area_g1) / np.log2(
                area_g2_ratio
            )
            pos = np.where(np.isfinite(apos), (1 - area_weight) * pos + area_weight * apos, pos)
    return pos


def marker_position(g1_marker: np.ndarray, sg2_marker: np.ndarray) -> np.ndarray:
    """Polar pseudotime in [0, 1) from two cell-cycle marker intensities.

    Log intensities are standardised; the angle of (sg2, g1) is measured from the
    G1 state (high G1 marker, low S/G2 marker) and increases through S (both
    high, 0.25) and G2/M (S/G2 marker only, 0.5) back to early G1 (both low, 0.75).
    Unlike the DNA-content position it covers the whole cycle, so the cycle test's
    bins span G1 to mitosis.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        a = np.log(np.asarray(g1_marker, np.float64))
        b = np.log(np.asarray(sg2_marker, np.float64))
        a = (a - np.nanmean(a)) / np.nanstd(a)
        b = (b - np.nanmean(b)) / np.nanstd(b)
    ang = np.arctan2(a, b)  # G1 (a high, b low) ~ +3pi/4; G2 (b high, a low) ~ -pi/4
    start = 3 * np.pi / 4
    return np.mod(start - ang, 2 * np.pi) / (2 * np.pi)


def cycle_phase(position: np.ndarray, *, markers: bool = False) -> np.ndarray:
    """Cycle phase labels (object array).

    DNA-content positions: ``G1`` below 0.25, ``S`` up to 0.75, ``G2M`` above.
    Marker pseudotime (``markers=True``, a fraction of the whole cycle): the
    quadrant around 0 is ``G1`` (G1 marker only), 0.25 ``S`` (both markers), 0.5
    ``G2M`` (S/G2 marker only) and 0.75 ``G1`` again (early G1, both low).
    """
    pos = np.asarray(position, np.float64)
    out = np.full(pos.shape, "", dtype=object)
    if markers:
        ok = np.isfinite(pos)
        quad = np.round(np.where(ok, pos, 0) * 4).astype(int) % 4
        out[ok] = np.array(["G1", "S", "G2M", "G1"], dtype=object)[quad[ok]]
        return out
    out[pos < 0.25] = "G1"
    out[(pos >= 0.25) & (pos <= 0.75)] = "S"
    out[pos > 0.75] = "G2M"
    return out


def _bins(position: np.ndarray, n_bins: int) -> np.ndarray:
    return np.clip(np.floor(np.clip(position, 0.0, 1.0) * n_bins), 0, n_bins - 1).astype(int)


def eta_squared(y: np.ndarray, bins: np.ndarray, n_bins: int) -> float:
    """Fraction of the variance of ``y`` explained by the categorical ``bins``."""
    n = len(y)
    tot = float(((y - y.mean()) ** 2).sum())
    if tot <= 0:
        return 0.0
    s = np.bincount(bins, weights=y, minlength=n_bins)
    nb = np.bincount(bins, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        between = np.nansum(np.where(nb > 0, s * s / nb, 0.0)) - y.sum() ** 2 / n
    return float(between / tot)


def cycle_test(
    y: np.ndarray,
    position: np.ndarray,
    *,
    n_bins: int = 8,
    n_perm: int = 999,
    seed: int = 0,
    base_n: int = 0,
) -> dict[str, float]:
    """Permutation test of the dependence of ``y`` on cycle position.

    Parameters
    ----------
    y
        ``(n,)`` centred log intensities.
    position
        ``(n,)`` cycle positions (clipped to [0, 1] for binning).

    Returns
    -------
    dict
        ``eta2``, ``p`` (permutation, resolution ``1/(n_perm+1)``), ``log2fc``
        (mean of the top bin minus the bottom bin, in log2 units) and ``peak``
        (centre of the bin with the highest mean). Proteins whose first 99
        permutations already give >= 10 exceedances stop there (p >= 0.11).
        ``base_n``: size of the shared permutation matrix (the per-protein cap).
    """
    ok = np.isfinite(y) & np.isfinite(position)
    y = np.asarray(y, np.float64)[ok]
    position = np.asarray(position, np.float64)[ok]
    n = len(y)
    if n < 3:
        return {"eta2": np.nan, "p": np.nan, "log2fc": np.nan, "peak": np.nan}
    b = _bins(position, n_bins)
    y = y - y.mean()
    tot = float((y * y).sum())
    onehot = np.zeros((n, n_bins))
    onehot[np.arange(n), b] = 1.0
    nb = onehot.sum(0)
    inv = np.where(nb > 0, 1.0 / np.maximum(nb, 1), 0.0)
    s_obs = y @ onehot
    t_obs = float((s_obs * s_obs * inv).sum())
    # Two stages (Besag & Clifford 1991 style): clearly null proteins stop after
    # 99 permutations (p >= 0.11, far above any FDR threshold); the rest get all.
    first = min(99, n_perm)
    perm = permutations_of(n, n_perm, seed, base_n=base_n, rows=slice(0, first))
    s_null = y[perm] @ onehot  # (first, n_bins)
    count = int(np.count_nonzero((s_null * s_null * inv).sum(1) >= t_obs * (1 - 1e-12)))
    if count >= 10 or first == n_perm:
        p = (1 + count) / (1 + first)
    else:
        perm = permutations_of(n, n_perm, seed, base_n=base_n, rows=slice(first, n_perm))
        s_null = y[perm] @ onehot  # (n_perm - first, n_bins)
        count += int(np.count_nonzero((s_null * s_null * inv).sum(1) >= t_obs * (1 - 1e-12)))
        p = (1 + count) / (1 + n_perm)
    means = np.where(nb > 0, s_obs * inv, np.nan)
    filled = np.flatnonzero(nb > 0)
    log2fc = float((means[filled[-1]] - means[filled[0]]) / np.log(2)) if len(filled) else np.nan
    peak = float((np.nanargmax(means) + 0.5) / n_bins) if len(filled) else np.nan
    return {"eta2": t_obs / tot if tot > 0 else 0.0, "p": p, "log2fc": log2fc, "peak": peak}


def cycle_dependence(
    sample: pd.DataFrame,
    *,
    n_bins: int = 8,
    n_perm: int = 999,
    min_cells: int = 20,
    min_effect: float = 0.05,
    fdr: float = 0.05,
    seed: int = 0,
    base_n: int = 0,
) -> pd.DataFrame:
    """Cycle dependence of every protein x cell line in a per-cell sample.

    Parameters
    ----------
    sample
        Columns ``protein``, ``cell_line``, ``position`` and ``y`` (log intensity
        centred per well and time point).

    Returns
    -------
    pandas.DataFrame
        ``protein``, ``cell_line``, ``cycle_n``, ``cycle_eta2``, ``cycle_log2fc``,
        ``cycle_peak``, ``cycle_p``, ``cycle_q``, ``cycle_dependent`` (bool).
    """
    rows = []
    for (prot, line), g in sample.groupby(["protein", "cell_line"], sort=True, observed=True):
        n = int(np.isfinite(g["y"].to_numpy() + g["position"].to_numpy()).sum())
        if n < min_cells:
            res = {"eta2": np.nan, "p": np.nan, "log2fc": np.nan, "peak": np.nan}
        else:
            res = cycle_test(
                g["y"].to_numpy(),
                g["position"].to_numpy(),
                n_bins=n_bins,
                n_perm=n_perm,
                seed=seed,
                base_n=base_n,
            )
        rows.append(
            {
                "protein": str(prot),
                "cell_line": str(line),
                "cycle_n": n,
                "cycle_eta2": res["eta2"],
                "cycle_log2fc": res["log2fc"],
                "cycle_peak": res["peak"],
                "cycle_p": res["p"],
            }
        )
    out = pd.DataFrame(
        rows,
        columns=[
            "protein",
            "cell_line",
            "cycle_n",
            "cycle_eta2",
            "cycle_log2fc",
            "cycle_peak",
            "cycle_p",
        ],
    )
    out["cycle_q"] = fdr_bh(out["cycle_p"].to_numpy(np.float64))
    out["cycle_dependent"] = (np.nan_to_num(out["cycle_q"].to_numpy(), nan=1.0) < fdr) & (
        np.nan_to_num(out["cycle_eta2"].to_numpy(np.float64)) >= min_effect
    )
    return out


def binned_means(
    y: np.ndarray, position: np.ndarray, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bin centres, mean of ``y`` per bin, cells per bin) for plots."""
    ok = np.isfinite(y) & np.isfinite(position)
    b = _bins(position[ok], n_bins)
    s = np.bincount(b, weights=y[ok], minlength=n_bins)
    nb = np.bincount(b, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.where(nb > 0, s / nb, np.nan)
    return (np.arange(n_bins) + 0.5) / n_bins, m, nb
