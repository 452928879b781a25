"""Shared statistics: Benjamini-Hochberg FDR and vectorised permutation helpers."""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def fdr_bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values of ``p`` (NaN stays NaN and is not counted).

    Examples
    --------
    >>> fdr_bh(np.array([0.01, 0.04, 0.03])).round(3).tolist()
    [0.03, 0.04, 0.04]
    """
    p = np.asarray(p, np.float64)
    q = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m == 0:
        return q
    pv = p[ok]
    order = np.argsort(pv, kind="stable")
    ranked = pv[order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(ranked, 1.0)
    q[ok] = out
    return q


@lru_cache(maxsize=4)
def permutation_indices(n: int, n_perm: int, seed: int) -> np.ndarray:
    """``(n_perm, n)`` int32 random permutations of ``range(n)``, cached by size.

    Proteins with the same number of sampled cells (the usual case once the
    per-protein cap is reached) share one matrix, which keeps permutation tests
    over thousands of proteins cheap. Each protein's test is still exact.
    """
    rng = np.random.default_rng([seed, n])
    idx = np.tile(np.arange(n, dtype=np.int32), (n_perm, 1))
    return rng.permuted(idx, axis=1)


def permutations_of(
    n: int, n_perm: int, seed: int, *, base_n: int = 0, rows: slice | None = None
) -> np.ndarray:
    """Random permutations of ``range(n)`` (rows ``rows`` of an ``(n_perm, n)`` set).

    The entries ``< n`` of a uniform random permutation of ``range(N)`` (kept in
    order) form a uniform random permutation of ``range(n)``, so one cached
    ``(n_perm, N)`` matrix with ``N = max(n, base_n)`` serves every smaller size;
    ``rows`` selects a block of permutations without filtering the others.
    """
    big = max(n, base_n)
    base = permutation_indices(big, n_perm, seed)
    if rows is not None:
        base = base[rows]
    if big == n:
        return base
    return base[base < n].reshape(len(base), n)


def permutation_pvalue(observed: float, null: np.ndarray) -> float:
    """``(1 + #{null >= observed}) / (1 + len(null))`` (never 0)."""
    return float((1 + np.count_nonzero(null >= observed - 1e-12)) / (1 + len(null)))
