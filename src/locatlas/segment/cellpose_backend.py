"""Optional Cellpose backend (``SegmentParams(backend="cellpose", cellpose_model=PATH)``).

Cellpose is imported lazily and only models given by a local file path are used:
this module never lets Cellpose fall back to (and download) a built-in model.
Tested with Cellpose 3.1.1.3 (which needs no torchvision); keep it out of the main
environment, as it pins numpy down.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._scale import relabel_sequential
from .params import SegmentParams


class CellposeUnavailable(ImportError):
    """Cellpose is not importable in this environment."""


def _import_models():
    try:
        from cellpose import models
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise CellposeUnavailable(
            "SegmentParams(backend='cellpose') needs the 'cellpose' package (3.1.x, no "
            "torchvision) importable; it is not installed here. Install it in its own "
            "environment (it pins numpy < 2.1) or use backend='classic'."
        ) from exc
    return models


@functools.lru_cache(maxsize=4)
def _load_model(path: str):
    models = _import_models()
    import torch

    return models.CellposeModel(gpu=bool(torch.cuda.is_available()), pretrained_model=path)


def _model_path(path: str | None, what: str) -> str:
    if not path:
        raise ValueError(f"cellpose backend: no {what} model path given")
    p = Path(path).expanduser()
    if not p.is_file():
        # Cellpose would silently download its default model for a missing path.
        raise FileNotFoundError(f"cellpose backend: {what} model file not found: {p}")
    return str(p.resolve())


def pair_cells_with_nuclei(
    nuclei: np.ndarray, cells: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Make independently segmented nuclei and cells consistent.

    Each candidate cell is given the nucleus that overlaps it most (among nuclei whose
    largest overlap is that cell); the cell then contains all of that nucleus. Nuclei
    left without a cell get a cell equal to the nucleus; cells without a nucleus are
    dropped and counted.

    Parameters
    ----------
    nuclei, cells : ndarray (Y, X) int
        Nucleus and cell-candidate labels (ids arbitrary, 0 = background).

    Returns
    -------
    nuclei, cells : ndarray (Y, X) int32
        Relabelled so that cell ``k`` contains nucleus ``k``, ids 1..n.
    info : dict
        ``n_orphan_regions`` (cells without a nucleus), ``orphan_area_fraction``.
    """
    nuclei = np.asarray(nuclei)
    cells = np.asarray(cells)
    if nuclei.shape != cells.shape:
        raise ValueError(f"pair_cells_with_nuclei: shapes differ {nuclei.shape} vs {cells.shape}")
    nuclei, _ = relabel_sequential(nuclei.astype(np.int64, copy=False))
    cells_c, _ = relabel_sequential(cells.astype(np.int64, copy=False))
    n, m = int(nuclei.max()), int(cells_c.max())
    both = (nuclei > 0) & (cells_c > 0)
    key = nuclei[both].astype(np.int64) * (m + 1) + cells_c[both]
    pairs, overlap = np.unique(key, return_counts=True)
    nuc_of_pair, cell_of_pair = pairs // (m + 1), pairs % (m + 1)
    # Each nucleus votes for the cell it overlaps most; each cell keeps its best voter.
    best_cell = np.zeros(n + 1, np.int64)
    order = np.lexsort((-overlap, nuc_of_pair))
    if order.size:
        first = np.r_[True, nuc_of_pair[order][1:] != nuc_of_pair[order][:-1]]
        best_cell[nuc_of_pair[order][first]] = cell_of_pair[order][first]
    owner = np.zeros(m + 1, np.int64)  # nucleus that owns each candidate cell
    best_overlap = np.zeros(m + 1, np.int64)
    for nuc, cell, ov in zip(nuc_of_pair, cell_of_pair, overlap, strict=True):
        if best_cell[nuc] == cell and ov > best_overlap[cell]:
            owner[cell], best_overlap[cell] = nuc, ov
    out_cells = owner[cells_c].astype(np.int32)
    out_cells = np.where(nuclei > 0, nuclei, out_cells).astype(np.int32)
    orphan = (cells_c > 0) & (owner[cells_c] == 0)
    fg = int(np.count_nonzero(cells_c))
    info = {
        "n_orphan_regions": int(np.count_nonzero(owner[1:] == 0)),
        "orphan_area_fraction": float(np.count_nonzero(orphan) / fg) if fg else 0.0,
    }
    return nuclei.astype(np.int32), out_cells, info


def cellpose_segment(
    image: np.ndarray,
    *,
    roles: Sequence[str],
    pixel_size_um: float,
    params: SegmentParams,
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Segment nuclei (and optionally cells) of a (C, Y, X) field with Cellpose.

    Returns full-resolution nuclei, cells (``None`` without ``cellpose_cell_model``:
    the caller grows them classically) and an info dict.
    """
    nuc_path = _model_path(params.cellpose_model, "nucleus")
    roles = list(roles)
    dna = np.asarray(image[roles.index("nucleus")], dtype=np.float32)
    model = _load_model(nuc_path)
    diameter = params.nucleus_diameter_um / pixel_size_um
    masks = model.eval(dna, channels=[0, 0], diameter=diameter)[0]
    nuclei, _ = relabel_sequential(np.asarray(masks, dtype=np.int64))
    info: dict = {"threshold": float("nan"), "backend": "cellpose"}
    if not params.cellpose_cell_model:
        return nuclei.astype(np.int32), None, info
    cell_path = _model_path(params.cellpose_cell_model, "cell")
    cyto_roles = [r for r in ("microtubules", "er", "protein") if r in roles]
    if not cyto_roles:
        return nuclei.astype(np.int32), None, info
    cyto = np.mean([np.asarray(image[roles.index(r)], np.float32) for r in cyto_roles], axis=0)
    cell_model = _load_model(cell_path)
    cell_diameter = 2.5 * params.nucleus_diameter_um / pixel_size_um
    cand = cell_model.eval(
        np.stack([cyto, dna], axis=-1), channels=[1, 2], channel_axis=-1, diameter=cell_diameter
    )[0]
    nuclei, cells, pair_info = pair_cells_with_nuclei(nuclei, np.asarray(cand))
    info["cell_info"] = pair_info
    return nuclei, cells, info
