"""Nearest-neighbour look-up of cell embeddings against a labelled reference set."""

from __future__ import annotations

import numpy as np
import torch


def nearest_neighbours(
    emb: np.ndarray,
    ref_emb: np.ndarray,
    ref_labels: np.ndarray,
    *,
    k: int = 10,
    weighting: str = "uniform",
    chunk: int = 4096,
    return_similarity: bool = False,
):
    """The ``k`` most similar reference cells (cosine) and their label consensus.

    Parameters
    ----------
    emb : (N, D) query embeddings.
    ref_emb : (M, D) reference embeddings.
    ref_labels : (M, K) multi-hot labels of the reference cells.
    k : neighbours per query (capped at M).
    weighting : ``"uniform"`` (consensus = fraction of the neighbours with each
        label) or ``"similarity"`` (weighted by max(cosine, 0)).
    chunk : queries per block (bounds memory to chunk × M similarities).
    return_similarity : also return the (N, k) cosine similarities.

    Returns
    -------
    indices (N, k) int64 into the reference set, most similar first (ties by
    lower index); consensus (N, K) float32 in [0, 1]; and, when asked,
    similarities (N, k) float32.
    """
    emb = np.asarray(emb, dtype=np.float32)
    ref_emb = np.asarray(ref_emb, dtype=np.float32)
    ref_labels = np.asarray(ref_labels, dtype=np.float32)
    if emb.ndim != 2 or ref_emb.ndim != 2 or emb.shape[1] != ref_emb.shape[1]:
        raise ValueError(
            f"embeddings {emb.shape} and reference {ref_emb.shape} must be (N, D), (M, D)"
        )
    if ref_labels.ndim != 2 or len(ref_labels) != len(ref_emb):
        raise ValueError(f"reference labels {ref_labels.shape} must be (M={len(ref_emb)}, K)")
    if weighting not in ("uniform", "similarity"):
        raise ValueError(f"weighting must be 'uniform' or 'similarity', got {weighting!r}")
    if len(ref_emb) == 0:
        raise ValueError("the reference set is empty")
    k = int(min(k, len(ref_emb)))
    q = torch.nn.functional.normalize(torch.from_numpy(emb), dim=1)
    r = torch.nn.functional.normalize(torch.from_numpy(ref_emb), dim=1)
    lab = torch.from_numpy(ref_labels)
    n = len(emb)
    idx = np.empty((n, k), dtype=np.int64)
    sims = np.empty((n, k), dtype=np.float32)
    cons = np.empty((n, ref_labels.shape[1]), dtype=np.float32)
    for a in range(0, n, chunk):
        sim = q[a : a + chunk] @ r.t()
        # Stable order: sort by (-similarity, index) so ties go to the lower index.
        order = torch.argsort(-sim, dim=1, stable=True)[:, :k]
        top = torch.gather(sim, 1, order)
        if weighting == "uniform":
            w = torch.full_like(top, 1.0 / k)
        else:
            w = top.clamp_min(0)
            w = w / w.sum(dim=1, keepdim=True).clamp_min(1e-12)
        cons[a : a + chunk] = torch.einsum("nk,nkc->nc", w, lab[order]).numpy()
        idx[a : a + chunk] = order.numpy()
        sims[a : a + chunk] = top.numpy()
    cons = np.clip(cons, 0, 1)
    if return_similarity:
        return idx, cons, sims
    return idx, cons
