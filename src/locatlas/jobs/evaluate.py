"""Evaluate against ground truth (simulated atlases): segmentation F1 and localization F1."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from ..atomic import write_parquet, write_text
from ..classes import load_classes
from .common import log


def evaluate_segmentation(segment_receipts: list[str], clear_receipts: list[str], truth_dir: str):
    """Per field: nuclei and cell matching at IoU 0.5 against the truth masks."""
    from ..omezarr import read_labels
    from ..segment import match_labels

    fields = pd.concat([pd.read_parquet(p) for p in sorted(clear_receipts)], ignore_index=True)
    masks = Path(truth_dir) / "masks"
    rows = []
    label_cache: dict[tuple[str, str], np.ndarray] = {}
    for rec in fields.sort_values("field_id").to_dict("records"):
        fid = rec["field_id"]
        for kind in ("nuclei", "cells"):
            truth_path = masks / f"{fid}_{kind}.tif"
            if not truth_path.exists():
                continue
            key = (rec["zarr_path"], kind)
            if key not in label_cache:
                label_cache = {k: v for k, v in label_cache.items() if k[0] == rec["zarr_path"]}
                label_cache[key] = read_labels(rec["zarr_path"], kind)
            pred = label_cache[key][int(rec["timepoint"])].reshape(label_cache[key].shape[-2:])
            m = match_labels(tifffile.imread(truth_path), pred, iou=0.5)
            rows.append(
                {
                    "field_id": fid,
                    "objects": kind,
                    **{k: m[k] for k in ("tp", "fp", "fn", "precision", "recall", "f1")},
                }
            )
    return pd.DataFrame(rows)


def _truth_labels_for_cells(cells: pd.DataFrame, truth_dir: Path) -> pd.Series:
    """The true classes of each segmented cell: those of the truth cell under its centroid."""
    truth_cells = pd.read_parquet(truth_dir / "cells.parquet")
    lookup = {(r.field_id, int(r.cell_id)): r.labels for r in truth_cells.itertuples()}
    out = []
    cache: dict[str, np.ndarray] = {}
    for rec in cells[["field_id", "centroid_y", "centroid_x"]].itertuples(index=False):
        fid = rec.field_id
        if fid not in cache:
            path = truth_dir / "masks" / f"{fid}_cells.tif"
            cache = {fid: tifffile.imread(path)} if path.exists() else {fid: None}
        mask = cache[fid]
        if mask is None:
            out.append("")
            continue
        y = int(np.clip(round(rec.centroid_y), 0, mask.shape[0] - 1))
        x = int(np.clip(round(rec.centroid_x), 0, mask.shape[1] - 1))
        tid = int(mask[y, x])
        out.append(lookup.get((fid, tid), "") if tid else "")
    return pd.Series(out, index=cells.index)


def evaluate_localization(
    cells_paths: list[str],
    loc_paths: list[str],
    model_dir: str,
    truth_dir: str,
    *,
    classes_path=None,
) -> dict:
    from ..localize import evaluate_predictions, load_model_package, parse_labels

    classes = load_classes(classes_path)
    _, spec = load_model_package(Path(model_dir))
    thresholds = spec.get("thresholds") or 0.5
    eval_classes = spec.get("trained_classes")
    cells = pd.concat([pd.read_parquet(p) for p in sorted(cells_paths)], ignore_index=True)
    loc = pd.concat([pd.read_parquet(p) for p in sorted(loc_paths)], ignore_index=True)
    df = cells.merge(loc, on=["field_id", "cell_id"], how="inner")
    df = df[df["qc_pass"].astype(bool)].reset_index(drop=True)  # also drops edge cells
    df["truth_labels"] = _truth_labels_for_cells(df, Path(truth_dir))
    df = df[df["truth_labels"] != ""]
    results = {}
    for split, part in df.groupby(df["split"].fillna("").astype(str)):
        probs = part[classes.prob_columns].to_numpy(np.float32)
        y = parse_labels(list(part["truth_labels"]), n_classes=len(classes))
        # macro-F1 over the classes the model was trained on that occur in this split
        # (a class with no cell here has no F1 to average)
        present = set(np.flatnonzero(y.sum(axis=0) > 0).tolist())
        scored = sorted(present & set(eval_classes)) if eval_classes else sorted(present)
        ev = evaluate_predictions(probs, y, thresholds, classes, eval_classes=scored)
        ev["n_cells"] = int(len(part))
        ev["proteins"] = sorted(part["protein"].astype(str).unique())
        results[split or "unsplit"] = ev
    return results


def run_evaluate(
    segment_receipts: list[str],
    clear_receipts: list[str],
    cells_paths: list[str],
    loc_paths: list[str],
    model_dir: str,
    truth_dir: str,
    out_dir: str,
    *,
    classes_path=None,
) -> None:
    out = Path(out_dir)
    seg = evaluate_segmentation(segment_receipts, clear_receipts, truth_dir)
    write_parquet(seg, out / "segmentation.parquet")
    summary = {}
    if not seg.empty:
        for kind, part in seg.groupby("objects"):
            tp, fp, fn = part["tp"].sum(), part["fp"].sum(), part["fn"].sum()
            summary[f"{kind}_f1"] = float(2 * tp / max(1, 2 * tp + fp + fn))
            summary[f"{kind}_fields"] = int(len(part))
    loc = evaluate_localization(
        cells_paths, loc_paths, model_dir, truth_dir, classes_path=classes_path
    )
    summary["localization"] = loc
    write_text(
        json.dumps(summary, indent=2, sort_keys=True, default=_jsonable), out / "evaluation.json"
    )
    log.info("evaluation: %s", {k: v for k, v in summary.items() if k != "localization"})


def _jsonable(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(type(obj))
