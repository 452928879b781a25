"""Model calls beside the sample sheet's labels, per protein and cell line.

Users who bring labelled images (HPA/Kaggle style: image-level labels for a
protein) want to see, next to those labels, what the model says about the
protein's cells: the mean probability of each labelled class and its rank among
all classes, the classes the model ranks first, and the label-free scores that
need no model at all. This is not an accuracy figure (a handful of fields is not
a test set); it is the side-by-side view a curator reads.

Streaming: each shard is reduced to per-group sums before the next is read, so
memory grows with the number of proteins, not cells.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from locatlas.classes import ClassList

#: Label-free scores shown beside the model's calls (when present).
LABEL_FREE = (
    "lf_nuclear_fraction",
    "lf_rim_enrichment",
    "lf_punctateness",
    "lf_pearson_nucleus",
    "lf_pearson_microtubules",
    "lf_pearson_er",
)
_KEYS = ["protein", "cell_line", "labels"]


def _label_indices(text: str) -> list[int]:
    return [int(t) for t in str(text).replace(",", ";").split(";") if t.strip()]


def _shard_sums(cells: pd.DataFrame, loc: pd.DataFrame, prob_cols: list[str]) -> pd.DataFrame:
    df = cells.merge(loc, on=["field_id", "cell_id"], how="inner")
    usable = df["qc_pass"].astype(bool) if "qc_pass" in df else pd.Series(True, index=df.index)
    df = df[usable & (df["labels"].fillna("").astype(str) != "")]
    if df.empty:
        return pd.DataFrame()
    lf = [c for c in LABEL_FREE if c in df]
    df = df.assign(n_cells=1, **{f"n_{c}": df[c].notna().astype(int) for c in lf})
    for c in _KEYS:
        df[c] = df[c].fillna("").astype(str) if c in df else ""
    cols = ["n_cells", *prob_cols, *lf, *(f"n_{c}" for c in lf)]
    sums = df.groupby(_KEYS, sort=True)[cols].sum()
    sums["n_fields"] = df.groupby(_KEYS, sort=True)["field_id"].nunique()  # a field is in one shard
    return sums


def predictions_beside_labels(
    cells_paths: Sequence[str],
    loc_paths: Sequence[str],
    classes: ClassList,
    *,
    top: int = 3,
) -> pd.DataFrame:
    """One row per labelled protein × cell line (and label set).

    Columns: ``protein``, ``cell_line``, ``labels`` (class names), ``n_fields``,
    ``n_cells``, ``label_mean_prob`` and ``label_rank`` (per labelled class,
    ';'-joined; rank 1 = the model's most probable class), ``top_predictions``
    (the ``top`` classes by mean probability, with it), ``label_in_top`` (every
    labelled class is among them) and the mean label-free scores.
    """
    prob_cols = classes.prob_columns
    parts = []
    for cells_path, loc_path in zip(sorted(cells_paths), sorted(loc_paths), strict=True):
        cells = pd.read_parquet(cells_path)
        if cells.empty or "labels" not in cells:
            continue
        parts.append(_shard_sums(cells, pd.read_parquet(loc_path), prob_cols))
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame()
    sums = pd.concat(parts).groupby(level=list(range(len(_KEYS)))).sum()
    rows = []
    for (protein, line, labels), s in sums.iterrows():
        n = float(s["n_cells"])
        mean = s[prob_cols].to_numpy(np.float64) / n
        order = np.argsort(-mean, kind="stable")
        rank = np.empty(len(order), int)
        rank[order] = np.arange(1, len(order) + 1)
        idx = [j for j in _label_indices(labels) if 0 <= j < len(prob_cols)]
        row = {
            "protein": protein,
            "cell_line": line,
            "labels": "; ".join(classes.names[j] for j in idx),
            "n_fields": int(s["n_fields"]),
            "n_cells": int(n),
            "label_mean_prob": "; ".join(f"{mean[j]:.2f}" for j in idx),
            "label_rank": "; ".join(str(int(rank[j])) for j in idx),
            "top_predictions": "; ".join(f"{classes.names[j]} {mean[j]:.2f}" for j in order[:top]),
            "label_in_top": bool(idx) and all(rank[j] <= top for j in idx),
        }
        for c in LABEL_FREE:
            if c in s.index and s.get(f"n_{c}", 0) > 0:
                row[c] = float(s[c]) / float(s[f"n_{c}"])
        rows.append(row)
    return pd.DataFrame(rows)
