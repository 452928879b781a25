"""Multi-label evaluation: per-class precision/recall/F1, macro-F1, thresholds, confusion."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from locatlas.classes import ClassList

#: Threshold grid searched per class on the validation set.
THRESHOLD_GRID = np.round(np.arange(0.02, 0.99, 0.02), 2)


def _counts(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tp = (pred & truth).sum(axis=0)
    fp = (pred & ~truth).sum(axis=0)
    fn = (~pred & truth).sum(axis=0)
    return tp, fp, fn


def _f1(tp, fp, fn) -> np.ndarray:
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(denom), where=denom > 0)


def tune_thresholds(
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    default: float = 0.5,
    grid: np.ndarray = THRESHOLD_GRID,
    tolerance: float = 0.01,
) -> np.ndarray:
    """Per-class thresholds that maximize F1 on (validation) data.

    Every grid value whose F1 is within ``tolerance`` of the best is a
    candidate, and the median candidate is taken: the middle of the plateau
    generalizes better to new proteins than its edge. Classes without a
    positive in ``labels`` keep ``default``.

    Returns
    -------
    (K,) float32 thresholds.
    """
    probs = np.asarray(probs, dtype=np.float32)
    truth = np.asarray(labels) > 0.5
    k = probs.shape[1]
    out = np.full(k, default, dtype=np.float32)
    for j in range(k):
        if not truth[:, j].any():
            continue
        pred = probs[:, j][:, None] >= grid[None, :]
        t = truth[:, j][:, None]
        f1 = _f1((pred & t).sum(0), (pred & ~t).sum(0), (~pred & t).sum(0))
        ok = grid[f1 >= f1.max() - tolerance]
        out[j] = ok[(len(ok) - 1) // 2]
    return out


def main_location(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(true main, predicted main) class per cell for the confusion matrix.

    The predicted main location is the argmax of the probabilities. A cell with
    several true labels counts as correct when the prediction is any of them;
    otherwise its true main location is the true label the model rated highest.
    Cells without any true label get -1.
    """
    probs = np.asarray(probs, dtype=np.float32)
    truth = np.asarray(labels) > 0.5
    pred_main = probs.argmax(axis=1)
    hit = truth[np.arange(len(probs)), pred_main]
    masked = np.where(truth, probs, -np.inf)
    true_main = np.where(hit, pred_main, masked.argmax(axis=1))
    true_main = np.where(truth.any(axis=1), true_main, -1)
    return true_main, pred_main


def evaluate_predictions(
    probs: np.ndarray,
    labels: np.ndarray,
    thresholds: Sequence[float] | np.ndarray | float,
    classes: ClassList | Sequence[str],
    *,
    eval_classes: Sequence[int] | None = None,
) -> dict:
    """Score multi-label predictions against labels.

    Parameters
    ----------
    probs : (N, K) probabilities.
    labels : (N, K) multi-hot truth.
    thresholds : per-class (K,) thresholds or one for all.
    classes : the class list (or the K class names).
    eval_classes : class indices that count in the macro-F1 (e.g. the classes
        seen in training). Default: the classes with support in ``labels``.

    Returns
    -------
    dict with ``classes`` (names), ``per_class`` (list of dicts: index, name,
    precision, recall, f1, support, evaluated), ``macro_f1`` (over
    ``eval_classes``), ``micro_f1``, ``eval_classes`` (indices),
    ``eval_class_names``, ``confusion`` ((K, K) int list; rows = true main
    location, columns = predicted main location, see :func:`main_location`),
    ``main_accuracy`` (fraction of labelled cells whose argmax is a true
    label), ``exact_match`` and ``n_cells``.
    """
    probs = np.asarray(probs, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.float32)
    names = list(classes.names) if isinstance(classes, ClassList) else list(classes)
    if probs.shape != labels.shape or probs.ndim != 2:
        raise ValueError(f"probs {probs.shape} and labels {labels.shape} must both be (N, K)")
    k = probs.shape[1]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for {k} probability columns")
    thr = np.broadcast_to(np.asarray(thresholds, dtype=np.float32), (k,))
    truth = labels > 0.5
    pred = probs >= thr[None, :]
    tp, fp, fn = _counts(pred, truth)
    f1 = _f1(tp, fp, fn)
    prec = np.divide(tp, tp + fp, out=np.zeros(k), where=(tp + fp) > 0)
    rec = np.divide(tp, tp + fn, out=np.zeros(k), where=(tp + fn) > 0)
    support = truth.sum(axis=0)
    if eval_classes is None:
        eval_classes = [j for j in range(k) if support[j] > 0]
    eval_classes = sorted(int(j) for j in eval_classes)
    macro = float(np.mean(f1[eval_classes])) if eval_classes else float("nan")
    ev = np.zeros(k, bool)
    ev[eval_classes] = True
    micro = float(_f1(tp[ev].sum(), fp[ev].sum(), fn[ev].sum())) if ev.any() else float("nan")
    true_main, pred_main = main_location(probs, labels)
    lab = true_main >= 0
    conf = np.zeros((k, k), dtype=np.int64)
    np.add.at(conf, (true_main[lab], pred_main[lab]), 1)
    per_class = [
        {
            "index": j,
            "name": names[j],
            "precision": float(prec[j]),
            "recall": float(rec[j]),
            "f1": float(f1[j]),
            "support": int(support[j]),
            "threshold": float(thr[j]),
            "evaluated": bool(ev[j]),
        }
        for j in range(k)
    ]
    return {
        "classes": names,
        "per_class": per_class,
        "macro_f1": macro,
        "micro_f1": micro,
        "eval_classes": eval_classes,
        "eval_class_names": [names[j] for j in eval_classes],
        "confusion": conf.tolist(),
        "main_accuracy": float(np.mean(true_main[lab] == pred_main[lab])) if lab.any() else 0.0,
        "exact_match": float(np.mean((pred == truth).all(axis=1))) if len(probs) else 0.0,
        "n_cells": int(len(probs)),
    }


def macro_f1(probs: np.ndarray, labels: np.ndarray, thresholds, eval_classes) -> float:
    """Macro-F1 over ``eval_classes`` (a fast path used during training)."""
    thr = np.broadcast_to(np.asarray(thresholds, dtype=np.float32), (probs.shape[1],))
    pred = probs >= thr[None, :]
    tp, fp, fn = _counts(pred, np.asarray(labels) > 0.5)
    f1 = _f1(tp, fp, fn)
    return float(np.mean(f1[list(eval_classes)])) if len(eval_classes) else float("nan")
