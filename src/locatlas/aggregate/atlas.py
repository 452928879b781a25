"""build_atlas: the whole aggregation, streamed over the per-shard tables.

Passes over the inputs (nothing holds all cells in memory):

1. *Count* (4 narrow columns): usable cells per protein x cell line, which fixes the
   sampling rates below.
2. *Main* (cells + localization, batch by batch): group sums per protein x cell line
   x plate x well x time point (profiles, variability, time courses), log2 histograms
   of DNA content and nuclear area per cell line x plate (G1 peaks), cell-label
   confusion counts, and three reproducible hash-based samples: up to
   ``cycle_max_cells`` cells per protein x cell line (cycle test), up to
   ``map_sample_per_protein`` per protein (map fit, with their embedding rows) and
   up to ``h5ad_max_cells`` atlas cells overall (cells.h5ad).
3. *Maps*: fit on the map sample, then applied to the cells.h5ad cells shard by
   shard from the memory-mapped embeddings (read a second time when streaming
   ``X_embedding`` into the file).

Memory: one record batch + the group sums + the samples (bounded by the caps).
"""

from __future__ import annotations

import json
import logging
import math
import resource
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from pandas.api.types import union_categoricals

from locatlas import ROLES
from locatlas.aggregate import figures as figs
from locatlas.aggregate.anndata_out import OBS_COLUMNS, write_cells_h5ad
from locatlas.aggregate.cellcycle import (
    Log2Histogram,
    binned_means,
    cycle_dependence,
    cycle_phase,
    cycle_position,
    marker_position,
)
from locatlas.aggregate.concordance import concordance, parse_locations, read_reference
from locatlas.aggregate.evaluation import cell_level_metrics, evaluate_truth, read_truth
from locatlas.aggregate.maps import CellMap, fit_cell_map, fit_clusters, protein_map
from locatlas.aggregate.params import AggregateParams
from locatlas.aggregate.profiles import (
    GroupAccumulator,
    called_matrix,
    profile_table,
    top_matrix,
)
from locatlas.aggregate.report import render_report
from locatlas.aggregate.tables import (
    OPTIONAL_CELL_COLUMNS,
    REQUIRED_CELL_COLUMNS,
    AggregateInputError,
    ShardInput,
    cell_uniform,
    check_shard,
    iter_columns,
    iter_shard,
    make_shard_inputs,
    open_embeddings,
    usable_mask,
)
from locatlas.aggregate.timecourse import alerts_table, change_summary, detect_changes
from locatlas.aggregate.variability import variability_table
from locatlas.atomic import write_parquet, write_text
from locatlas.classes import ClassList

log = logging.getLogger(__name__)


def _stage(name: str) -> None:
    """Log a stage with the process's peak RSS so far (MB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    log.info("aggregate: %s (peak RSS so far %.0f MB)", name, peak)


_SALT_CYCLE, _SALT_MAP, _SALT_H5AD, _SALT_MONTAGE = 11, 23, 37, 41


def threshold_vector(
    classes: ClassList, thresholds: dict[str, float] | None, default: float
) -> np.ndarray:
    """Per-class decision thresholds in class order (``default`` where missing).

    Raises
    ------
    ValueError
        For a key that is not a class slug or name, or a value outside [0, 1].
    """
    thr = np.full(len(classes), float(default))
    for k, v in (thresholds or {}).items():
        try:
            j = classes.index(k)
        except ValueError as exc:
            raise ValueError(f"threshold for unknown class {k!r}") from exc
        if not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"threshold for {k!r} must be in [0, 1], got {v}")
        thr[j] = float(v)
    return thr


def _oversampled_rate(k: float, n: float) -> float:
    """Bernoulli rate that yields at least ``k`` of ``n`` items with high probability."""
    if n <= 0:
        return 0.0
    return min(1.0, (k + 4.0 * math.sqrt(k) + 10.0) / n)


def _bottom_k(frame: pd.DataFrame, by: list[str], k: int, u: str = "_u") -> pd.DataFrame:
    """Keep the ``k`` rows with the smallest ``u`` per group, in original order."""
    if len(frame) == 0:
        return frame
    if frame.groupby(by, sort=False, observed=True).size().max() <= k:
        return frame  # no group over its cap
    rank = frame.groupby(by, sort=False, observed=True)[u].rank(method="first")
    return frame[rank.to_numpy() <= k]


def _take(col: pd.Series, sel: np.ndarray):
    """Rows ``sel`` of a column: a Categorical for categoricals, else a numpy array."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        return col.array[sel]
    return col.to_numpy()[sel]


def _concat(parts: list[dict]) -> pd.DataFrame:
    """Concatenate per-batch column dicts into one frame, consuming ``parts``.

    Categoricals are unioned (not turned into object arrays) and each column is
    removed from the parts as soon as it is joined, so the peak is one copy of the
    data plus one column.
    """
    if not parts:
        return pd.DataFrame()
    out = {}
    for c in list(parts[0]):
        vals = [part.pop(c) for part in parts]
        if isinstance(vals[0], pd.Categorical):
            out[c] = union_categoricals(vals, ignore_order=True)
        else:
            out[c] = np.concatenate(vals)
        del vals
    parts.clear()
    return pd.DataFrame(out, copy=False)


