"""Location profiles: incremental group sums and location calls.

Cells are summed into the finest group (protein, cell line, plate, well, time point)
batch by batch; every coarser table (per protein x cell line x time point, per
protein x cell line, per well ...) is a sum of those rows, so one streaming pass
gives them all with memory proportional to the number of groups, not of cells.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

from locatlas.classes import ClassList

#: The finest group: every table is a sum over these.
GROUP_KEYS = ("protein", "cell_line", "plate", "well", "timepoint")


def called_matrix(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Per-cell location calls: ``probs >= thresholds`` (``(n, C)`` bool; NaN -> False)."""
    with np.errstate(invalid="ignore"):
        return probs >= thresholds[None, :]


def top_matrix(probs: np.ndarray) -> np.ndarray:
    """One-hot ``(n, C)`` bool of each cell's most probable class."""
    out = np.zeros(probs.shape, bool)
    if len(probs):
        out[np.arange(len(probs)), np.nanargmax(np.nan_to_num(probs, nan=-1.0), axis=1)] = True
    return out


class GroupAccumulator:
    """Running sums per finest group (see :data:`GROUP_KEYS`).

    Per group it keeps: rows, usable cells, QC failures, edge cells, the number of
    cells with a valid intensity and the sums of log intensity and its square, and
    per class the sums of probabilities, of calls and of top-class one-hots.
    """

    def __init__(self, n_classes: int):
        self.n_classes = n_classes
        self._index: dict[tuple, int] = {}
        self._keys: list[tuple] = []
        self._counts = np.zeros((0, 5), np.int64)  # rows, cells, qc_fail, edge, no_loc
        self._int = np.zeros((0, 3), np.float64)  # n_int, sum, sum of squares
        self._cls = np.zeros((0, 3 * n_classes), np.float64)  # sum_p, n_called, n_top

    @property
    def n_groups(self) -> int:
        return len(self._keys)

    def _grow(self, n: int) -> None:
        cap = len(self._counts)
        if n <= cap:
            return
        new = max(n, 2 * cap, 64)
        for name in ("_counts", "_int", "_cls"):
            a = getattr(self, name)
            b = np.zeros((new, a.shape[1]), a.dtype)
            b[:cap] = a
            setattr(self, name, b)

    def group_ids(self, cells: pd.DataFrame) -> np.ndarray:
        """Global group id of every row of ``cells`` (new groups are registered)."""
        codes, uniques = [], []
        for k in GROUP_KEYS:
            col = cells[k]
            if isinstance(col.dtype, pd.CategoricalDtype):
                codes.append(col.cat.codes.to_numpy().astype(np.int64))
                uniques.append(np.asarray(col.cat.categories.astype(str)))
            else:
                c, u = pd.factorize(col, use_na_sentinel=False)
                codes.append(c.astype(np.int64))
                uniques.append(np.asarray(u))
        dims = tuple(max(len(u), 1) for u in uniques)
        flat = np.ravel_multi_index(codes, dims)
        local, inverse = np.unique(flat, return_inverse=True)
        parts = np.unravel_index(local, dims)
        gids = np.empty(len(local), np.int64)
        for i in range(len(local)):
            key = tuple(
                _py(uniques[j][parts[j][i]]) if k != "timepoint" else int(uniques[j][parts[j][i]])
                for j, k in enumerate(GROUP_KEYS)
            )
            g = self._index.get(key)
            if g is None:
                g = len(self._keys)
                self._index[key] = g
                self._keys.append(key)
            gids[i] = g
        self._grow(len(self._keys))
        return gids[inverse]

    def add(
        self,
        gid: np.ndarray,
        *,
        usable: np.ndarray,
        qc_fail: np.ndarray,
        edge: np.ndarray,
        probs: np.ndarray,
        called: np.ndarray,
        top: np.ndarray,
        logint: np.ndarray,
    ) -> None:
        """Add one batch. ``gid`` from :meth:`group_ids`; arrays are per row.

        ``usable`` must already exclude cells without probabilities (NaN rows).
        """
        n_rows = len(gid)
        uniq, inv = np.unique(gid, return_inverse=True)
        onehot = sp.csr_matrix(
            (np.ones(n_rows), (inv, np.arange(n_rows))), shape=(len(uniq), n_rows)
        )
        no_loc = np.isnan(probs).any(axis=1)
        cnt = onehot @ np.column_stack([np.ones(n_rows), usable, qc_fail, edge, no_loc]).astype(
            np.float64
        )
        self._counts[uniq] += np.rint(cnt).astype(np.int64)
        u = usable
        ou = onehot[:, u] if not u.all() else onehot
        li = logint[u]
        ok = np.isfinite(li)
        li0 = np.where(ok, li, 0.0)
        self._int[uniq] += ou @ np.column_stack([ok, li0, li0 * li0]).astype(np.float64)
        c = self.n_classes
        # three products instead of one wide float64 copy: less temporary memory
        for j, block in enumerate((probs, called, top)):
            self._cls[uniq, j * c : (j + 1) * c] += ou @ block[u].astype(np.float64)

    def to_frame(self, classes: ClassList) -> pd.DataFrame:
        """The finest-group sums as a table (one row per group, sorted by key).

        ``gid`` is the accumulator's group id (the values :meth:`group_ids` returned).
        """
        g = self.n_groups
        keys = pd.DataFrame(self._keys, columns=list(GROUP_KEYS))
        keys["timepoint"] = keys["timepoint"].astype(np.int64)
        c = len(classes)
        data = {
            "n_rows": self._counts[:g, 0],
            "n_cells": self._counts[:g, 1],
            "n_qc_fail": self._counts[:g, 2],
            "n_edge": self._counts[:g, 3],
            "n_no_localization": self._counts[:g, 4],
            "n_int": self._int[:g, 0].round().astype(np.int64),
            "sum_int": self._int[:g, 1],
            "sum_int2": self._int[:g, 2],
        }
        for j, s in enumerate(classes.slugs):
            data[f"sum_p_{s}"] = self._cls[:g, j]
        for j, s in enumerate(classes.slugs):
            data[f"n_called_{s}"] = self._cls[:g, c + j].round().astype(np.int64)
        for j, s in enumerate(classes.slugs):
            data[f"n_top_{s}"] = self._cls[:g, 2 * c + j].round().astype(np.int64)
        out = pd.concat([keys, pd.DataFrame(data)], axis=1)
        out["gid"] = np.arange(g, dtype=np.int64)
        return out.sort_values(list(GROUP_KEYS), kind="stable").reset_index(drop=True)


