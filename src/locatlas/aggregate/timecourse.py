"""Time courses of location fractions, change points and alerts.

A *series* is the per-time-point count of cells calling one class, for one protein
in one well (level ``well``) or pooled over the wells of a cell line (level
``cell_line``). For every series a single change point is fitted by binomial
likelihood ratio over all split points ``tau`` (before: frames ``< tau``; after:
``>= tau``), vectorised over series and classes. Frame-to-frame overdispersion is
estimated from the Pearson statistic within the two segments (quasi-binomial,
``phi >= 1``), the p-value is ``chi2_1(LR / phi)`` Bonferroni-corrected over the
``T - 1`` split points, and q-values are Benjamini-Hochberg over all series x
classes of a level. A change is an *alert* when ``q < fdr`` and
``|after - before| >= min_effect``. The onset is the first time point after the split.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from locatlas.aggregate.statistics import fdr_bh
from locatlas.classes import ClassList

LEVELS = {
    "well": ("protein", "cell_line", "plate", "well"),
    "cell_line": ("protein", "cell_line"),
}


def _ll(k: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Binomial log likelihood at the MLE (0 log 0 = 0)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        a = np.where(k > 0, k * np.log(np.where(p > 0, p, 1.0)), 0.0)
        b = np.where(n - k > 0, (n - k) * np.log(np.where(p < 1, 1 - p, 1.0)), 0.0)
    return np.where(n > 0, a + b, 0.0)


def change_points(k: np.ndarray, n: np.ndarray) -> dict[str, np.ndarray]:
    """Best single change point of many binomial series.

    Parameters
    ----------
    k
        ``(S, T)`` successes (cells calling the class) per series and frame.
    n
        ``(S, T)`` trials (usable cells) per series and frame (same frames).

    Returns
    -------
    dict of ``(S,)`` arrays
        ``tau`` (index of the first frame after the change, 1..T-1), ``before``,
        ``after`` (pooled fractions), ``effect`` (after - before), ``lr``, ``phi``
        (overdispersion) and ``p``.
    """
    k = np.asarray(k, np.float64)
    n = np.asarray(n, np.float64)
    s, t = k.shape
    if t < 2:
        nan = np.full(s, np.nan)
        return {
            "tau": np.zeros(s, int),
            "before": nan,
            "after": nan,
            "effect": nan,
            "lr": nan,
            "phi": nan,
            "p": nan,
        }
    ck, cn = np.cumsum(k, 1), np.cumsum(n, 1)
    kt, nt = ck[:, -1:], cn[:, -1:]
    k1, n1 = ck[:, :-1], cn[:, :-1]  # split after frame i -> tau = i + 1
    k2, n2 = kt - k1, nt - n1
    lr = 2 * (_ll(k1, n1) + _ll(k2, n2) - _ll(kt, nt))
    lr = np.where((n1 > 0) & (n2 > 0), lr, -np.inf)
    best = np.argmax(lr, axis=1)
    rows = np.arange(s)
    tau = best + 1
    K1, N1, K2, N2 = k1[rows, best], n1[rows, best], k2[rows, best], n2[rows, best]
    with np.errstate(invalid="ignore", divide="ignore"):
        before, after = K1 / N1, K2 / N2
    # quasi-binomial dispersion within the two segments
    frame = np.arange(t)[None, :]
    seg_p = np.where(frame < tau[:, None], before[:, None], after[:, None])
    nn = np.maximum(n, 1)
    p_s = np.clip(seg_p, 0.5 / nn, 1 - 0.5 / nn)
    with np.errstate(invalid="ignore", divide="ignore"):
        x2 = np.where(n > 0, (k - n * p_s) ** 2 / (n * p_s * (1 - p_s)), 0.0).sum(1)
    dof = (n > 0).sum(1) - 2
    phi = np.where(dof > 0, np.maximum(1.0, x2 / np.maximum(dof, 1)), 1.0)
    lr_best = lr[rows, best]
    p = np.minimum(1.0, stats.chi2.sf(lr_best / phi, 1) * (t - 1))
    p = np.where(np.isfinite(lr_best), p, np.nan)
    return {
        "tau": tau,
        "before": before,
        "after": after,
        "effect": after - before,
        "lr": lr_best,
        "phi": phi,
        "p": p,
    }


def series_counts(sums: pd.DataFrame, keys: Sequence[str], classes: ClassList) -> pd.DataFrame:
    """Per series x time point: ``n_cells`` and ``n_called_<slug>`` summed over ``keys``."""
    cols = ["n_cells", *[f"n_called_{s}" for s in classes.slugs]]
    return sums.groupby([*keys, "timepoint"], sort=True, observed=True)[cols].sum().reset_index()


def detect_changes(
    sums: pd.DataFrame,
    *,
    classes: ClassList,
    level: str = "well",
    min_effect: float = 0.2,
    min_timepoints: int = 3,
    min_cells: int = 20,
    fdr: float = 0.05,
) -> pd.DataFrame:
    """Change points of every series x class at one level.

    Series are grouped by their set of time points so that each group is one
    vectorised call of :func:`change_points`. Frames with fewer than ``min_cells``
    cells are dropped from a series.

    Returns
    -------
    pandas.DataFrame
        One row per series x class: ``level``, ``protein``, ``cell_line``,
        ``plate``, ``well`` ("" at cell-line level), ``location`` (slug),
        ``n_timepoints``, ``onset`` (time point), ``before``, ``after``, ``effect``,
        ``lr``, ``phi``, ``p``, ``q``, ``direction`` (gain/loss), ``alert``.
    """
    keys = LEVELS[level]
    tc = series_counts(sums, keys, classes)
    tc = tc[tc["n_cells"] >= min_cells]
    slugs = list(classes.slugs)
    out_parts = []
    if len(tc):
        ser = tc.groupby(list(keys), sort=True, observed=True)
        sig = ser["timepoint"].agg(lambda s: tuple(int(x) for x in s)).rename("tps").reset_index()
        for tps, group in sig.groupby("tps", sort=True):
            if len(tps) < min_timepoints:
                continue
            sub = tc.merge(group[list(keys)], on=list(keys), how="inner")
            sub = sub.sort_values([*keys, "timepoint"], kind="stable")
            s, t = len(group), len(tps)
            n = sub["n_cells"].to_numpy(np.float64).reshape(s, t)
            k = sub[[f"n_called_{c}" for c in slugs]].to_numpy(np.float64).reshape(s, t, -1)
            kk = np.moveaxis(k, 2, 1).reshape(s * len(slugs), t)
            nn = np.repeat(n, len(slugs), axis=0)
            res = change_points(kk, nn)
            first = sub.iloc[::t][list(keys)].reset_index(drop=True)
            part = first.loc[first.index.repeat(len(slugs))].reset_index(drop=True)
            part["location"] = np.tile(np.asarray(slugs, dtype=object), s)
            part["n_timepoints"] = t
            part["onset"] = np.asarray(tps)[res["tau"]]
            for name in ("before", "after", "effect", "lr", "phi", "p"):
                part[name] = res[name]
            out_parts.append(part)
    cols = [*keys, "location", "n_timepoints", "onset", "before", "after", "effect", "lr"]
    cols += ["phi", "p"]
    out = pd.concat(out_parts, ignore_index=True) if out_parts else pd.DataFrame(columns=cols)
    out = out.sort_values([*keys, "location"], kind="stable").reset_index(drop=True)
    for k in ("plate", "well"):
        if k not in out:
            out[k] = ""
    out.insert(0, "level", level)
    out["q"] = fdr_bh(out["p"].to_numpy(np.float64))
    out["direction"] = np.where(out["effect"].to_numpy(np.float64) >= 0, "gain", "loss")
    out["alert"] = (np.nan_to_num(out["q"].to_numpy(np.float64), nan=1.0) < fdr) & (
        np.abs(np.nan_to_num(out["effect"].to_numpy(np.float64))) >= min_effect
    )
    front = ["level", "protein", "cell_line", "plate", "well", "location"]
    return out[front + [c for c in out.columns if c not in front]]


def alerts_table(changes: pd.DataFrame) -> pd.DataFrame:
    """The alerting changes, with the opposite-direction partner (a translocation).

    ``partner`` is the class that changed the other way in the same series with
    an onset within one frame (largest effect), "" if none.
    """
    a = changes[changes["alert"]].copy()
    series = ["level", "protein", "cell_line", "plate", "well"]
    partner = pd.Series("", index=a.index, dtype=object)
    for _, g in a.groupby(series, sort=False, observed=True):
        if len(g) < 2:
            continue
        for i, row in g.iterrows():
            other = g[
                (g["direction"] != row["direction"]) & ((g["onset"] - row["onset"]).abs() <= 1)
            ]
            if len(other):
                partner[i] = other.loc[other["effect"].abs().idxmax(), "location"]
    a["partner"] = partner
    return a.sort_values(["level", "q", *series[1:], "location"], kind="stable").reset_index(
        drop=True
    )


def change_summary(alerts: pd.DataFrame) -> pd.DataFrame:
    """Per protein x cell line (cell-line level alerts): the strongest change.

    Columns: ``time_change`` (bool), ``time_onset``, ``time_from``, ``time_to``,
    ``time_effect`` (largest |effect|), ``time_q`` (smallest q).
    """
    cols = ["protein", "cell_line", "time_change", "time_onset", "time_from", "time_to"]
    cols += ["time_effect", "time_q"]
    a = alerts[alerts["level"] == "cell_line"]
    rows = []
    for (prot, line), g in a.groupby(["protein", "cell_line"], sort=True, observed=True):
        top = g.loc[g["effect"].abs().idxmax()]
        loss = g[g["direction"] == "loss"]
        gain = g[g["direction"] == "gain"]
        rows.append(
            {
                "protein": prot,
                "cell_line": line,
                "time_change": True,
                "time_onset": int(top["onset"]),
                "time_from": loss.loc[loss["effect"].idxmin(), "location"] if len(loss) else "",
                "time_to": gain.loc[gain["effect"].idxmax(), "location"] if len(gain) else "",
                "time_effect": float(abs(top["effect"])),
                "time_q": float(g["q"].min()),
            }
        )
    return pd.DataFrame(rows, columns=cols)
