"""Parameters of the atlas aggregation (the ``aggregate:`` section of the config).

Every field has a default; :meth:`AggregateParams.from_any` accepts a dict (the config
section), an existing instance or ``None`` and rejects unknown keys with a clear error,
so a typo in the config never passes silently.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AggregateParams:
    """Scientific parameters of :func:`locatlas.aggregate.build_atlas`.

    Attributes are grouped by concern; see ``docs``/report for their meaning.
    """

    # --- reading -------------------------------------------------------------
    #: Rows per streamed record batch (memory/speed trade-off, not science).
    batch_rows: int = 131_072
    #: Use only cells with ``qc_pass`` true (when the column exists).
    use_qc: bool = True
    #: Drop cells touching the field border (``edge`` true).
    drop_edge: bool = True
    #: Skip (and list as quarantined) shards whose inputs are missing or malformed
    #: instead of failing; the list goes to evaluation.json and the report.
    skip_bad_shards: bool = False
    #: Per-cell intensity of the target protein used for intensity statistics.
    intensity_column: str = "protein_mean"

    # --- location profiles and calls ------------------------------------------
    #: Probability threshold for classes missing from the model's ``thresholds``.
    default_threshold: float = 0.5
    #: A class is *detected* in a group when at least this fraction of its cells call it.
    call_min_fraction: float = 0.25
    #: A detected class is a *main* location at or above this fraction (else additional).
    main_min_fraction: float = 0.5
    #: Groups with fewer usable cells get no call and no tests.
    min_cells: int = 20
    #: Two-sided level of the Wilson interval used as call confidence.
    confidence_level: float = 0.95

    # --- statistics (shared) --------------------------------------------------
    #: Benjamini-Hochberg false discovery rate for every test.
    fdr: float = 0.05
    #: Seed for every random step (permutations, sampling salts, maps, clustering).
    seed: int = 0

    # --- single-cell variability ----------------------------------------------
    #: Intensity test: H0 is "within-group SD of log intensity <= ratio x the typical SD".
    intensity_var_ratio: float = 1.3
    #: Spatial test: per-cell classification error rate allowed under H0 (homogeneous).
    spatial_error_rate: float = 0.1
    #: Spatial flag also needs at least this fraction of cells in the minority state.
    spatial_min_fraction: float = 0.2

    # --- cell cycle -----------------------------------------------------------
    #: Cells per protein x cell line kept (uniform sample) for the cycle test.
    cycle_max_cells: int = 2000
    #: Equal-width bins of cycle position (0 = G1 peak, 1 = G2 DNA content).
    cycle_bins: int = 8
    #: Permutations for the cycle test (p-value resolution 1/(n+1)).
    cycle_permutations: int = 999
    #: Minimum fraction of intensity variance explained by the cycle (eta squared).
    cycle_min_effect: float = 0.05
    #: Weight of nuclear area (vs DNA content) in the cycle position.
    cycle_area_weight: float = 0.2
    #: Expected G2/G1 nuclear area ratio (volume doubles: 2**(2/3)).
    cycle_area_g2_ratio: float = 2 ** (2 / 3)
    #: Two cell-cycle marker columns (G1 marker, S/G2 marker, e.g. FUCCI) -> polar
    #: pseudotime instead of DNA content; ``None`` to use DNA content and nuclear size.
    cycle_marker_columns: tuple[str, str] | None = None

    # --- time -----------------------------------------------------------------
    #: Minimum |fraction after - fraction before| of a change point to alert.
    change_min_effect: float = 0.2
    #: Series with fewer time points are not tested.
    change_min_timepoints: int = 3

    # --- maps -----------------------------------------------------------------
    #: Cell and protein map: "umap", "tsne", "pca" (fast, for tests) or "none".
    map_method: str = "umap"
    #: Cells per protein in the stratified sample on which the cell map is fitted.
    map_sample_per_protein: int = 200
    #: Cap on the total fit sample (per-protein quota shrinks to respect it).
    map_max_fit_cells: int = 20_000
    #: UMAP neighbourhood size (cells and proteins).
    umap_n_neighbors: int = 15
    #: UMAP minimum distance between embedded points.
    umap_min_dist: float = 0.1
    #: t-SNE perplexity (capped at (n - 1) / 3 for small samples).
    tsne_perplexity: float = 30.0
    #: k-means clusters of cells (in embedding space); 0 = no clustering.
    n_clusters: int = 20
    #: k-means clusters of proteins (on their location profiles).
    n_protein_clusters: int = 8

    # --- outputs --------------------------------------------------------------
    #: Most cells written to cells.h5ad; above it a uniform (hash-based, reproducible)
    #: sample of the atlas cells is written and ``uns['locatlas']`` says so.
    h5ad_max_cells: int = 1_000_000
    #: Write the per-cell embedding into ``obsm['X_embedding']`` (streamed).
    h5ad_embedding: bool = True
    #: Series drawn in the time-course figure.
    n_timecourse_figures: int = 12
    #: Cells per location in the QC montage (needs crops).
    montage_per_class: int = 4
    #: Rows of each table shown in report.html.
    report_max_rows: int = 30

    @classmethod
    def from_any(cls, params: AggregateParams | dict | None) -> AggregateParams:
        """Build parameters from a config dict, an instance or ``None`` (defaults)."""
        if params is None:
            return cls()
        if isinstance(params, cls):
            return params
        if not isinstance(params, dict):
            raise TypeError(f"aggregate params must be a dict or AggregateParams, got {params!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise ValueError(f"unknown aggregate parameter(s): {unknown}; known: {sorted(names)}")
        kw = dict(params)
        if kw.get("cycle_marker_columns") is not None:
            cols = tuple(kw["cycle_marker_columns"])
            if len(cols) != 2:
                raise ValueError("cycle_marker_columns needs exactly two column names")
            kw["cycle_marker_columns"] = cols
        out = cls(**kw)
        out.validate()
        return out

    def validate(self) -> None:
        """Raise ``ValueError`` for out-of-range values."""
        if self.map_method not in ("umap", "tsne", "pca", "none"):
            raise ValueError(f"map_method must be umap, tsne, pca or none, not {self.map_method!r}")
        for name in ("call_min_fraction", "main_min_fraction", "fdr", "spatial_error_rate"):
            v = getattr(self, name)
            if not 0 < v < 1:
                raise ValueError(f"{name} must be in (0, 1), got {v}")
        if self.batch_rows < 1 or self.min_cells < 2 or self.cycle_bins < 2:
            raise ValueError("batch_rows >= 1, min_cells >= 2 and cycle_bins >= 2 are required")
        if self.cycle_permutations < 1:
            raise ValueError("cycle_permutations must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["cycle_marker_columns"] is not None:
            d["cycle_marker_columns"] = list(d["cycle_marker_columns"])
        return d
