"""Synthetic per-shard cell and localization tables with known truth.

No images: this writes what the segment and localize stages would write (cells
parquet, localization parquet, embeddings .npy) for a simulated atlas in which
cell-cycle-dependent proteins, single-cell-variable proteins (in intensity or in
space) and translocations at known onset frames are planted, plus a truth folder in
the simulator's layout (``truth/proteins.csv``, ``truth/cells.parquet``). It feeds the
aggregation tests and ``benchmarks/aggregate.py``; generation is chunked per shard, so
10^7 rows never sit in memory together.

Model (per cell; ``pos`` is the true cycle position, 0 = G1, 1 = G2):

- ``pos`` ~ 50 % G1 (0), 30 % S (uniform 0..1), 20 % G2/M (1);
- DNA content ``nucleus_integrated = G1_line * 2**pos * exp(N(0, 0.05))``;
  nuclear area ``A0 * 2**(2/3 pos) * exp(N(0, 0.1))`` (volume doubles);
- ``log protein_mean = base + well + field + sigma N(0,1) + cycle_effect * pos
  + variability N(0,1)`` (sigma 0.25-0.35 per protein; cycle effect 0.3-0.8 only for
  cell-cycle-dependent proteins, the extra spread 0.4-0.9 only for intensity-variable
  ones);
- true locations: the protein's labels; for a translocation, ``from`` is replaced by
  ``to`` in 80-100 % of the cells from ``onset_frame`` on (frames are time-point
  indices, onset 1..T-1); for a spatially variable protein a fraction ``variability``
  (0.3-0.6) of cells has one extra location;
- probabilities: logits ``N(mu_p, 1.2)`` for true classes with ``mu_p`` set by a
  per-protein miss rate (``miss_rate_range``), ``N(mu0, 1)`` otherwise with a
  false-call rate ``false_call_rate`` per class, plus a per-field x class logit
  offset ``N(0, field_logit_sd)`` (frame-to-frame overdispersion); embedding: mean
  of per-class prototypes + noise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import stats

from locatlas.atomic import atomic_path, write_parquet
from locatlas.classes import ClassList, load_classes
from locatlas.ids import make_field_id

_ROWS = "ABCDEFGH"


@dataclass(frozen=True)
class SyntheticAtlas:
    """Paths of a simulated atlas (inputs of :func:`build_atlas`) and its truth."""

    cells_paths: list[str]
    localization_paths: list[str]
    embedding_paths: list[str]
    truth_dir: str
    thresholds: dict[str, float]
    n_cells: int
    n_timepoints: int


def _well_name(index: int) -> str:
    return f"{_ROWS[(index // 12) % 8]}{index % 12 + 1:02d}"


def plan_samples(
    *,
    n_proteins: int,
    cell_lines: tuple[str, ...],
    lines_per_protein: int,
    n_timepoints: int,
    frac_cycle: float,
    frac_variable: float,
    frac_spatial: float,
    frac_translocation: float,
    wells_per_sample: int,
    classes: ClassList,
    seed: int,
    miss_rate_range: tuple[float, float] = (0.02, 0.12),
) -> pd.DataFrame:
    """The truth table: one row per protein x cell line with its planted behaviour.

    Behaviours are disjoint per protein (a protein is at most one of cell-cycle
    dependent, intensity-variable, spatially variable or translocating), so each
    recovery rate is measured on its own.
    """
    rng = np.random.default_rng([seed, 1])
    n_cls = len(classes)
    roles = np.array(["plain"] * n_proteins, dtype=object)
    order = rng.permutation(n_proteins)
    start = 0
    for role, frac in (
        ("cycle", frac_cycle),
        ("variable", frac_variable),
        ("spatial", frac_spatial),
        ("translocation", frac_translocation),
    ):
        k = round(frac * n_proteins)
        roles[order[start : start + k]] = role
        start += k
    if start > n_proteins:
        raise ValueError("frac_cycle + frac_variable + frac_spatial + frac_translocation > 1")
    if n_timepoints < 4:
        roles[roles == "translocation"] = "plain"
    rows = []
    well_counter = 0
    for p in range(n_proteins):
        protein = f"SYN{p:05d}"
        n_lab = 1 if rng.random() < 0.7 else 2
        labels = sorted(rng.choice(n_cls, size=n_lab, replace=False).tolist())
        others = [c for c in range(n_cls) if c not in labels]
        extra = int(rng.choice(others))
        base = float(rng.uniform(4.0, 7.0))
        sigma = float(rng.uniform(0.25, 0.35))
        miss = float(rng.uniform(*miss_rate_range))
        cycle_effect = float(rng.uniform(0.3, 0.8))
        variability = float(rng.uniform(0.4, 0.9))
        spatial_frac = float(rng.uniform(0.3, 0.6))
        moving = float(rng.uniform(0.8, 1.0))
        onset = int(rng.integers(1, n_timepoints)) if n_timepoints >= 4 else -1
        lines = [cell_lines[(p + i) % len(cell_lines)] for i in range(lines_per_protein)]
        for line in lines:
            plates = []
            wells = []
            for _ in range(wells_per_sample):
                plates.append(f"P{1 + well_counter // 96}")
                wells.append(_well_name(well_counter % 96))
                well_counter += 1
            role = roles[p]
            rows.append(
                {
                    "protein": protein,
                    "cell_line": line,
                    "labels": ";".join(str(c) for c in labels),
                    "cell_cycle_dependent": role == "cycle",
                    "cycle_effect": cycle_effect if role == "cycle" else 0.0,
                    "variable": role in ("variable", "spatial"),
                    "variable_kind": role if role in ("variable", "spatial") else "",
                    "variability": (
                        variability
                        if role == "variable"
                        else spatial_frac
                        if role == "spatial"
                        else 0.0
                    ),
                    "translocation_from": (
                        classes.slugs[labels[0]] if role == "translocation" else ""
                    ),
                    "translocation_to": classes.slugs[extra] if role == "translocation" else "",
                    "onset_frame": onset if role == "translocation" else -1,
                    "plates": ";".join(sorted(set(plates))),
                    "_wells": list(zip(plates, wells, strict=True)),
                    "_base": base,
                    "_sigma": sigma,
                    "_miss": miss,
                    "_moving": moving,
                    "_labels": labels,
                    "_extra": extra,
                    "_role": role,
                }
            )
    return pd.DataFrame(rows)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _dict_array(codes: np.ndarray, values: list[str]) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(
        pa.array(codes, pa.int32()), pa.array(values, pa.string())
    )


def simulate_atlas_tables(
    out_dir: str | os.PathLike,
    *,
    n_proteins: int = 60,
    cell_lines: tuple[str, ...] = ("U2OS",),
    lines_per_protein: int = 1,
    wells_per_sample: int = 2,
    fields_per_well: int = 2,
    n_timepoints: int = 6,
    cells_per_field: int = 50,
    poisson_cells: bool = True,
    frac_cycle: float = 0.2,
    frac_variable: float = 0.15,
    frac_spatial: float = 0.1,
    frac_translocation: float = 0.2,
    embedding_dim: int = 16,
    fields_per_shard: int = 60,
    shuffle_localization: bool = False,
    write_truth_cells: bool = True,
    edge_rate: float = 0.03,
    qc_fail_rate: float = 0.02,
    miss_rate_range: tuple[float, float] = (0.02, 0.12),
    false_call_rate: float = 0.003,
    field_logit_sd: float = 0.3,
    fucci_markers: bool = False,
    seed: int = 0,
    classes: ClassList | None = None,
) -> SyntheticAtlas:
    """Write a simulated atlas as per-shard tables under ``out_dir``.

    Parameters
    ----------
    out_dir
        Output folder; gets ``cells/``, ``localization/`` and ``truth/``.
    n_proteins, cell_lines, lines_per_protein
        Proteins and the cell lines each is measured in (round robin).
    wells_per_sample, fields_per_well, n_timepoints, cells_per_field
        Layout: every protein x cell line is imaged in its own wells, each with
        ``fields_per_well`` fields at ``n_timepoints`` frames of about
        ``cells_per_field`` cells (Poisson, or exactly when ``poisson_cells`` is false).
    frac_cycle, frac_variable, frac_spatial, frac_translocation
        Fractions of proteins with each planted behaviour (disjoint).
    embedding_dim
        Width ``D`` of the ``(N, D)`` float32 embedding files.
    fields_per_shard
        Fields (one frame of one field of view) per shard file.
    fucci_markers
        Add FUCCI-like marker columns ``fucci_g1_mean`` (high in G1) and
        ``fucci_sg2_mean`` (high in S/G2) following the true cycle position.
    shuffle_localization
        Write every other localization shard in a shuffled row order (the reader
        must then join on ``field_id, cell_id``).
    seed
        Everything random derives from it; same seed, same bytes.

    Returns
    -------
    SyntheticAtlas
    """
    classes = classes or load_classes()
    out = Path(out_dir)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    (out / "localization").mkdir(parents=True, exist_ok=True)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    n_cls = len(classes)
    samples = plan_samples(
        n_proteins=n_proteins,
        cell_lines=cell_lines,
        lines_per_protein=lines_per_protein,
        n_timepoints=n_timepoints,
        frac_cycle=frac_cycle,
        frac_variable=frac_variable,
        frac_spatial=frac_spatial,
        frac_translocation=frac_translocation,
        wells_per_sample=wells_per_sample,
        classes=classes,
        seed=seed,
        miss_rate_range=miss_rate_range,
    )
    rng0 = np.random.default_rng([seed, 2])
    protos = rng0.normal(0.0, 1.5, size=(n_cls, embedding_dim))
    line_dna = {line: 2.0e5 * (1.0 + 0.15 * i) for i, line in enumerate(cell_lines)}
    # Label sets: per sample 0 = base, 1 = after translocation, 2 = base + extra (spatial).
    set_strings: list[str] = []
    set_index: dict[str, int] = {}
    member_rows: list[np.ndarray] = []

    def set_id(labels: list[int]) -> int:
        key = ";".join(str(c) for c in sorted(set(labels)))
        if key not in set_index:
            set_index[key] = len(set_strings)
            set_strings.append(key)
            m = np.zeros(n_cls, bool)
            m[sorted(set(labels))] = True
            member_rows.append(m)
        return set_index[key]

    sample_sets = np.zeros((len(samples), 3), np.int64)
    for i, s in samples.iterrows():
        lab = s["_labels"]
        sample_sets[i, 0] = set_id(lab)
        moved = [s["_extra"] if c == lab[0] else c for c in lab]
        sample_sets[i, 1] = set_id(moved)
        sample_sets[i, 2] = set_id([*lab, s["_extra"]])
    members = np.stack(member_rows)

    # The field table: one row per (sample, well, field, frame), in plate order.
    frows = []
    for i, s in samples.iterrows():
        for plate, well in s["_wells"]:
            for f in range(1, fields_per_well + 1):
                for t in range(n_timepoints):
                    frows.append((plate, well, f, t, i))
    fields = pd.DataFrame(frows, columns=["plate", "well", "field", "timepoint", "sample"])
    fields = fields.sort_values(["plate", "well", "field", "timepoint"], kind="stable")
    fields = fields.reset_index(drop=True)
    fields["field_id"] = [
        make_field_id(p, w, f, t)
        for p, w, f, t in zip(
            fields["plate"], fields["well"], fields["field"], fields["timepoint"], strict=True
        )
    ]
    rng_w = np.random.default_rng([seed, 3])
    well_keys = fields[["plate", "well"]].drop_duplicates()
    well_effect = dict(
        zip(map(tuple, well_keys.to_numpy()), rng_w.normal(0, 0.1, len(well_keys)), strict=True)
    )
    field_effect = rng_w.normal(0, 0.05, len(fields))

    protein_names = sorted(samples["protein"].unique())
    protein_code = {p: i for i, p in enumerate(protein_names)}
    line_names = list(cell_lines)
    plate_names = sorted(fields["plate"].unique())
    well_names = sorted(fields["well"].unique())
    cells_paths, loc_paths, emb_paths = [], [], []
    truth_parts = []
    n_total = 0
    role_arr = samples["_role"].to_numpy()
    onset_arr = samples["onset_frame"].to_numpy()
    ceff_arr = samples["cycle_effect"].to_numpy()
    var_arr = samples["variability"].to_numpy()
    base_arr = samples["_base"].to_numpy()
    sigma_arr = samples["_sigma"].to_numpy()
    moving_arr = samples["_moving"].to_numpy()
    # logit means giving each protein its miss rate (true class) and the false-call rate
    mu_true = -stats.norm.ppf(samples["_miss"].to_numpy()) * 1.2
    mu_false = stats.norm.ppf(false_call_rate)
    field_logit = rng_w.normal(0, field_logit_sd, (len(fields), n_cls))
    n_shards = (len(fields) + fields_per_shard - 1) // fields_per_shard
    for k in range(n_shards):
        fs = fields.iloc[k * fields_per_shard : (k + 1) * fields_per_shard]
        rng = np.random.default_rng([seed, 100, k])
        if poisson_cells:
            counts = np.maximum(rng.poisson(cells_per_field, len(fs)), 1)
        else:
            counts = np.full(len(fs), cells_per_field)
        n = int(counts.sum())
        fi = np.repeat(np.arange(len(fs)), counts)  # field row within shard, per cell
        cell_id = (np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts) + 1).astype(
            np.int32
        )
        smp = fs["sample"].to_numpy()[fi]
        tpt = fs["timepoint"].to_numpy()[fi]
        role = role_arr[smp]
        # cycle position: 50 % G1, 30 % S, 20 % G2/M
        u = rng.random(n)
        pos = np.where(u < 0.5, 0.0, np.where(u < 0.8, rng.random(n), 1.0))
        line = samples["cell_line"].to_numpy()[smp]
        g1 = np.array([line_dna[x] for x in line_names])[
            pd.Categorical(line, categories=line_names).codes
        ]
        dna = g1 * 2.0**pos * np.exp(rng.normal(0, 0.05, n))
        nuc_area = 80.0 * 2.0 ** (2.0 / 3.0 * pos) * np.exp(rng.normal(0, 0.1, n))
        cell_area = nuc_area * np.exp(rng.normal(1.1, 0.25, n))
        weff = np.array(
            [well_effect[(p, w)] for p, w in zip(fs["plate"], fs["well"], strict=True)]
        )[fi]
        feff = field_effect[fs.index.to_numpy()][fi]
        logint = base_arr[smp] + weff + feff + sigma_arr[smp] * rng.normal(size=n)
        logint += np.where(role == "cycle", ceff_arr[smp] * pos, 0.0)
        logint += np.where(role == "variable", var_arr[smp], 0.0) * rng.normal(size=n)
        state = np.zeros(n, np.int64)
        moved = (role == "translocation") & (tpt >= onset_arr[smp])
        state[moved & (rng.random(n) < moving_arr[smp])] = 1
        state[(role == "spatial") & (rng.random(n) < var_arr[smp])] = 2
        sid = sample_sets[smp, state]
        member = members[sid]
        logits = np.where(
            member,
            rng.normal(0.0, 1.2, (n, n_cls)) + mu_true[smp][:, None],
            rng.normal(mu_false, 1.0, (n, n_cls)),
        )
        logits += field_logit[fs.index.to_numpy()][fi]
        probs = _sigmoid(logits).astype(np.float32)
        emb = (member @ protos) / member.sum(1, keepdims=True)
        emb = (emb + rng.normal(0, 0.6, emb.shape)).astype(np.float32)
        edge = rng.random(n) < edge_rate
        qc = rng.random(n) >= qc_fail_rate
        pmean = np.exp(logint)
        f32 = np.float32
        fid_codes = fi.astype(np.int32)
        fid_values = fs["field_id"].tolist()
        cols = {
            "field_id": _dict_array(fid_codes, fid_values),
            "cell_id": pa.array(cell_id),
            "plate": _dict_array(
                pd.Categorical(fs["plate"].to_numpy()[fi], plate_names).codes, plate_names
            ),
            "well": _dict_array(
                pd.Categorical(fs["well"].to_numpy()[fi], well_names).codes, well_names
            ),
            "field": pa.array(fs["field"].to_numpy()[fi].astype(np.int16)),
            "timepoint": pa.array(tpt.astype(np.int16)),
            "protein": _dict_array(
                np.array([protein_code[p] for p in samples["protein"]])[smp], protein_names
            ),
            "cell_line": _dict_array(pd.Categorical(line, line_names).codes, line_names),
            "split": _dict_array(np.zeros(n, np.int32), ["test"]),
            "labels": _dict_array(sid.astype(np.int32), set_strings),
            "centroid_y_um": pa.array(rng.uniform(0, 200, n).astype(f32)),
            "centroid_x_um": pa.array(rng.uniform(0, 200, n).astype(f32)),
            "cell_area_um2": pa.array(cell_area.astype(f32)),
            "nucleus_area_um2": pa.array(nuc_area.astype(f32)),
            "edge": pa.array(edge),
            "qc_pass": pa.array(qc),
            "nucleus_mean": pa.array((dna / nuc_area).astype(f32)),
            "nucleus_integrated": pa.array(dna.astype(f32)),
            "nucleus_nuc_mean": pa.array((dna / nuc_area).astype(f32)),
            "nucleus_cyto_mean": pa.array(rng.uniform(5, 10, n).astype(f32)),
            "microtubules_mean": pa.array(np.exp(rng.normal(5, 0.3, n)).astype(f32)),
            "microtubules_integrated": pa.array(np.exp(rng.normal(9, 0.3, n)).astype(f32)),
            "er_mean": pa.array(np.exp(rng.normal(5, 0.3, n)).astype(f32)),
            "er_integrated": pa.array(np.exp(rng.normal(9, 0.3, n)).astype(f32)),
            "protein_mean": pa.array(pmean.astype(f32)),
            "protein_integrated": pa.array((pmean * cell_area).astype(f32)),
            "protein_nuc_mean": pa.array((pmean * rng.uniform(0.5, 1.5, n)).astype(f32)),
            "protein_cyto_mean": pa.array((pmean * rng.uniform(0.5, 1.5, n)).astype(f32)),
        }
        if fucci_markers:
            # G1 (pos 0) -> angle 3pi/4 (G1 marker only), G2 (pos 1) -> -pi/4 (S/G2 only)
            ang = 3 * np.pi / 4 - np.pi * pos
            cols["fucci_g1_mean"] = pa.array(
                np.exp(5 + np.sin(ang) + 0.1 * rng.normal(size=n)).astype(f32)
            )
            cols["fucci_sg2_mean"] = pa.array(
                np.exp(5 + np.cos(ang) + 0.1 * rng.normal(size=n)).astype(f32)
            )
        shard = f"P-{k:05d}"
        cpath = out / "cells" / f"shard-{shard}.parquet"
        with atomic_path(cpath) as tmp:
            pq.write_table(pa.table(cols), tmp, compression="zstd", row_group_size=200_000)
        order = np.arange(n)
        if shuffle_localization and k % 2 == 1:
            order = rng.permutation(n)
        loc_cols = {
            "field_id": _dict_array(fid_codes[order], fid_values),
            "cell_id": pa.array(cell_id[order]),
        }
        for j, col in enumerate(classes.prob_columns):
            loc_cols[col] = pa.array(probs[order, j])
        loc_cols["model_id"] = _dict_array(np.zeros(n, np.int32), ["synthetic-0"])
        ent = -(probs * np.log(probs + 1e-9) + (1 - probs) * np.log(1 - probs + 1e-9)).sum(1)
        loc_cols["lf_entropy"] = pa.array(ent[order].astype(f32))
        lpath = out / "localization" / f"shard-{shard}.parquet"
        with atomic_path(lpath) as tmp:
            pq.write_table(pa.table(loc_cols), tmp, compression="zstd", row_group_size=200_000)
        epath = out / "localization" / f"shard-{shard}.embeddings.npy"
        with atomic_path(epath) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, emb[order])
        cells_paths.append(str(cpath))
        loc_paths.append(str(lpath))
        emb_paths.append(str(epath))
        if write_truth_cells:
            truth_parts.append(
                pd.DataFrame(
                    {
                        "field_id": np.asarray(fid_values, dtype=object)[fi],
                        "cell_id": cell_id,
                        "cycle_position": pos.astype(np.float32),
                        "labels": np.asarray(set_strings, dtype=object)[sid],
                    }
                )
            )
        n_total += n
    truth = samples.drop(columns=[c for c in samples.columns if c.startswith("_")])
    truth.to_csv(out / "truth" / "proteins.csv.tmp", index=False)
    os.replace(out / "truth" / "proteins.csv.tmp", out / "truth" / "proteins.csv")
    if write_truth_cells:
        write_parquet(pd.concat(truth_parts, ignore_index=True), out / "truth" / "cells.parquet")
    thresholds = {s: 0.5 for s in classes.slugs}
    thresholds[classes.slugs[0]] = 0.4  # exercise per-class thresholds
    return SyntheticAtlas(
        cells_paths=cells_paths,
        localization_paths=loc_paths,
        embedding_paths=emb_paths,
        truth_dir=str(out / "truth"),
        thresholds=thresholds,
        n_cells=n_total,
        n_timepoints=n_timepoints,
    )
