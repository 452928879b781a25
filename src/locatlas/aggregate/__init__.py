"""Aggregate: per-cell tables -> the protein-localization atlas.

Public entry point: :func:`build_atlas` (called by the workflow) with
:class:`AggregateParams` (the ``aggregate:`` config section). Modules, one concern each:
``tables`` (out-of-core reading), ``profiles`` (group sums, location calls),
``variability``, ``cellcycle``, ``timecourse``, ``maps``, ``concordance``,
``anndata_out``, ``figures``, ``report``, ``evaluation`` and ``synthetic``
(simulated tables with known truth).
"""

from locatlas.aggregate.atlas import build_atlas, threshold_vector
from locatlas.aggregate.params import AggregateParams
from locatlas.aggregate.synthetic import SyntheticAtlas, simulate_atlas_tables
from locatlas.aggregate.tables import AggregateInputError

__all__ = [
    "AggregateInputError",
    "AggregateParams",
    "SyntheticAtlas",
    "build_atlas",
    "simulate_atlas_tables",
    "threshold_vector",
]
