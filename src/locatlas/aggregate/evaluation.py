"""Evaluation of the atlas against known truth (simulator) and cell labels.

``truth/proteins.csv`` columns read: protein, cell_line, labels, cell_cycle_dependent,
variable, translocation_from, translocation_to, onset_frame (optional:
variable_kind = intensity/variable or spatial). Class fields may be indices, names or
slugs. All rates are over protein x cell line rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from locatlas.aggregate.concordance import parse_locations
from locatlas.classes import ClassList

_TRUE = {"true", "1", "yes", "y", "t"}


def _bool(col: pd.Series) -> np.ndarray:
    if col.dtype == bool:
        return col.to_numpy()
    return col.astype(str).str.strip().str.lower().isin(_TRUE).to_numpy()


def read_truth(truth_dir: str | Path) -> pd.DataFrame:
    """Read ``truth/proteins.csv`` (raises ``ValueError`` naming the file)."""
    path = Path(truth_dir) / "proteins.csv"
    if not path.is_file():
        raise ValueError(f"{path}: truth table not found")
    df = pd.read_csv(path, dtype={"protein": str, "cell_line": str}, keep_default_na=False)
    missing = [c for c in ("protein", "cell_line") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    return df


def _rate(num: int, den: int) -> float | None:
    return float(num / den) if den else None


def evaluate_truth(
    proteins: pd.DataFrame,
    alerts: pd.DataFrame,
    truth: pd.DataFrame,
    classes: ClassList,
) -> dict:
    """Recovery of planted behaviours.

    Returns
    -------
    dict
        ``cycle`` (recall, false discovery proportion, false positive rate),
        ``translocation`` (recall with onset within one frame, mean |onset error|,
        false alert rate), ``variability`` (recall overall and per kind, false call
        rate among proteins with no planted variation, i.e. neither variable,
        cycle dependent nor translocating) and ``locations``
        (exact-set agreement of calls with the truth labels where no change or
        spatial variation was planted).
    """
    key = ["protein", "cell_line"]
    t = truth.rename(columns={c: f"truth_{c}" for c in truth.columns if c not in key}).copy()
    t["protein"] = t["protein"].astype(str)
    t["cell_line"] = t["cell_line"].astype(str)
    pr = proteins.copy()
    pr["protein"] = pr["protein"].astype(str)
    pr["cell_line"] = pr["cell_line"].astype(str)
    m = t.merge(pr, on=key, how="inner")
    out: dict = {"n_truth_rows": len(t), "n_matched_rows": len(m)}
    empty = np.zeros(len(m), bool)
    ccd = _bool(m["truth_cell_cycle_dependent"]) if "truth_cell_cycle_dependent" in m else empty

    if "truth_cell_cycle_dependent" in m:
        called = m["cycle_dependent"].fillna(False).to_numpy(bool)
        tp = int((ccd & called).sum())
        fp = int((~ccd & called).sum())
        out["cycle"] = {
            "n_true": int(ccd.sum()),
            "n_called": int(called.sum()),
            "recall": _rate(tp, int(ccd.sum())),
            "false_discovery_proportion": _rate(fp, int(called.sum())),
            "false_positive_rate": _rate(fp, int((~ccd).sum())),
        }

    moving = empty
    if "truth_translocation_from" in m:
        tf = m["truth_translocation_from"].astype(str).str.strip()
        moving = ((tf != "") & (tf.str.lower() != "nan")).to_numpy()
        a = alerts[alerts["level"] == "cell_line"]
        a_prot = a["protein"].astype(str)
        a_line = a["cell_line"].astype(str)
        hits, errors = 0, []
        for _, r in m[moving].iterrows():
            src = {
                classes.slugs[i] for i in parse_locations(r["truth_translocation_from"], classes)
            }
            dst = {classes.slugs[i] for i in parse_locations(r["truth_translocation_to"], classes)}
            cand = a[(a_prot == r["protein"]) & (a_line == r["cell_line"])]
            ok = cand[
                (cand["location"].isin(src) & (cand["direction"] == "loss"))
                | (cand["location"].isin(dst) & (cand["direction"] == "gain"))
            ]
            if len(ok):
                err = int((ok["onset"].astype(int) - int(r["truth_onset_frame"])).abs().min())
                errors.append(err)
                hits += int(err <= 1)
        moved = set(zip(m.loc[moving, "protein"], m.loc[moving, "cell_line"], strict=True))
        alerted = set(zip(a_prot, a_line, strict=True))
        false_alerts = len(alerted - moved)
        out["translocation"] = {
            "n_true": int(moving.sum()),
            "recall_onset_within_1": _rate(hits, int(moving.sum())),
            "mean_abs_onset_error": float(np.mean(errors)) if errors else None,
            "false_alert_rate": _rate(false_alerts, int((~moving).sum())),
            "n_false_alert_series": false_alerts,
        }

    kind = (
        m["truth_variable_kind"].astype(str).str.lower().to_numpy()
        if "truth_variable_kind" in m
        else np.full(len(m), "", dtype=object)
    )
    if "truth_variable" in m:
        truth_var = _bool(m["truth_variable"])
        flag = m["variable"].fillna(False).to_numpy(bool)
        # partial translocations make cells differ after the onset: not "clean"
        clean = ~truth_var & ~ccd & ~moving
        res = {
            "n_true": int(truth_var.sum()),
            "n_flagged": int(flag.sum()),
            "recall": _rate(int((truth_var & flag).sum()), int(truth_var.sum())),
            "false_call_rate_no_planted_variation": _rate(
                int((clean & flag).sum()), int(clean.sum())
            ),
        }
        if "truth_variable_kind" in m:
            for k, col in (("intensity", "variable_intensity"), ("spatial", "variable_spatial")):
                names = ("intensity", "variable") if k == "intensity" else ("spatial",)
                sel = truth_var & np.isin(kind, names)
                got = m[col].fillna(False).to_numpy(bool)
                res[f"recall_{k}"] = _rate(int((sel & got).sum()), int(sel.sum()))
        out["variability"] = res

    if "truth_labels" in m:
        plain = ~moving & (kind != "spatial")
        agree = []
        for _, r in m[plain].iterrows():
            truth_set = parse_locations(r["truth_labels"], classes)
            pred = parse_locations(r["main_locations"], classes) | parse_locations(
                r["additional_locations"], classes
            )
            agree.append(pred == truth_set)
        out["locations"] = {
            "n_rows": int(plain.sum()),
            "exact_set_agreement": float(np.mean(agree)) if agree else None,
        }
    return out


def cell_level_metrics(
    confusion: np.ndarray, tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, classes: ClassList
) -> dict:
    """Cell-level metrics from labelled cells (the ``labels`` column).

    ``confusion``: ``(C, C)`` single-label cells, true x most probable class;
    ``tp/fp/fn``: per-class counts of thresholded calls vs label sets.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * tp / (2 * tp + fp + fn)
    support = tp + fn
    n_single = int(confusion.sum())
    return {
        "n_single_label_cells": n_single,
        "top1_accuracy_single_label": _rate(int(np.trace(confusion)), n_single),
        "macro_f1": float(np.nanmean(f1[support > 0])) if (support > 0).any() else None,
        "per_class_f1": {
            s: (None if not np.isfinite(v) else round(float(v), 6))
            for s, v in zip(classes.slugs, f1, strict=True)
        },
    }
