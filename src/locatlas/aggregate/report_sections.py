"""The atlas's own report sections (titles, tables, figures and captions)."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from locatlas.aggregate.params import AggregateParams
from locatlas.aggregate.profiles import rollup
from locatlas.classes import ClassList


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows: list[tuple[str, object]] = []
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            rows += _flatten(v, name + ".")
        elif isinstance(v, list):
            continue
        else:
            rows.append((name, v))
    return rows


def _kv(d: dict) -> pd.DataFrame:
    return pd.DataFrame(_flatten(d), columns=["metric", "value"]).astype({"value": str})


def atlas_sections(
    *,
    p: AggregateParams,
    classes: ClassList,
    sums: pd.DataFrame,
    proteins: pd.DataFrame,
    alerts: pd.DataFrame,
    cycle: pd.DataFrame,
    evaluation: dict,
    figures: dict[str, Path],
    conc: tuple | None,
    uns: dict,
    truth: dict | None,
) -> list[dict]:
    """Report sections in reading order (see :func:`locatlas.aggregate.report.render_report`)."""
    s: list[dict] = []
    overview = {
        k: evaluation[k]
        for k in (
            "n_shards",
            "n_rows",
            "n_usable_cells",
            "n_cells_h5ad",
            "n_protein_cell_lines",
            "n_cycle_dependent",
            "n_variable",
            "n_alerts_cell_line",
            "n_alerts_well",
        )
    }
    s.append(
        {
            "title": "Overview",
            "text": (
                f"{evaluation['n_usable_cells']:,} cells (QC passed, not at the field edge) of "
                f"{evaluation['n_rows']:,} rows in {evaluation['n_shards']} shards, "
                f"{evaluation['n_protein_cell_lines']} protein x cell line samples."
            ),
            "table": _kv(overview),
            "caption": "Run summary. Usable cells enter every statistic; the rest are counted "
            "per plate below.",
        }
    )
    plates = rollup(sums, ["plate"])[
        ["plate", "n_rows", "n_cells", "n_qc_fail", "n_edge", "n_no_localization"]
    ]
    s.append(
        {
            "title": "Quality control per plate",
            "table": plates,
            "caption": "Rows per plate: usable cells, QC failures (qc_pass false), cells touching "
            "the field border and cells without a localization row (dropped and counted).",
        }
    )
    if evaluation.get("quarantined_shards"):
        s.append(
            {
                "title": "Quarantined inputs",
                "table": pd.DataFrame(evaluation["quarantined_shards"]),
                "caption": "Shards skipped because an input was missing or malformed "
                "(skip_bad_shards); their cells are not in the atlas.",
            }
        )
    cols = [
        "protein",
        "cell_line",
        "n_cells",
        "main_locations",
        "additional_locations",
        "main_confidence",
        "reliability",
        "variable",
        "cycle_dependent",
        "time_change",
    ]
    s.append(
        {
            "title": "Location atlas",
            "table": proteins[[c for c in cols if c in proteins]],
            "caption": (
                f"Per protein x cell line: a class is detected when >= {p.call_min_fraction:g} of "
                f"the cells call it (probability >= the class threshold); main when >= "
                f"{p.main_min_fraction:g}, otherwise additional. Confidence is the smallest "
                f"{p.confidence_level:.0%} Wilson lower bound of the called fractions; "
                "reliability 'high' when every bound clears the detection fraction. Full table: "
                "proteins.parquet; per time point and well: timecourse.parquet."
            ),
        }
    )
    if "map_location" in figures:
        s.append(
            {
                "title": "Map of cells",
                "image": [
                    figures["map_location"],
                    *([figures["map_cluster"]] if "map_cluster" in figures else []),
                ],
                "caption": (
                    f"{p.map_method.upper()} of cells fitted on a stratified sample "
                    f"({uns['map_fit_cells']} cells, at most {p.map_sample_per_protein} per "
                    f"protein) and applied to the {uns['n_cells_in_file']:,} cells of cells.h5ad; "
                    "coloured by the most probable location, then by k-means cluster "
                    "(embedding space)."
                ),
            }
        )
    if "protein_map" in figures:
        s.append(
            {
                "title": "Map of proteins",
                "image": figures["protein_map"],
                "caption": "Each point is a protein x cell line placed by its mean class "
                "probabilities; colour = first main location. Coordinates and k-means "
                "cluster are in proteins.parquet (map_1, map_2, protein_cluster).",
            }
        )
    if "confusion" in figures:
        cl = evaluation.get("cell_level", {})
        s.append(
            {
                "title": "Cell-level agreement with labels",
                "image": figures["confusion"],
                "text": (
                    f"Top-1 accuracy on single-label cells: {cl.get('top1_accuracy_single_label')}; "
                    f"macro F1 of thresholded calls: {cl.get('macro_f1')}."
                ),
                "caption": "Confusion matrix of labelled cells (labels column): rows are the "
                "true class, columns the most probable class, normalised per row.",
            }
        )
    vcols = [
        "protein",
        "cell_line",
        "int_sd_ratio",
        "int_var_q",
        "variable_intensity",
        "spatial_score",
        "spatial_class",
        "spatial_q",
        "variable_spatial",
    ]
    flagged = proteins[proteins["variable"].fillna(False).astype(bool)]
    s.append(
        {
            "title": "Single-cell variability",
            "image": figures.get("variability"),
            "caption": (
                "Intensity: H0 'within-well SD of log intensity <= "
                f"{p.intensity_var_ratio:g} x the atlas's typical SD' (chi-square); spatial: H0 "
                "'all cells of a time point share their locations up to a per-cell error rate "
                f"{p.spatial_error_rate:g}' (binomial, Bonferroni over classes); BH FDR "
                f"{p.fdr:g}; the spatial flag also needs >= {p.spatial_min_fraction:g} of cells "
                f"in the minority state. {len(flagged)} of {len(proteins)} flagged."
            ),
        }
    )
    if len(flagged):
        s.append(
            {
                "title": "Variable proteins",
                "table": flagged[[c for c in vcols if c in flagged]],
                "caption": "Flagged protein x cell lines, with effect sizes and q-values.",
            }
        )
    ccols = ["protein", "cell_line", "cycle_n", "cycle_eta2", "cycle_log2fc", "cycle_peak"]
    ccols += ["cycle_p", "cycle_q"]
    dep = cycle[cycle["cycle_dependent"]].sort_values("cycle_q", kind="stable")
    s.append(
        {
            "title": "Cell-cycle dependence",
            "image": figures.get("cell_cycle"),
            "caption": (
                "Left: DNA content (integrated nucleus intensity) per cell line and plate, relative "
                "to its G1 peak. Right: mean centred intensity along the cycle for the strongest "
                "cycle-dependent proteins. "
                + (
                    f"Position = polar pseudotime of the markers {list(p.cycle_marker_columns)} "
                    "(fraction of the whole cycle, G1 = 0, G2/M = 0.5)"
                    if p.cycle_marker_columns
                    else f"Position = {1 - p.cycle_area_weight:g} x log2(DNA/G1) + "
                    f"{p.cycle_area_weight:g} x nuclear area term"
                )
                + f"; test: variance explained by {p.cycle_bins} position bins, "
                f"{p.cycle_permutations} permutations, BH FDR {p.fdr:g}, eta2 >= "
                f"{p.cycle_min_effect:g}. {len(dep)} protein x cell lines are cycle dependent."
            ),
        }
    )
    if len(dep):
        s.append(
            {
                "title": "Cycle-dependent proteins",
                "table": dep[ccols],
                "caption": "eta2: variance explained; log2fc: G2 minus G1 bin mean; peak: "
                "position of the highest bin.",
            }
        )
    acols = ["level", "protein", "cell_line", "plate", "well", "location", "direction"]
    acols += ["partner", "onset", "before", "after", "effect", "q"]
    s.append(
        {
            "title": "Time courses and alerts",
            "image": figures.get("timecourses"),
            "caption": (
                "Fractions of cells per location over time for the strongest alerts (dashed: "
                "change point). A change is an alert when BH q < "
                f"{p.fdr:g} (binomial likelihood ratio, overdispersion-corrected, Bonferroni over "
                f"split points) and |after - before| >= {p.change_min_effect:g}."
            ),
        }
    )
    s.append(
        {
            "title": "Alerts",
            "table": alerts[[c for c in acols if c in alerts]],
            "caption": "alerts.csv: significant changes per well and per cell line; partner = "
            "class changing the other way within one frame (a translocation).",
        }
    )
    if conc is not None:
        per_prot, per_class, summ = conc
        s.append(
            {
                "title": "Concordance with the reference annotation",
                "image": figures.get("concordance"),
                "text": "; ".join(f"{k}: {v}" for k, v in summ.items()),
                "caption": "Per-class F1 of the atlas calls (main + additional) against the "
                "reference locations of the same gene.",
            }
        )
        s.append(
            {
                "title": "Concordance per class",
                "table": per_class[per_class["support"] + per_class["n_predicted"] > 0],
                "caption": "Proteins as instances: support = proteins annotated with the class "
                "in the reference.",
            }
        )
    if truth is not None:
        s.append(
            {
                "title": "Truth recovery (simulated atlas)",
                "table": _kv(truth),
                "caption": "Recovery of planted behaviours: cycle dependence (recall, false "
                "discovery proportion), translocations (recall with onset within one frame), "
                "variability (recall) and location calls (exact set agreement).",
            }
        )
    if "qc_montage" in figures:
        s.append(
            {
                "title": "QC montage",
                "image": figures["qc_montage"],
                "caption": "Cells from cells.h5ad, a few per most probable location (protein "
                "green, microtubules red, nucleus blue, ER yellow) with mask outlines in white.",
            }
        )
    params = pd.DataFrame(sorted(p.to_dict().items()), columns=["parameter", "value"]).astype(
        {"value": str}
    )
    s.append(
        {
            "title": "Methods and parameters",
            "html": "<p>"
            + html.escape(
                f"cells.h5ad holds {uns['n_cells_in_file']:,} of {uns['n_atlas_cells']:,} atlas "
                f"cells ({uns['sampling']}); X = class probabilities ({len(classes)} classes), "
                f"obs = {', '.join(uns['obs_columns'])}; obsm = 2-D map and embedding."
            )
            + "</p>",
            "table": params,
            "caption": "Aggregation parameters of this run (config section aggregate:).",
        }
    )
    return [x for x in s if x.get("image", 1) is not None]
