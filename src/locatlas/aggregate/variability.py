"""Single-cell variability: between-cell variation in intensity and in location.

Both tests need only the group sums of one streaming pass (no per-cell data):

- **Intensity.** The spread of log protein intensity *within* each finest group
  (well x time point, so plate, well and time effects do not count) is pooled per
  protein x cell line. H0: its SD is at most ``ratio`` times the typical SD of the
  atlas (median over proteins, robust to the variable minority). Under a normal
  model ``df * s^2 / (ratio^2 * s_ref^2) ~ chi2(df)`` at the H0 boundary, which gives
  a one-sided p-value.
- **Spatial.** H0: at each time point all cells share one set of locations and
  every deviation is a per-cell classification error with rate at most ``eps``.
  Per class, the minority count ``min(k_t, n_t - k_t)`` summed over time points is
  then stochastically at most Binomial(sum n_t, eps); the class p-values are
  Bonferroni-combined over classes. Summing per time point keeps translocations
  (homogeneous at each time point) from looking spatially variable.

Both p-values are BH-adjusted over protein x cell line and flagged when
``q < fdr`` (the spatial flag also needs a minority fraction >= ``min_fraction``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from locatlas.aggregate.statistics import fdr_bh
from locatlas.classes import ClassList

BY = ("protein", "cell_line")


def intensity_variability(
    sums: pd.DataFrame,
    *,
    by: Sequence[str] = BY,
    ratio: float = 1.3,
    min_cells: int = 20,
    fdr: float = 0.05,
) -> pd.DataFrame:
    """Test each protein x cell line for excess cell-to-cell intensity variation.

    Parameters
    ----------
    sums
        Finest-group sums (:meth:`GroupAccumulator.to_frame`): ``n_int``,
        ``sum_int``, ``sum_int2`` of natural-log intensity.
    ratio
        H0 bound on ``SD / SD_ref`` (dimensionless).

    Returns
    -------
    pandas.DataFrame
        ``by`` keys, ``int_sd`` (pooled within-group SD of log intensity),
        ``int_sd_ref``, ``int_sd_ratio``, ``int_df``, ``int_var_p``, ``int_var_q``,
        ``variable_intensity`` (bool).
    """
    n = sums["n_int"].to_numpy(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ss = sums["sum_int2"].to_numpy() - sums["sum_int"].to_numpy() ** 2 / n
    ok = n >= 2
    frame = sums[list(by)].copy()
    frame["ss"] = np.where(ok, np.maximum(ss, 0.0), 0.0)
    frame["df"] = np.where(ok, n - 1, 0.0)
    frame["n"] = n
    g = frame.groupby(list(by), sort=True, observed=True)[["ss", "df", "n"]].sum().reset_index()
    df = g["df"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        var = g["ss"].to_numpy() / df
    tested = (g["n"].to_numpy() >= min_cells) & (df > 0)
    ref_var = float(np.nanmedian(var[tested])) if tested.any() else np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        stat = df * var / (ratio**2 * ref_var)
        p = np.where(tested & (ref_var > 0), stats.chi2.sf(stat, np.maximum(df, 1)), np.nan)
    q = fdr_bh(p)
    out = g[list(by)].copy()
    out["int_sd"] = np.sqrt(var)
    out["int_sd_ref"] = np.sqrt(ref_var)
    out["int_sd_ratio"] = np.sqrt(var / ref_var) if ref_var > 0 else np.nan
    out["int_df"] = df.astype(np.int64)
    out["int_var_p"] = p
    out["int_var_q"] = q
    out["variable_intensity"] = np.nan_to_num(q, nan=1.0) < fdr
    return out


def spatial_variability(
    sums: pd.DataFrame,
    *,
    classes: ClassList,
    by: Sequence[str] = BY,
    error_rate: float = 0.1,
    min_fraction: float = 0.2,
    min_cells: int = 20,
    fdr: float = 0.05,
) -> pd.DataFrame:
    """Test each protein x cell line for cell-to-cell variation in location.

    Parameters
    ----------
    sums
        Finest-group sums with ``n_cells`` and ``n_called_<slug>``.
    error_rate
        Largest per-cell classification error rate allowed under H0.
    min_fraction
        Smallest minority fraction (cells that differ) to flag.

    Returns
    -------
    pandas.DataFrame
        ``by`` keys, ``spatial_score`` (largest minority fraction over classes),
        ``spatial_class`` (its slug), ``spatial_p``, ``spatial_q``,
        ``variable_spatial`` (bool).
    """
    per_t = (
        sums.groupby([*by, "timepoint"], sort=True, observed=True)[
            ["n_cells", *[f"n_called_{s}" for s in classes.slugs]]
        ]
        .sum()
        .reset_index()
    )
    k = per_t[[f"n_called_{s}" for s in classes.slugs]].to_numpy(np.float64)
    nt = per_t["n_cells"].to_numpy(np.float64)
    minority = np.minimum(k, nt[:, None] - k)
    mframe = pd.DataFrame(minority, columns=list(classes.slugs))
    mframe["n_cells"] = nt
    for b in by:
        mframe[b] = per_t[b].to_numpy()
    g = mframe.groupby(list(by), sort=True, observed=True).sum(numeric_only=True).reset_index()
    m = g[list(classes.slugs)].to_numpy()
    n = g["n_cells"].to_numpy()
    c = len(classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        pc = stats.binom.sf(m - 1, n[:, None].astype(np.int64), error_rate)
        score = m / n[:, None]
    p = np.minimum(1.0, c * pc.min(axis=1)) if c else np.ones(len(g))
    tested = n >= min_cells
    p = np.where(tested, p, np.nan)
    q = fdr_bh(p)
    best = np.argmax(np.nan_to_num(score, nan=-1.0), axis=1) if len(g) else np.zeros(0, int)
    out = g[list(by)].copy()
    out["spatial_score"] = score[np.arange(len(g)), best] if len(g) else []
    out["spatial_class"] = np.asarray(classes.slugs, dtype=object)[best] if len(g) else []
    out["spatial_p"] = p
    out["spatial_q"] = q
    out["variable_spatial"] = (np.nan_to_num(q, nan=1.0) < fdr) & (
        np.nan_to_num(out["spatial_score"].to_numpy(np.float64)) >= min_fraction
    )
    return out


def variability_table(
    sums: pd.DataFrame,
    *,
    classes: ClassList,
    ratio: float,
    error_rate: float,
    min_fraction: float,
    min_cells: int,
    fdr: float,
) -> pd.DataFrame:
    """Both tests per protein x cell line, with ``variable`` = either flag."""
    a = intensity_variability(sums, ratio=ratio, min_cells=min_cells, fdr=fdr)
    b = spatial_variability(
        sums,
        classes=classes,
        error_rate=error_rate,
        min_fraction=min_fraction,
        min_cells=min_cells,
        fdr=fdr,
    )
    out = a.merge(b, on=list(BY), how="outer")
    out["variable"] = out["variable_intensity"].fillna(False).astype(bool) | out[
        "variable_spatial"
    ].fillna(False).astype(bool)
    return out