class _LabelParser:
    """Per-cell label sets from the ';'-joined ``labels`` column (cached per string)."""

    def __init__(self, classes: ClassList):
        self.classes = classes
        self._cache: dict[str, np.ndarray] = {}

    def membership(self, col: pd.Series) -> np.ndarray:
        c = len(self.classes)
        cat = col if isinstance(col.dtype, pd.CategoricalDtype) else col.astype("category")
        mats = np.zeros((len(cat.cat.categories) + 1, c), bool)
        for i, s in enumerate(cat.cat.categories.astype(str)):
            if s not in self._cache:
                row = np.zeros(c, bool)
                try:
                    row[list(parse_locations(s, self.classes))] = True
                except ValueError:
                    row[:] = False  # unparseable label strings count as unlabelled
                self._cache[s] = row
            mats[i] = self._cache[s]
        codes = cat.cat.codes.to_numpy()
        return mats[np.where(codes < 0, len(mats) - 1, codes)]


class _MainPass:
    """State of the main streaming pass."""

    def __init__(
        self,
        *,
        classes: ClassList,
        thr: np.ndarray,
        p: AggregateParams,
        pc_counts: dict[tuple[str, str], int],
        protein_counts: dict[str, int],
        n_usable: int,
        want_maps: bool,
    ):
        self.classes = classes
        self.thr = thr
        self.p = p
        self.groups = GroupAccumulator(len(classes))
        self.dna_hist = Log2Histogram()
        self.area_hist = Log2Histogram()
        self.labels = _LabelParser(classes)
        c = len(classes)
        self.confusion = np.zeros((c, c), np.int64)
        self.tp = np.zeros(c, np.int64)
        self.fp = np.zeros(c, np.int64)
        self.fn = np.zeros(c, np.int64)
        self.has_labels = False
        self.cycle_rate = {k: _oversampled_rate(p.cycle_max_cells, n) for k, n in pc_counts.items()}
        n_prot = max(len(protein_counts), 1)
        quota = p.map_sample_per_protein
        if n_prot * quota > p.map_max_fit_cells:
            quota = max(1, p.map_max_fit_cells // n_prot)
        self.map_quota = quota
        self.map_rate = {k: _oversampled_rate(quota, n) for k, n in protein_counts.items()}
        self.want_maps = want_maps
        self.h5ad_rate = _oversampled_rate(p.h5ad_max_cells, n_usable)
        if p.h5ad_max_cells >= n_usable:
            self.h5ad_rate = 1.0
        self.cycle_parts: list[dict] = []
        self.map_parts: list[dict] = []
        self.map_features: list[np.ndarray] = []
        self.h5_parts: list[dict] = []
        self.h5_probs: list[np.ndarray] = []
        self.n_rows = 0
        self.n_usable = 0
        self.emb_dim: int | None = None

    def _rates(self, cells: pd.DataFrame, table: dict, keys: list[str]) -> np.ndarray:
        """Per-row sampling rate looked up by the row's key (categorical-fast)."""
        if len(keys) == 1:
            col = cells[keys[0]]
            cats = col.cat.categories.astype(str)
            r = np.array([table.get(str(k), 0.0) for k in cats] + [0.0])
            codes = col.cat.codes.to_numpy()
            return r[np.where(codes < 0, len(cats), codes)]
        a, b = cells[keys[0]], cells[keys[1]]
        ca, cb = a.cat.categories.astype(str), b.cat.categories.astype(str)
        r = np.zeros((len(ca) + 1, len(cb) + 1))
        for i, x in enumerate(ca):
            for j, y in enumerate(cb):
                r[i, j] = table.get((x, y), 0.0)
        ia, ib = a.cat.codes.to_numpy(), b.cat.codes.to_numpy()
        return r[np.where(ia < 0, len(ca), ia), np.where(ib < 0, len(cb), ib)]

    def add(self, batch, shard: ShardInput, emb: np.ndarray | None) -> None:
        p = self.p
        cells = batch.cells
        for k in ("protein", "cell_line", "plate", "well"):
            if not isinstance(cells[k].dtype, pd.CategoricalDtype):
                cells[k] = cells[k].astype(str).astype("category")
        probs = batch.probs
        n = len(cells)
        self.n_rows += n
        has_loc = ~np.isnan(probs).any(axis=1)
        usable = usable_mask(cells, use_qc=p.use_qc, drop_edge=p.drop_edge) & has_loc
        self.n_usable += int(usable.sum())
        qc_fail = (
            ~cells["qc_pass"].fillna(False).to_numpy(bool)
            if "qc_pass" in cells
            else np.zeros(n, bool)
        )
        edge = cells["edge"].fillna(False).to_numpy(bool) if "edge" in cells else np.zeros(n, bool)
        called = called_matrix(probs, self.thr)
        top = top_matrix(probs)
        if p.intensity_column in cells:
            inten = cells[p.intensity_column].to_numpy(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                logint = np.where(inten > 0, np.log(inten), np.nan)
        else:
            logint = np.full(n, np.nan)
        gid = self.groups.group_ids(cells)
        self.groups.add(
            gid,
            usable=usable,
            qc_fail=qc_fail,
            edge=edge,
            probs=probs,
            called=called,
            top=top,
            logint=logint,
        )
        dna = (
            cells["nucleus_integrated"].to_numpy(np.float64)
            if "nucleus_integrated" in cells
            else np.full(n, np.nan)
        )
        area = (
            cells["nucleus_area_um2"].to_numpy(np.float64)
            if "nucleus_area_um2" in cells
            else np.full(n, np.nan)
        )
        hkeys = cells.loc[usable, ["cell_line", "plate"]]
        self.dna_hist.add(hkeys, dna[usable])
        self.area_hist.add(hkeys, area[usable])
        # cell labels -> confusion and per-class counts
        if "labels" in cells:
            lab = self.labels.membership(cells["labels"])
            labelled = usable & lab.any(axis=1)
            if labelled.any():
                self.has_labels = True
                lab_u, called_u = lab[labelled], called[labelled]
                self.tp += (lab_u & called_u).sum(0)
                self.fp += (~lab_u & called_u).sum(0)
                self.fn += (lab_u & ~called_u).sum(0)
                single = lab_u.sum(1) == 1
                t_idx = np.argmax(lab_u[single], axis=1)
                p_idx = np.argmax(top[labelled][single], axis=1)
                c = len(self.classes)
                self.confusion += np.bincount(t_idx * c + p_idx, minlength=c * c).reshape(c, c)
        # samples
        markers = p.cycle_marker_columns
        extra = {}
        if markers is not None and all(m in cells for m in markers):
            extra = {"_m1": cells[markers[0]].to_numpy(np.float64)}
            extra["_m2"] = cells[markers[1]].to_numpy(np.float64)
        u_c = cell_uniform(cells["field_id"], cells["cell_id"], p.seed * 1000 + _SALT_CYCLE)
        sel = usable & (u_c < self._rates(cells, self.cycle_rate, ["protein", "cell_line"]))
        if sel.any():
            part = {
                "protein": _take(cells["protein"], sel),
                "cell_line": _take(cells["cell_line"], sel),
                "plate": _take(cells["plate"], sel),
                "gid": gid[sel].astype(np.int32),
                "dna": dna[sel].astype(np.float32),
                "area": area[sel].astype(np.float32),
                "logint": logint[sel].astype(np.float32),
                "_u": u_c[sel],
                **{k: v[sel] for k, v in extra.items()},
            }
            self.cycle_parts.append(part)
        if self.want_maps:
            u_m = cell_uniform(cells["field_id"], cells["cell_id"], p.seed * 1000 + _SALT_MAP)
            sel = usable & (u_m < self._rates(cells, self.map_rate, ["protein"]))
            if sel.any():
                self.map_parts.append({"protein": _take(cells["protein"], sel), "_u": u_m[sel]})
                if emb is not None:
                    rows = batch.loc_row[sel]
                    order = np.argsort(rows, kind="stable")
                    feat = np.empty((len(rows), emb.shape[1]), np.float32)
                    feat[order] = emb[rows[order]]
                else:
                    feat = probs[sel].astype(np.float32)
                self.map_features.append(feat)
        u_h = cell_uniform(cells["field_id"], cells["cell_id"], p.seed * 1000 + _SALT_H5AD)
        sel = usable & (u_h < self.h5ad_rate)
        if sel.any():
            part = {}
            for c in OBS_COLUMNS:
                if c in cells:
                    col = cells[c]
                    if c in ("field_id", "plate", "well", "protein", "cell_line", "split"):
                        if not isinstance(col.dtype, pd.CategoricalDtype):
                            col = col.astype(str).astype("category")
                    part[c] = _take(col, sel)
            if p.intensity_column in cells:
                part["intensity"] = cells[p.intensity_column].to_numpy(np.float32)[sel]
            part["n_locations"] = called[sel].sum(1).astype(np.int16)
            part["shard"] = np.full(int(sel.sum()), shard.index, np.int32)
            part["_row"] = np.flatnonzero(sel).astype(np.int64) + batch.start
            part["_loc_row"] = batch.loc_row[sel]
            part["_u"] = u_h[sel]
            part["_dna"] = dna[sel].astype(np.float32)
            part["_area"] = area[sel].astype(np.float32)
            for k, v in extra.items():
                part[k] = v[sel]
            self.h5_parts.append(part)
            self.h5_probs.append(probs[sel].astype(np.float32))


def _count_pass(
    shards: Sequence[ShardInput], p: AggregateParams
) -> tuple[dict[tuple[str, str], int], dict[str, int], int]:
    pc: dict[tuple[str, str], int] = {}
    for s in shards:
        for df in iter_columns(s, ["protein", "cell_line", "qc_pass", "edge"], p.batch_rows):
            keep = usable_mask(df, use_qc=p.use_qc, drop_edge=p.drop_edge)
            g = df.loc[keep].groupby(["protein", "cell_line"], observed=True).size()
            for (a, b), n in g.items():
                pc[(str(a), str(b))] = pc.get((str(a), str(b)), 0) + int(n)
    per_protein: dict[str, int] = {}
    for (a, _), n in pc.items():
        per_protein[a] = per_protein.get(a, 0) + n
    return pc, per_protein, sum(pc.values())


def _peaks(hist: Log2Histogram) -> dict[tuple[str, ...], float]:
    return {k: hist.mode(k) for k in hist.keys()}


def _positions(
    frame: pd.DataFrame, dna_peaks: dict, area_peaks: dict, p: AggregateParams
) -> np.ndarray:
    """Cycle positions of sampled cells (``_dna``/``dna`` etc. columns)."""
    if len(frame) == 0:
        return np.zeros(0)
    line = frame["cell_line"].astype("category")
    plate = frame["plate"].astype("category")
    lc, pc = line.cat.codes.to_numpy(), plate.cat.codes.to_numpy()
    lines = [str(x) for x in line.cat.categories]
    plates = [str(x) for x in plate.cat.categories]
    if "_m1" in frame and "_m2" in frame:
        pos = np.full(len(frame), np.nan)
        combo = lc.astype(np.int64) * (len(plates) + 1) + pc
        order = np.argsort(combo, kind="stable")
        bounds = np.flatnonzero(np.diff(combo[order])) + 1
        m1, m2 = frame["_m1"].to_numpy(), frame["_m2"].to_numpy()
        for ii in np.split(order, bounds):
            pos[ii] = marker_position(m1[ii], m2[ii])
        return pos

    def table(peaks: dict) -> np.ndarray:
        t = np.full((len(lines) + 1, len(plates) + 1), np.nan)
        for i, a in enumerate(lines):
            for j, b in enumerate(plates):
                t[i, j] = peaks.get((a, b), np.nan)
        return t

    dna = frame["dna"] if "dna" in frame else frame["_dna"]
    area = frame["area"] if "area" in frame else frame["_area"]
    return cycle_position(
        dna.to_numpy(np.float64),
        area.to_numpy(np.float64),
        log2_dna_g1=table(dna_peaks)[lc, pc],
        log2_area_g1=table(area_peaks)[lc, pc],
        area_weight=p.cycle_area_weight,
        area_g2_ratio=p.cycle_area_g2_ratio,
    )


def _gather_rows(emb: np.ndarray, rows: np.ndarray) -> np.ndarray:
    order = np.argsort(rows, kind="stable")
    out = np.empty((len(rows), emb.shape[1]), np.float32)
    out[order] = emb[rows[order]]
    return out


def _feature_chunks(h5: pd.DataFrame, probs: np.ndarray, shards, use_emb: bool, chunk: int):
    """Yield ``(slice, features)`` for the cells.h5ad cells in file order."""
    n = len(h5)
    if not use_emb:
        for a in range(0, n, chunk):
            yield slice(a, min(n, a + chunk)), probs[a : a + chunk]
        return
    shard_col = h5["shard"].to_numpy()
    loc = h5["_loc_row"].to_numpy()
    bounds = np.flatnonzero(np.diff(shard_col)) + 1
    starts = np.concatenate([[0], bounds]) if n else np.zeros(0, int)
    ends = np.concatenate([bounds, [n]]) if n else np.zeros(0, int)
    for a0, b0 in zip(starts, ends, strict=True):
        emb = open_embeddings(shards[int(shard_col[a0])].embeddings)
        for a in range(int(a0), int(b0), chunk):
            b = min(int(b0), a + chunk)
            yield slice(a, b), _gather_rows(emb, loc[a:b])
        del emb


def _montage(
    h5: pd.DataFrame,
    crops_paths: Sequence[str],
    out: Path,
    roles: Sequence[str] | None,
    p: AggregateParams,
) -> Path | None:
    """QC montage: a few cells per most-probable location, read from the crop stores."""
    import zarr

    if len(h5) == 0:
        return None
    pick = h5.assign(_k=h5["_u"].rank(method="first"))
    pick = (
        pick.sort_values("_k", kind="stable")
        .groupby("top_location", observed=True)
        .head(p.montage_per_class)
    )
    pick = pick.sort_values(["top_location", "_k"], kind="stable").head(8 * p.montage_per_class)
    crops, masks, titles = [], [], []
    have_masks = True
    for _, r in pick.iterrows():
        path = crops_paths[int(r["shard"])]
        node = zarr.open(path, mode="r")
        if isinstance(node, zarr.Array):
            arr, marr = node, None
        else:
            arr = next((node[k] for k in ("crops", "images", "0") if k in node), None)
            marr = next((node[k] for k in ("masks", "labels") if k in node), None)
            if arr is None:
                raise AggregateInputError(f"{path}: no 'crops' array in the crop store")
        crops.append(np.asarray(arr[int(r["_row"])]))
        if marr is not None:
            masks.append(np.asarray(marr[int(r["_row"])]))
        else:
            have_masks = False
        titles.append(f"{r['protein']}\n{r['top_location']}")
    if not crops:
        return None
    stack = np.stack(crops)
    use_roles = list(roles) if roles is not None else list(ROLES[: stack.shape[1]])
    m = np.stack(masks) if have_masks and masks else None
    if m is not None and m.ndim == 4:
        m = m[:, -1]
    return figs.montage_figure(stack, out, roles=use_roles, masks=m, titles=titles)


def build_atlas(
    cells_paths: Sequence[str],
    localization_paths: Sequence[str],
    embedding_paths: Sequence[str],
    out_dir: str,
    *,
    classes: ClassList,
    thresholds: dict[str, float] | None,
    params: AggregateParams | dict | None,
    reference: str | None = None,
    truth_dir: str | None = None,
    extra_sections: list[dict] | None = None,
    crops_paths: Sequence[str] | None = None,
    crop_roles: Sequence[str] | None = None,
) -> dict[str, str]:
    """Aggregate per-shard cell and localization tables into the atlas.

    Parameters
    ----------
    cells_paths, localization_paths, embedding_paths
        Per-shard inputs in the same shard order (``results/cells/shard-*.parquet``,
        ``results/localization/shard-*.parquet``, ``...embeddings.npy`` with rows in
        localization order). ``embedding_paths`` may be empty: the maps then use the
        class probabilities as features and cells.h5ad has no ``X_embedding``.
    out_dir
        Output folder (``results/atlas``); created if needed.
    classes
        The class list (:func:`locatlas.classes.load_classes`).
    thresholds
        Per-class decision thresholds (slug or name -> probability); missing
        classes use ``params.default_threshold``.
    params
        :class:`AggregateParams` or the ``aggregate:`` config dict.
    reference
        Reference annotation table (HPA v18 ``Id,Target`` or ``gene,locations``).
    truth_dir
        Simulator truth folder (``proteins.csv``); adds a truth-recovery section.
    extra_sections
        Report sections from the workflow (see :mod:`locatlas.aggregate.report`).
    crops_paths, crop_roles
        Optional per-shard crop stores (zarr ``(N, C, S, S)`` array, or a group with
        ``crops`` and optional ``masks``; rows in cells-table order) for the QC
        montage, and the roles of their channels (default: :data:`locatlas.ROLES`).

    Returns
    -------
    dict
        Output name -> path: ``cells.h5ad``, ``proteins.parquet``,
        ``timecourse.parquet``, ``alerts.csv``, ``report.html``, ``evaluation.json``,
        ``figures/<name>.png`` and, with a reference, ``concordance_proteins.csv``
        and ``concordance_classes.csv``.

    Raises
    ------
    AggregateInputError
        For a missing or malformed input, naming the file.
    """
    p = AggregateParams.from_any(params)
    out = Path(out_dir)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    shards = make_shard_inputs(cells_paths, localization_paths, embedding_paths)
    if crops_paths is not None and len(crops_paths) != len(shards):
        raise AggregateInputError(f"{len(crops_paths)} crop stores for {len(shards)} shards")
    thr = threshold_vector(classes, thresholds, p.default_threshold)
    sizes, good, quarantined = [], [], []
    for s in shards:
        try:
            sizes.append(check_shard(s, classes.prob_columns))
            good.append(s)
        except AggregateInputError as exc:
            if not p.skip_bad_shards:
                raise
            log.warning("aggregate: quarantined shard %d: %s", s.index, exc)
            quarantined.append({"shard": s.index, "cells": s.cells, "reason": str(exc)})
    if not good:
        raise AggregateInputError("every shard was quarantined: " + str(quarantined))
    shards_all = shards
    shards = good
    use_emb = all(s.embeddings is not None for s in shards)
    outputs: dict[str, str] = {}

    # 1. count pass
    pc_counts, protein_counts, n_usable = _count_pass(shards, p)
    log.info("aggregate: %d shards, %d usable cells", len(shards), n_usable)

    # 2. main pass
    _stage("main pass")
    want_maps = p.map_method != "none"
    st = _MainPass(
        classes=classes,
        thr=thr,
        p=p,
        pc_counts=pc_counts,
        protein_counts=protein_counts,
        n_usable=n_usable,
        want_maps=want_maps,
    )
    cell_cols = [*REQUIRED_CELL_COLUMNS, *OPTIONAL_CELL_COLUMNS, p.intensity_column]
    if p.cycle_marker_columns:
        cell_cols += list(p.cycle_marker_columns)
        missing = [
            f"{s.cells}: {c}"
            for s in shards[:1]
            for c in p.cycle_marker_columns
            if c not in pq.read_schema(s.cells).names
        ]
        if missing:
            log.warning("cycle marker column(s) absent, using DNA content: %s", missing)
    for s in shards:
        emb = open_embeddings(s.embeddings) if (use_emb and want_maps) else None
        for batch in iter_shard(
            s, columns=cell_cols, prob_columns=classes.prob_columns, batch_rows=p.batch_rows
        ):
            st.add(batch, s, emb)
        if emb is not None:
            st.emb_dim = emb.shape[1]
        del emb
    sums = st.groups.to_frame(classes)
    if st.n_usable == 0:
        raise AggregateInputError("no usable cells (after QC and edge filters) in the inputs")

    # 3. statistics
    _stage("statistics")
    calls_kw = {
        "classes": classes,
        "call_min_fraction": p.call_min_fraction,
        "main_min_fraction": p.main_min_fraction,
        "min_cells": p.min_cells,
        "level": p.confidence_level,
    }
    proteins = profile_table(sums, ["protein", "cell_line"], **calls_kw)
    extent = (
        sums[sums["n_cells"] > 0]
        .groupby(["protein", "cell_line"], observed=True)
        .agg(
            n_timepoints=("timepoint", "nunique"),
            n_wells=("well", lambda s: s.nunique()),
            n_plates=("plate", "nunique"),
        )
        .reset_index()
    )
    proteins = proteins.merge(extent, on=["protein", "cell_line"], how="left")
    tc_line = profile_table(sums, ["protein", "cell_line", "timepoint"], **calls_kw)
    tc_line.insert(0, "level", "cell_line")
    tc_line.insert(3, "plate", "")
    tc_line.insert(4, "well", "")
    tc_well = profile_table(
        sums, ["protein", "cell_line", "plate", "well", "timepoint"], **calls_kw
    )
    tc_well.insert(0, "level", "well")
    timecourse = pd.concat([tc_line, tc_well], ignore_index=True)

    var = variability_table(
        sums,
        classes=classes,
        ratio=p.intensity_var_ratio,
        error_rate=p.spatial_error_rate,
        min_fraction=p.spatial_min_fraction,
        min_cells=p.min_cells,
        fdr=p.fdr,
    )
    proteins = proteins.merge(var, on=["protein", "cell_line"], how="left")

    dna_peaks = _peaks(st.dna_hist)
    area_peaks = _peaks(st.area_hist)
    cyc = _concat(st.cycle_parts)
    st.cycle_parts = []
    if len(cyc):
        cyc = _bottom_k(cyc, ["protein", "cell_line"], p.cycle_max_cells)
        n_int = sums["n_int"].to_numpy(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            gmean = sums["sum_int"].to_numpy() / n_int
        gmean_by_gid = np.full(st.groups.n_groups, np.nan)
        gmean_by_gid[sums["gid"].to_numpy()] = gmean
        cyc = cyc.assign(
            y=cyc["logint"].to_numpy(np.float64) - gmean_by_gid[cyc["gid"].to_numpy()],
            position=_positions(cyc, dna_peaks, area_peaks, p),
        )
        cycle = cycle_dependence(
            cyc[["protein", "cell_line", "position", "y"]],
            n_bins=p.cycle_bins,
            n_perm=p.cycle_permutations,
            min_cells=p.min_cells,
            min_effect=p.cycle_min_effect,
            fdr=p.fdr,
            seed=p.seed,
            base_n=p.cycle_max_cells,
        )
    else:
        cycle = cycle_dependence(
            pd.DataFrame(columns=["protein", "cell_line", "position", "y"]),
            n_bins=p.cycle_bins,
        )
    curves = []  # binned intensity along the cycle, for the figure
    top = cycle[cycle["cycle_dependent"]].sort_values("cycle_eta2", ascending=False).head(8)
    for _, r in top.iterrows():
        g = cyc[(cyc["protein"] == r["protein"]) & (cyc["cell_line"] == r["cell_line"])]
        x, mbin, _ = binned_means(g["y"].to_numpy(), g["position"].to_numpy(), p.cycle_bins)
        curves.append((f"{r['protein']} / {r['cell_line']}", x, mbin))
    del cyc
    proteins = _merge_str(proteins, cycle, ["protein", "cell_line"])

    changes = pd.concat(
        [
            detect_changes(
                sums,
                classes=classes,
                level=lvl,
                min_effect=p.change_min_effect,
                min_timepoints=p.change_min_timepoints,
                min_cells=p.min_cells,
                fdr=p.fdr,
            )
            for lvl in ("cell_line", "well")
        ],
        ignore_index=True,
    )
    alerts = alerts_table(changes)
    summary = change_summary(alerts)
    proteins = _merge_str(proteins, summary, ["protein", "cell_line"])
    proteins["time_change"] = proteins["time_change"].astype("boolean").fillna(False).astype(bool)

    # 4. maps
    _stage("maps")
    h5 = _concat(st.h5_parts)
    h5_probs = np.concatenate(st.h5_probs) if st.h5_probs else np.zeros((0, len(classes)))
    st.h5_parts, st.h5_probs = [], []
    if len(h5) > p.h5ad_max_cells:
        keep = (h5["_u"].rank(method="first") <= p.h5ad_max_cells).to_numpy()
        h5 = h5[keep].reset_index(drop=True)
        h5_probs = h5_probs[keep]
    pos = _positions(h5, dna_peaks, area_peaks, p)
    h5["cycle_position"] = pos.astype(np.float32)
    use_markers = "_m1" in h5 and "_m2" in h5
    h5["cycle_phase"] = pd.Categorical(
        cycle_phase(pos, markers=use_markers), categories=["G1", "S", "G2M", ""]
    )
    top_idx = np.argmax(np.nan_to_num(h5_probs, nan=-1), axis=1) if len(h5) else np.zeros(0, int)
    h5["top_location"] = pd.Categorical.from_codes(top_idx, categories=list(classes.names))

    cmap: CellMap | None = None
    km = None
    coords = None
    if want_maps and st.map_parts:
        mp = _concat(st.map_parts)
        feats = np.concatenate(st.map_features)
        keep = _bottom_k(mp.assign(_i=np.arange(len(mp))), ["protein"], st.map_quota)["_i"]
        feats = feats[keep.to_numpy()]
        st.map_parts, st.map_features = [], []
        if len(feats) >= 3:
            log.info("aggregate: fitting %s map on %d cells", p.map_method, len(feats))
            cmap = fit_cell_map(
                feats,
                method=p.map_method,
                seed=p.seed,
                n_neighbors=p.umap_n_neighbors,
                min_dist=p.umap_min_dist,
                perplexity=p.tsne_perplexity,
            )
            if p.n_clusters > 0:
                km = fit_clusters(feats, n_clusters=p.n_clusters, seed=p.seed)
        del feats
    if cmap is not None:
        coords = np.zeros((len(h5), 2), np.float32)
        clusters = np.full(len(h5), -1, np.int64)
        for sl, f in _feature_chunks(h5, h5_probs, shards_all, use_emb, 65_536):
            coords[sl] = cmap.transform(f)
            if km is not None:
                clusters[sl] = km.predict(np.asarray(f, np.float32))
        if km is not None:
            h5["cluster"] = pd.Categorical.from_codes(
                clusters, categories=[f"c{c:02d}" for c in range(km.n_clusters)]
            )
    prof_cols = [f"mean_p_{s}" for s in classes.slugs]
    pcoords, pclust = protein_map(
        proteins[prof_cols].to_numpy(np.float32),
        method=p.map_method,
        n_clusters=p.n_protein_clusters,
        seed=p.seed,
        n_neighbors=p.umap_n_neighbors,
        min_dist=p.umap_min_dist,
        perplexity=p.tsne_perplexity,
    )
    proteins["map_1"] = pcoords[:, 0]
    proteins["map_2"] = pcoords[:, 1]
    proteins["protein_cluster"] = pclust

    # 5. concordance and evaluation
    _stage("concordance and evaluation")
    conc = None
    if reference:
        ref = read_reference(reference, classes)
        per_prot, per_class, conc_summary = concordance(proteins, ref, classes)
        conc = (per_prot, per_class, conc_summary)
        proteins = proteins.merge(
            per_prot[["protein", "cell_line", "reference", "jaccard", "agreement"]].rename(
                columns={
                    "reference": "ref_locations",
                    "jaccard": "ref_jaccard",
                    "agreement": "ref_agreement",
                }
            ),
            on=["protein", "cell_line"],
            how="left",
        )
        outputs["concordance_proteins.csv"] = str(
            write_text(per_prot.to_csv(index=False), out / "concordance_proteins.csv")
        )
        outputs["concordance_classes.csv"] = str(
            write_text(per_class.to_csv(index=False), out / "concordance_classes.csv")
        )
    evaluation: dict = {
        "n_shards": len(shards_all),
        "n_rows": int(st.n_rows),
        "n_usable_cells": int(st.n_usable),
        "n_cells_h5ad": len(h5),
        "n_groups": int(len(sums)),
        "n_protein_cell_lines": int(len(proteins)),
        "n_alerts_cell_line": int((alerts["level"] == "cell_line").sum()),
        "n_alerts_well": int((alerts["level"] == "well").sum()),
        "n_cycle_dependent": int(proteins["cycle_dependent"].fillna(False).sum()),
        "n_variable": int(proteins["variable"].fillna(False).sum()),
        "input_rows_per_shard": [int(s["cells"]) for s in sizes],
        "quarantined_shards": quarantined,
    }
    if st.has_labels:
        evaluation["cell_level"] = cell_level_metrics(st.confusion, st.tp, st.fp, st.fn, classes)
    if conc is not None:
        evaluation["concordance"] = conc[2]
    truth_eval = None
    if truth_dir:
        truth_eval = evaluate_truth(proteins, alerts, read_truth(truth_dir), classes)
        evaluation["truth"] = truth_eval

    # 6. tables
    _stage("tables")
    outputs["proteins.parquet"] = str(write_parquet(proteins, out / "proteins.parquet"))
    outputs["timecourse.parquet"] = str(write_parquet(timecourse, out / "timecourse.parquet"))
    outputs["alerts.csv"] = str(write_text(alerts.to_csv(index=False), out / "alerts.csv"))

    # 7. cells.h5ad
    _stage("cells.h5ad")
    var_df = pd.DataFrame(
        {
            "name": list(classes.names),
            "compartment": list(classes.compartments),
            "threshold": thr.astype(np.float32),
        },
        index=pd.Index(list(classes.slugs), name="slug"),
    )
    obs = h5[[c for c in OBS_COLUMNS if c in h5]].copy()
    obs.index = pd.Index(
        (obs["field_id"].astype(str) + "/" + obs["cell_id"].astype(str)).to_numpy(), name="cell"
    )
    obsm = {}
    if cmap is not None:
        obsm[cmap.obsm_key] = coords
    uns = {
        "n_atlas_cells": int(st.n_usable),
        "n_cells_in_file": int(len(obs)),
        "sampling": (
            "all atlas cells (QC passed, not at the edge)"
            if len(obs) >= st.n_usable
            else f"uniform hash-based sample of {len(obs)} atlas cells (h5ad_max_cells)"
        ),
        "map_method": p.map_method,
        "map_fit_cells": int(0 if cmap is None else len(cmap.fit_coords)),
        "obs_columns": list(obs.columns),
        "params_json": json.dumps(p.to_dict(), sort_keys=True),
    }
    emb_chunks = None
    emb_dim = None
    if p.h5ad_embedding and use_emb and len(obs):
        emb_dim = open_embeddings(shards[0].embeddings).shape[1]
        emb_chunks = (f for _, f in _feature_chunks(h5, h5_probs, shards_all, True, 65_536))
    outputs["cells.h5ad"] = str(
        write_cells_h5ad(
            out / "cells.h5ad",
            obs=obs,
            X=h5_probs,
            var=var_df,
            obsm=obsm,
            uns=uns,
            embedding_chunks=emb_chunks,
            embedding_dim=emb_dim,
        )
    )

    # 8. figures
    _stage("figures")
    figures: dict[str, Path] = {}
    if coords is not None and len(coords):
        ax = cmap.method.upper() if cmap.method != "tsne" else "t-SNE"
        figures["map_location"] = figs.map_scatter(
            coords,
            h5["top_location"].astype(str).to_numpy(),
            fig_dir / "cells_map_by_location.png",
            title=f"Cells ({ax}) by most probable location",
            xlabel=f"{ax} 1",
            ylabel=f"{ax} 2",
            seed=p.seed,
        )
        if "cluster" in h5:
            figures["map_cluster"] = figs.map_scatter(
                coords,
                h5["cluster"].astype(str).to_numpy(),
                fig_dir / "cells_map_by_cluster.png",
                title=f"Cells ({ax}) by k-means cluster",
                xlabel=f"{ax} 1",
                ylabel=f"{ax} 2",
                seed=p.seed,
            )
    if np.isfinite(pcoords).all() and len(pcoords):
        main = proteins["main_locations"].str.split(";").str[0].replace("", "none")
        figures["protein_map"] = figs.map_scatter(
            pcoords,
            main.to_numpy(),
            fig_dir / "proteins_map.png",
            title="Proteins by location profile (coloured by first main location)",
            xlabel="map 1",
            ylabel="map 2",
        )
    figures["timecourses"] = figs.timecourse_figure(
        tc_line, alerts, fig_dir / "timecourses.png", classes=classes, n_max=p.n_timecourse_figures
    )
    if st.has_labels and st.confusion.sum() > 0:
        figures["confusion"] = figs.confusion_figure(
            st.confusion,
            fig_dir / "confusion_matrix.png",
            classes=classes,
            title="Single-label cells: true class vs most probable class",
        )
    figures["variability"] = figs.variability_figure(var, fig_dir / "variability.png")
    hists = []
    for k in st.dna_hist.keys():
        x, h = st.dna_hist.histogram(k)
        hists.append((" / ".join(k), x, h, dna_peaks[k]))
    figures["cell_cycle"] = figs.cycle_figure(hists, curves, fig_dir / "cell_cycle.png")
    if conc is not None:
        figures["concordance"] = figs.concordance_figure(conc[1], fig_dir / "concordance.png")
    if crops_paths is not None and len(h5):
        mpath = _montage(
            h5, [str(c) for c in crops_paths], fig_dir / "qc_montage.png", crop_roles, p
        )
        if mpath is not None:
            figures["qc_montage"] = mpath
    for _name, path in figures.items():
        outputs[f"figures/{Path(path).name}"] = str(path)

    outputs["evaluation.json"] = str(
        write_text(
            json.dumps(_jsonable(evaluation), indent=2, sort_keys=True) + "\n",
            out / "evaluation.json",
        )
    )

    # 9. report
    _stage("report")
    from locatlas.aggregate.report_sections import atlas_sections

    sections = atlas_sections(
        p=p,
        classes=classes,
        sums=sums,
        proteins=proteins,
        alerts=alerts,
        cycle=cycle,
        evaluation=evaluation,
        figures=figures,
        conc=conc,
        uns=uns,
        truth=truth_eval,
    )
    sections += list(extra_sections or [])
    outputs["report.html"] = str(
        render_report(sections, out / "report.html", max_rows=p.report_max_rows)
    )
    _stage("done")
    return dict(sorted(outputs.items()))


def _merge_str(left: pd.DataFrame, right: pd.DataFrame, on: list[str]) -> pd.DataFrame:
    """Merge on string keys (categoricals and objects mixed safely)."""
    left = left.copy()
    right = right.copy()
    for k in on:
        left[k] = left[k].astype(str)
        right[k] = right[k].astype(str)
    return left.merge(right, on=on, how="left")


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating | float):
        v = float(x)
        return None if not math.isfinite(v) else round(v, 10)
    if isinstance(x, np.bool_):
        return bool(x)
    return x
