"""Atlas figures (PNG), drawn with matplotlib's object API (no pyplot state).

Every function takes plain arrays/tables and a path, writes the PNG atomically and
returns the path. Colours: categorical palette ``tab20``; images use the HPA
convention (protein green, microtubules red, nucleus blue, ER yellow).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from locatlas.atomic import atomic_path
from locatlas.classes import ClassList

_DPI = 100


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=_DPI, metadata={"Software": None})
    return path


def _palette(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [cmap(i % 20) for i in range(n)]


def map_scatter(
    coords: np.ndarray,
    labels: Sequence[str] | np.ndarray,
    path: str | os.PathLike,
    *,
    title: str,
    max_points: int = 50_000,
    max_legend: int = 15,
    seed: int = 0,
    xlabel: str = "UMAP 1",
    ylabel: str = "UMAP 2",
) -> Path:
    """Scatter of a 2-D map coloured by a categorical label (largest groups in the legend)."""
    coords = np.asarray(coords, np.float32)
    labels = np.asarray(labels, dtype=object).astype(str)
    n = len(coords)
    idx = np.arange(n)
    if n > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
    counts = pd.Series(labels[idx]).value_counts(sort=True)
    shown = list(counts.index[:max_legend])
    fig = Figure(figsize=(7.5, 6))
    ax = fig.add_subplot()
    size = float(np.clip(3000 / max(len(idx), 1), 0.5, 12))
    other = ~np.isin(labels[idx], shown)
    if other.any():
        ax.scatter(*coords[idx[other]].T, s=size, c="lightgrey", lw=0, label="other")
    for lab, col in zip(shown, _palette(len(shown)), strict=True):
        m = labels[idx] == lab
        ax.scatter(*coords[idx[m]].T, s=size, color=col, lw=0, label=f"{lab} ({m.sum()})")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(
        fontsize=7, markerscale=max(1.0, 6 / size), loc="center left", bbox_to_anchor=(1, 0.5)
    )
    fig.tight_layout()
    return _save(fig, path)


def timecourse_figure(
    timecourse: pd.DataFrame,
    alerts: pd.DataFrame,
    path: str | os.PathLike,
    *,
    classes: ClassList,
    n_max: int = 12,
) -> Path:
    """Fractions over time of the changed classes for the strongest cell-line alerts.

    ``timecourse``: cell-line level rows with ``frac_<slug>``; ``alerts``: from
    :func:`locatlas.aggregate.timecourse.alerts_table`. The dashed line marks the onset.
    """
    a = alerts[alerts["level"] == "cell_line"]
    a = a.reindex(a["effect"].abs().sort_values(ascending=False, kind="stable").index)
    a = a.drop_duplicates(["protein", "cell_line"]).head(n_max)
    k = max(len(a), 1)
    ncol = min(4, k)
    nrow = (k + ncol - 1) // ncol
    fig = Figure(figsize=(3.2 * ncol, 2.6 * nrow))
    if len(a) == 0:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no significant changes", ha="center", va="center")
        ax.set_axis_off()
        return _save(fig, path)
    for i, (_, r) in enumerate(a.iterrows()):
        ax = fig.add_subplot(nrow, ncol, i + 1)
        s = timecourse[
            (timecourse["protein"] == r["protein"]) & (timecourse["cell_line"] == r["cell_line"])
        ].sort_values("timepoint")
        for slug in [r["location"], r.get("partner", "")]:
            if slug:
                ax.plot(s["timepoint"], s[f"frac_{slug}"], marker="o", ms=3, label=slug)
        ax.axvline(r["onset"] - 0.5, ls="--", c="k", lw=0.8)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{r['protein']} / {r['cell_line']}", fontsize=8)
        ax.set_xlabel("time point", fontsize=7)
        ax.set_ylabel("fraction of cells", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6)
    # fixed spacing: tight_layout is slow on many small axes
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.1, top=0.92, wspace=0.4, hspace=0.7)
    return _save(fig, path)


def confusion_figure(
    matrix: np.ndarray, path: str | os.PathLike, *, classes: ClassList, title: str
) -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: predicted top class).

    Only classes with true or predicted cells are shown.
    """
    m = np.asarray(matrix, np.float64)
    keep = np.flatnonzero((m.sum(0) + m.sum(1)) > 0)
    sub = m[np.ix_(keep, keep)]
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = sub / sub.sum(1, keepdims=True)
    k = len(keep)
    fig = Figure(figsize=(max(4.0, 0.32 * k + 2.5), max(3.5, 0.32 * k + 2)))
    ax = fig.add_subplot()
    im = ax.imshow(np.nan_to_num(norm), vmin=0, vmax=1, cmap="Blues")
    names = [classes.names[i] for i in keep]
    ax.set_xticks(range(k), names, rotation=90, fontsize=7)
    ax.set_yticks(range(k), names, fontsize=7)
    ax.set_xlabel("predicted (most probable class)")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of true-class cells")
    fig.tight_layout()
    return _save(fig, path)


