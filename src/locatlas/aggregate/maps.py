"""Maps of cells and proteins: UMAP (default), t-SNE or PCA, and k-means clusters.

The cell map is *fitted* on a stratified sample (a capped number of cells per
protein) and then *applied* chunk by chunk to the cells written to cells.h5ad, so
its cost does not grow with the atlas. UMAP uses ``umap-learn``'s ``transform``;
t-SNE has no out-of-sample transform, so new cells get the inverse-distance
weighted mean position of their 10 nearest fitted cells (in feature space). PCA is
exact and fast (tests, huge runs). ``umap`` is imported lazily (numba compiles on
first import).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np


@dataclass
class CellMap:
    """A fitted 2-D map: ``transform(features) -> (n, 2) float32``."""

    method: str
    model: object
    fit_coords: np.ndarray
    fit_features: np.ndarray | None = None
    knn: object | None = None

    @property
    def obsm_key(self) -> str:
        """The AnnData/scanpy key of its coordinates (``X_umap``, ``X_tsne``, ``X_pca``)."""
        return f"X_{self.method}"

    def transform(self, features: np.ndarray) -> np.ndarray:
        """Coordinates of new cells (rows of ``features``, same columns as the fit)."""
        x = np.asarray(features, np.float32)
        if len(x) == 0:
            return np.zeros((0, 2), np.float32)
        if self.method == "umap":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = self.model.transform(x)
        elif self.method == "pca":
            out = self.model.transform(x)
        else:  # tsne: neighbour interpolation
            dist, idx = self.knn.kneighbors(x)
            w = 1.0 / np.maximum(dist, 1e-6)
            w /= w.sum(1, keepdims=True)
            out = (self.fit_coords[idx] * w[..., None]).sum(1)
        return np.asarray(out, np.float32)


def fit_cell_map(
    features: np.ndarray,
    *,
    method: str = "umap",
    seed: int = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    perplexity: float = 30.0,
) -> CellMap:
    """Fit a 2-D map of ``(n, D)`` features (n >= 3).

    Parameters
    ----------
    method
        ``umap``, ``tsne`` or ``pca``.
    seed
        Random state; UMAP then runs single-threaded and is reproducible.
    """
    x = np.asarray(features, np.float32)
    n = len(x)
    if n < 3:
        raise ValueError(f"a map needs at least 3 cells, got {n}")
    if method == "umap":
        import umap  # lazy: numba compiles on first import

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = umap.UMAP(
                n_components=2,
                n_neighbors=int(min(n_neighbors, n - 1)),
                min_dist=min_dist,
                random_state=seed,
                transform_seed=seed,
                force_approximation_algorithm=True,
                low_memory=True,
            )
            coords = model.fit_transform(x)
        return CellMap("umap", model, np.asarray(coords, np.float32))
    if method == "tsne":
        from sklearn.manifold import TSNE
        from sklearn.neighbors import NearestNeighbors

        perp = float(min(perplexity, max(2.0, (n - 1) / 3.0)))
        coords = TSNE(n_components=2, perplexity=perp, random_state=seed, init="pca").fit_transform(
            x
        )
        knn = NearestNeighbors(n_neighbors=min(10, n)).fit(x)
        return CellMap("tsne", None, np.asarray(coords, np.float32), x, knn)
    if method == "pca":
        from sklearn.decomposition import PCA

        model = PCA(n_components=2, svd_solver="full", random_state=seed).fit(x)
        return CellMap("pca", model, model.transform(x).astype(np.float32))
    raise ValueError(f"unknown map method {method!r}")


def fit_clusters(features: np.ndarray, *, n_clusters: int, seed: int = 0):
    """k-means (sklearn) on the fit sample; ``None`` when clustering is off or impossible."""
    from sklearn.cluster import KMeans

    n = len(features)
    k = int(min(n_clusters, n))
    if k < 2:
        return None
    return KMeans(n_clusters=k, n_init=1, max_iter=100, random_state=seed).fit(
        np.asarray(features, np.float32)
    )


def protein_map(
    profiles: np.ndarray,
    *,
    method: str = "umap",
    n_clusters: int = 8,
    seed: int = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    perplexity: float = 30.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Map and cluster proteins from their ``(P, C)`` location profiles.

    Returns ``(coords (P, 2) float32, cluster (P,) int)``; with fewer than 5
    proteins (or method ``none``) coordinates are NaN and clusters -1. UMAP falls
    back to PCA below 10 proteins (its neighbour graph needs more points).
    """
    x = np.nan_to_num(np.asarray(profiles, np.float32))
    p = len(x)
    if method == "none" or p < 5:
        return np.full((p, 2), np.nan, np.float32), np.full(p, -1, np.int64)
    m = method if not (method == "umap" and p < 10) else "pca"
    cmap = fit_cell_map(
        x, method=m, seed=seed, n_neighbors=n_neighbors, min_dist=min_dist, perplexity=perplexity
    )
    km = fit_clusters(x, n_clusters=n_clusters, seed=seed)
    clusters = km.labels_.astype(np.int64) if km is not None else np.zeros(p, np.int64)
    return cmap.fit_coords, clusters