def _py(x):
    return x.item() if hasattr(x, "item") else x


def sum_columns(frame: pd.DataFrame) -> list[str]:
    """The additive columns of a group-sums table."""
    return [c for c in frame.columns if c.startswith(("n_", "sum_"))]


def rollup(sums: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Sum finest-group rows up to the level ``by`` (e.g. ``["protein", "cell_line"]``)."""
    cols = sum_columns(sums)
    out = sums.groupby(list(by), sort=True, observed=True)[cols].sum().reset_index()
    if len(by) < len(GROUP_KEYS):
        out["n_groups"] = sums.groupby(list(by), sort=True, observed=True).size().to_numpy()
    return out


def wilson_lower(k: np.ndarray, n: np.ndarray, *, level: float = 0.95) -> np.ndarray:
    """Wilson score lower bound of a binomial proportion ``k / n`` (NaN where n = 0)."""
    z = stats.norm.ppf(0.5 + level / 2)
    k = np.asarray(k, np.float64)
    n = np.asarray(n, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        den = 1 + z * z / n
        centre = p + z * z / (2 * n)
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        return np.where(n > 0, (centre - half) / den, np.nan)


def location_calls(
    n_called: np.ndarray,
    n_cells: np.ndarray,
    *,
    classes: ClassList,
    call_min_fraction: float,
    main_min_fraction: float,
    min_cells: int,
    level: float = 0.95,
) -> pd.DataFrame:
    """Main and additional location calls of groups from their call counts.

    Parameters
    ----------
    n_called
        ``(G, C)`` cells calling each class, per group.
    n_cells
        ``(G,)`` usable cells per group.

    Returns
    -------
    pandas.DataFrame
        ``main_locations`` / ``additional_locations`` (';'-joined class names),
        ``n_locations``, ``main_confidence`` / ``additional_confidence`` (smallest
        Wilson lower bound of the fraction of cells over the called classes) and
        ``reliability``: ``high`` (every call's lower bound clears
        ``call_min_fraction``), ``medium`` (point estimates only), ``none`` (no
        location detected) or ``insufficient`` (fewer than ``min_cells`` cells).
    """
    n_called = np.asarray(n_called, np.float64)
    n_cells = np.asarray(n_cells, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = n_called / n_cells[:, None]
    lower = wilson_lower(n_called, np.broadcast_to(n_cells[:, None], n_called.shape), level=level)
    names = np.asarray(classes.names, dtype=object)
    main, add, nloc, mconf, aconf, rel = [], [], [], [], [], []
    for g in range(len(n_cells)):
        if n_cells[g] < min_cells:
            main.append("")
            add.append("")
            nloc.append(0)
            mconf.append(np.nan)
            aconf.append(np.nan)
            rel.append("insufficient")
            continue
        f = frac[g]
        det = np.flatnonzero(f >= call_min_fraction)
        m = det[f[det] >= main_min_fraction]
        if len(m) == 0 and len(det):
            m = det[[np.argmax(f[det])]]
        a = np.setdiff1d(det, m)
        m = m[np.argsort(-f[m], kind="stable")]
        a = a[np.argsort(-f[a], kind="stable")]
        main.append(";".join(names[m]))
        add.append(";".join(names[a]))
        nloc.append(len(det))
        mconf.append(float(lower[g, m].min()) if len(m) else np.nan)
        aconf.append(float(lower[g, a].min()) if len(a) else np.nan)
        if len(det) == 0:
            rel.append("none")
        elif (lower[g, det] >= call_min_fraction).all():
            rel.append("high")
        else:
            rel.append("medium")
    return pd.DataFrame(
        {
            "main_locations": main,
            "additional_locations": add,
            "n_locations": np.asarray(nloc, np.int64),
            "main_confidence": mconf,
            "additional_confidence": aconf,
            "reliability": rel,
        }
    )


def profile_table(
    sums: pd.DataFrame,
    by: Sequence[str],
    *,
    classes: ClassList,
    call_min_fraction: float,
    main_min_fraction: float,
    min_cells: int,
    level: float = 0.95,
) -> pd.DataFrame:
    """Profiles at the level ``by``: counts, fractions, mean probabilities and calls.

    Columns: the keys, ``n_cells`` (usable), ``n_rows`` (all rows, incl. QC
    failures), ``n_qc_fail``, ``n_edge``, ``frac_<slug>`` (fraction of usable cells
    calling the class), ``mean_p_<slug>`` (mean probability), ``top_<slug>``
    (fraction of cells whose most probable class it is), ``mean_log_intensity``,
    ``sd_log_intensity`` and the call columns of :func:`location_calls`.
    """
    r = rollup(sums, by)
    n = r["n_cells"].to_numpy(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = r[[*by, "n_cells", "n_rows", "n_qc_fail", "n_edge", "n_no_localization"]].copy()
        if "n_groups" in r:
            out["n_groups"] = r["n_groups"]
        ncalled = r[[f"n_called_{s}" for s in classes.slugs]].to_numpy(np.float64)
        frac = ncalled / n[:, None]
        meanp = r[[f"sum_p_{s}" for s in classes.slugs]].to_numpy() / n[:, None]
        top = r[[f"n_top_{s}" for s in classes.slugs]].to_numpy() / n[:, None]
        ni = r["n_int"].to_numpy(np.float64)
        mu = r["sum_int"].to_numpy() / ni
        var = (r["sum_int2"].to_numpy() - ni * mu * mu) / (ni - 1)
    block = {}
    for j, s in enumerate(classes.slugs):
        block[f"frac_{s}"] = frac[:, j]
    for j, s in enumerate(classes.slugs):
        block[f"mean_p_{s}"] = meanp[:, j]
    for j, s in enumerate(classes.slugs):
        block[f"top_{s}"] = top[:, j]
    block["mean_log_intensity"] = mu
    block["sd_log_intensity"] = np.sqrt(np.maximum(var, 0.0))
    calls = location_calls(
        ncalled,
        n,
        classes=classes,
        call_min_fraction=call_min_fraction,
        main_min_fraction=main_min_fraction,
        min_cells=min_cells,
        level=level,
    )
    return pd.concat([out.reset_index(drop=True), pd.DataFrame(block), calls], axis=1)