def cycle_figure(
    histograms: list[tuple[str, np.ndarray, np.ndarray, float]],
    curves: list[tuple[str, np.ndarray, np.ndarray]],
    path: str | os.PathLike,
) -> Path:
    """Left: log2 DNA-content histograms with their G1 peaks; right: mean centred
    log2 intensity per cycle-position bin for the strongest cycle-dependent proteins.

    ``histograms``: (label, log2 bin centres, counts, log2 G1 peak);
    ``curves``: (label, bin centres, mean centred log intensity).
    """
    fig = Figure(figsize=(11, 4))
    ax = fig.add_subplot(1, 2, 1)
    for lab, x, h, peak in histograms[:8]:
        ax.plot(x - peak, h / max(h.sum(), 1), lw=1, label=lab)
    ax.axvline(0, c="k", ls="--", lw=0.8)
    ax.axvline(1, c="k", ls=":", lw=0.8)
    ax.set_xlim(-1, 2)
    ax.set_xlabel("log2 DNA content relative to G1 peak (0 = G1, 1 = G2)")
    ax.set_ylabel("fraction of cells")
    ax.legend(fontsize=6)
    ax2 = fig.add_subplot(1, 2, 2)
    for lab, x, m in curves[:10]:
        ax2.plot(x, m / np.log(2), marker="o", ms=3, lw=1, label=lab)
    ax2.set_xlabel("cell-cycle position (0 = G1, 1 = G2/M)")
    ax2.set_ylabel("mean log2 intensity (centred)")
    if curves:
        ax2.legend(fontsize=6)
    else:
        ax2.text(0.5, 0.5, "no cycle-dependent protein", ha="center", transform=ax2.transAxes)
    fig.tight_layout()
    return _save(fig, path)


