"""Training report: loss/F1 curves, per-class F1 bars, confusion matrix, metrics.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from locatlas.atomic import atomic_path, write_text

# PNG metadata without the matplotlib version, so reruns give the same bytes.
_PNG_META = {"Software": None}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata=_PNG_META)
    _plt().close(fig)
    return path


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def plot_curves(history: dict, path: Path) -> Path:
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    ep = np.arange(1, len(history.get("train_loss", [])) + 1)
    ax1.plot(ep, history.get("train_loss", []), label="train (classification + ArcFace)")
    if history.get("val_loss"):
        ax1.plot(ep, history["val_loss"], label="validation (classification)")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    if history.get("val_macro_f1"):
        ax2.plot(ep, history["val_macro_f1"], color="C2")
        best = history.get("best_epoch")
        if best:
            ax2.axvline(best, color="grey", ls="--", lw=0.8)
    ax2.set_ylim(0, 1)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation macro-F1")
    fig.tight_layout()
    return _save(fig, path)


def plot_per_class_f1(evaluation: dict, path: Path) -> Path:
    plt = _plt()
    rows = [r for r in evaluation["per_class"] if r["evaluated"]]
    fig, ax = plt.subplots(figsize=(max(4, 0.35 * len(rows) + 2), 3.8))
    x = np.arange(len(rows))
    ax.bar(x, [r["f1"] for r in rows], color="C0")
    ax.set_xticks(x, [f"{r['name']} ({r['support']})" for r in rows], rotation=60, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1")
    ax.set_title(f"per-class F1, macro-F1 = {evaluation['macro_f1']:.3f}")
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion(evaluation: dict, path: Path) -> Path:
    plt = _plt()
    idx = evaluation["eval_classes"]
    conf = np.asarray(evaluation["confusion"])[np.ix_(idx, idx)]
    names = [evaluation["classes"][j] for j in idx]
    norm = conf / np.maximum(conf.sum(axis=1, keepdims=True), 1)
    n = len(idx)
    fig, ax = plt.subplots(figsize=(0.45 * n + 3, 0.45 * n + 2.5))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            if conf[i, j]:
                ax.text(j, i, str(conf[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")  # fmt: skip
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted main location")
    ax.set_ylabel("true main location")
    fig.tight_layout()
    return _save(fig, path)


def write_training_report(
    history: dict, evaluation: dict | None, out_dir: str | os.PathLike, *, extra: dict | None = None
) -> dict[str, Path]:
    """Write the training report into ``out_dir``.

    Parameters
    ----------
    history : the ``history`` dict of :func:`train_model`'s info (per-epoch
        ``train_loss``, ``val_loss``, ``val_macro_f1``, ``best_epoch``).
    evaluation : a dict from :func:`evaluate_predictions` (validation or test), or
        None (then only the curves and metrics.json are written).
    extra : more JSON-able entries for metrics.json (thresholds, split, timings).

    Returns
    -------
    Paths of ``curves.png``, ``per_class_f1.png``, ``confusion.png``, ``metrics.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"curves": plot_curves(history, out / "curves.png")}
    if evaluation:  # None when training had no validation split
        paths["per_class_f1"] = plot_per_class_f1(evaluation, out / "per_class_f1.png")
        paths["confusion"] = plot_confusion(evaluation, out / "confusion.png")
    metrics = {"history": history, "evaluation": evaluation, **(extra or {})}
    text = json.dumps(metrics, indent=2, sort_keys=True, default=_json_default)
    paths["metrics"] = write_text(text + "\n", out / "metrics.json")
    return paths
