"""cells.h5ad: the per-cell atlas as AnnData, written with bounded memory.

Layout (scanpy conventions):

- ``X``: ``(n, C)`` float32 class probabilities; ``var`` = classes (index = slug,
  columns ``name``, ``compartment``, ``threshold``);
- ``obs``: cell metadata (see :data:`OBS_COLUMNS`), strings as categoricals,
  ``obs_names`` = ``"<field_id>/<cell_id>"``;
- ``obsm``: the 2-D map (``X_umap``, ``X_tsne`` or ``X_pca``) and, when embeddings
  were given, ``X_embedding`` ``(n, D)`` float32;
- ``uns['locatlas']``: how many atlas cells exist, how many are in the file and how
  they were chosen, the map method and the parameters (JSON).

Everything except ``X_embedding`` is built in memory (a few hundred bytes per cell,
bounded by ``h5ad_max_cells``); ``X_embedding`` is streamed into the file chunk by
chunk with h5py after anndata has written the rest, using the AnnData on-disk
encoding (``encoding-type: array``), so ``anndata.read_h5ad`` reads it back normally.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from locatlas.atomic import atomic_path

#: obs columns written when available (cells-table columns plus derived ones).
OBS_COLUMNS = (
    "field_id",
    "cell_id",
    "plate",
    "well",
    "field",
    "timepoint",
    "protein",
    "cell_line",
    "split",
    "centroid_y_um",
    "centroid_x_um",
    "cell_area_um2",
    "nucleus_area_um2",
    "nucleus_integrated",
    "intensity",
    "cycle_position",
    "cycle_phase",
    "top_location",
    "n_locations",
    "cluster",
    "shard",
)


def write_cells_h5ad(
    path: str | os.PathLike,
    *,
    obs: pd.DataFrame,
    X: np.ndarray,
    var: pd.DataFrame,
    obsm: dict[str, np.ndarray],
    uns: dict,
    embedding_chunks: Iterable[np.ndarray] | None = None,
    embedding_dim: int | None = None,
) -> Path:
    """Write cells.h5ad atomically; stream ``X_embedding`` from ``embedding_chunks``.

    Parameters
    ----------
    obs
        ``n`` rows of cell metadata; its index becomes ``obs_names``.
    X
        ``(n, C)`` float32 probabilities.
    obsm
        Small per-cell arrays (e.g. ``{"X_umap": (n, 2)}``).
    embedding_chunks
        Successive ``(n_i, D)`` blocks whose rows follow ``obs``; their total must be n.
    """
    import anndata as ad
    import h5py

    n = len(obs)
    if X.shape[0] != n:
        raise ValueError(f"X has {X.shape[0]} rows for {n} cells")
    adata = ad.AnnData(
        X=np.asarray(X, np.float32),
        obs=obs,
        var=var,
        obsm={k: np.asarray(v) for k, v in obsm.items()},
    )
    adata.uns["locatlas"] = uns
    path = Path(path)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
        del adata
        if embedding_chunks is not None and embedding_dim:
            with h5py.File(tmp, "a") as f:
                rows = max(1, min(n, (1 << 20) // max(embedding_dim * 4, 1)))
                dset = f["obsm"].create_dataset(
                    "X_embedding",
                    shape=(n, embedding_dim),
                    dtype="float32",
                    chunks=(rows, embedding_dim) if n else None,
                )
                dset.attrs["encoding-type"] = "array"
                dset.attrs["encoding-version"] = "0.2.0"
                pos = 0
                for block in embedding_chunks:
                    b = np.asarray(block, np.float32)
                    dset[pos : pos + len(b)] = b
                    pos += len(b)
                if pos != n:
                    raise ValueError(f"embedding chunks gave {pos} rows for {n} cells")
    return path