def variability_figure(var: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Intensity SD ratio vs spatial minority fraction per protein x cell line, by flag."""
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    vi = var["variable_intensity"].fillna(False).to_numpy(bool)
    vs = var["variable_spatial"].fillna(False).to_numpy(bool)
    x = var["int_sd_ratio"].to_numpy(np.float64)
    y = var["spatial_score"].to_numpy(np.float64)
    for m, lab, col in (
        (~vi & ~vs, "not variable", "lightgrey"),
        (vi & ~vs, "intensity", "tab:red"),
        (~vi & vs, "spatial", "tab:blue"),
        (vi & vs, "both", "tab:purple"),
    ):
        if m.any():
            ax.scatter(x[m], y[m], s=12, c=col, label=f"{lab} ({m.sum()})")
    ax.set_xlabel("SD of log intensity / typical SD")
    ax.set_ylabel("largest minority fraction (spatial)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def concordance_figure(per_class: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Per-class F1 of the calls against the reference (classes with support)."""
    d = per_class[per_class["support"] > 0]
    fig = Figure(figsize=(max(5, 0.3 * len(d) + 2), 4))
    ax = fig.add_subplot()
    ax.bar(range(len(d)), d["f1"].fillna(0).to_numpy(), color="tab:green")
    ax.set_xticks(range(len(d)), d["location"], rotation=90, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1 vs reference")
    fig.tight_layout()
    return _save(fig, path)


def _norm(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img, np.float64)
    hi = np.percentile(img, 99.5) if img.size else 1.0
    lo = np.percentile(img, 0.5) if img.size else 0.0
    return np.clip((img - lo) / max(hi - lo, 1e-9), 0, 1)


def composite(crop: np.ndarray, roles: Sequence[str]) -> np.ndarray:
    """``(C, S, S)`` crop -> ``(S, S, 3)`` RGB in [0, 1], HPA colours by role."""
    colours = {
        "protein": (0, 1, 0),
        "microtubules": (1, 0, 0),
        "nucleus": (0, 0, 1),
        "er": (0.5, 0.5, 0),  # half weight: ER would otherwise wash out red and green
    }
    rgb = np.zeros((*crop.shape[1:], 3))
    for c, role in enumerate(roles):
        if role in colours:
            rgb += _norm(crop[c])[..., None] * np.asarray(colours[role])[None, None, :]
    return np.clip(rgb, 0, 1)


def derived_masks(crop: np.ndarray, roles: Sequence[str]) -> np.ndarray:
    """Approximate ``(S, S)`` labels (1 cell, 2 nucleus) for overlays when no
    segmentation masks come with the crops: Otsu thresholds of the smoothed
    reference channels (cell) and nucleus channel, holes filled, specks removed."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    def mask(img: np.ndarray) -> np.ndarray:
        sm = ndi.gaussian_filter(img.astype(np.float64), 2.0)
        if np.ptp(sm) <= 0:
            return np.zeros(img.shape, bool)
        m = ndi.binary_fill_holes(sm > threshold_otsu(sm))
        lab, n = ndi.label(m)
        if n > 1:  # keep objects of at least 2 % of the crop
            sizes = ndi.sum(m, lab, range(1, n + 1))
            m = np.isin(lab, 1 + np.flatnonzero(sizes >= 0.02 * m.size))
        return m

    out = np.zeros(crop.shape[1:], np.uint8)
    ref = [c for c, r in enumerate(roles) if r != "protein"] or list(range(len(crop)))
    out[mask(crop[ref].astype(np.float64).sum(0))] = 1
    if "nucleus" in roles:
        out[mask(crop[list(roles).index("nucleus")])] = 2
    return out


def montage_figure(
    crops: np.ndarray,
    path: str | os.PathLike,
    *,
    roles: Sequence[str],
    masks: np.ndarray | None = None,
    titles: Sequence[str] | None = None,
    ncol: int = 8,
) -> Path:
    """QC montage of ``(N, C, S, S)`` crops with mask outlines.

    ``masks``: ``(N, S, S)`` integer labels (outlines of every label are drawn in
    white); when ``None`` approximate masks from :func:`derived_masks` are drawn.
    """
    from skimage.segmentation import find_boundaries

    n = len(crops)
    ncol = max(1, min(ncol, n))
    nrow = max(1, (n + ncol - 1) // ncol)
    fig = Figure(figsize=(1.6 * ncol, 1.75 * nrow))
    for i in range(n):
        ax = fig.add_subplot(nrow, ncol, i + 1)
        rgb = composite(crops[i], roles)
        m = masks[i] if masks is not None else derived_masks(crops[i], roles)
        edge = find_boundaries(np.asarray(m), mode="inner")
        rgb[edge] = (1.0, 1.0, 1.0)
        ax.imshow(rgb, interpolation="nearest")
        ax.set_axis_off()
        if titles is not None:
            ax.set_title("\n".join(t[:30] for t in str(titles[i]).split("\n")), fontsize=6)
    fig.tight_layout()
    return _save(fig, path)
