"""Instance-segmentation accuracy: match two label images at an IoU threshold.

Definitions follow StarDist (``stardist.matching``): a true positive is a pair of
objects (truth, prediction) matched one-to-one with IoU above the threshold; average
precision is ``tp / (tp + fp + fn)``; ``mean_matched_iou`` is the mean IoU of the
matched pairs.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def _overlaps(truth: np.ndarray, pred: np.ndarray):
    """Sparse overlap table: (truth id, pred id, pixel count) for every touching pair,
    and the object areas."""
    t = truth.ravel().astype(np.int64, copy=False)
    p = pred.ravel().astype(np.int64, copy=False)
    both = (t > 0) & (p > 0)
    stride = int(p.max()) + 1 if p.size else 1
    keys, counts = np.unique(t[both] * stride + p[both], return_counts=True)
    area_t = np.bincount(t, minlength=1)
    area_p = np.bincount(p, minlength=1)
    return keys // stride, keys % stride, counts, area_t, area_p


def match_labels(truth: np.ndarray, pred: np.ndarray, *, iou: float = 0.5) -> dict:
    """Match predicted objects to true objects at an IoU threshold.

    Parameters
    ----------
    truth, pred : ndarray (Y, X) or any shape, integer
        Label images (0 = background); ids need not be consecutive.
    iou : float
        A pair counts as a match when its IoU is ``>= iou`` (for ``iou >= 0.5`` a
        match is necessarily unique; below it, pairs are assigned one-to-one by
        maximum total IoU, as StarDist does).

    Returns
    -------
    dict
        ``n_true``, ``n_pred``, ``tp``, ``fp``, ``fn``, ``precision``, ``recall``,
        ``f1``, ``ap`` (= tp / (tp + fp + fn)), ``mean_matched_iou``.
    """
    truth = np.asarray(truth)
    pred = np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"match_labels: shapes differ, truth {truth.shape} vs pred {pred.shape}")
    if not 0 < iou <= 1:
        raise ValueError(f"match_labels: iou must be in (0, 1], got {iou}")
    ti, pi, inter, area_t, area_p = _overlaps(truth, pred)
    n_true = int(np.count_nonzero(area_t[1:]))
    n_pred = int(np.count_nonzero(area_p[1:]))
    union = area_t[ti] + area_p[pi] - inter
    scores = inter / np.maximum(union, 1)
    ok = scores >= iou
    ti, pi, scores = ti[ok], pi[ok], scores[ok]
    if iou < 0.5 and scores.size:
        # Several candidates per object are possible: one-to-one by max total IoU.
        ut, it = np.unique(ti, return_inverse=True)
        up, ip = np.unique(pi, return_inverse=True)
        cost = np.zeros((ut.size, up.size))
        cost[it, ip] = scores
        rows, cols = linear_sum_assignment(-cost)
        matched = cost[rows, cols]
        matched = matched[matched >= iou]
    else:
        matched = scores
    tp = int(matched.size)
    fp, fn = n_pred - tp, n_true - tp
    return {
        "n_true": n_true,
        "n_pred": n_pred,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": tp / n_pred if n_pred else 0.0,
        "recall": tp / n_true if n_true else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0,
        "ap": tp / (tp + fp + fn) if (tp + fp + fn) else 1.0,
        "mean_matched_iou": float(matched.mean()) if tp else 0.0,
    }
