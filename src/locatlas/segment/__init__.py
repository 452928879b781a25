"""Per-cell segmentation and measurement.

- :func:`segment_field` — nuclei and cells of one (C, Y, X) field, plus QC;
- :func:`measure_cells` — one row of features per cell (``docs/features.md``);
- :func:`extract_crops` — fixed-size per-cell crops and masks for localization;
- :func:`match_labels` — instance-segmentation accuracy against ground truth;
- :class:`SegmentParams` — every parameter, sizes in µm.

All functions are pure (arrays in, arrays out) and deterministic.
"""

from .crops import extract_crops
from .features import feature_columns, measure_cells
from .field import segment_field
from .metrics import match_labels
from .nuclei import segment_nuclei
from .params import SegmentParams

__all__ = [
    "SegmentParams",
    "extract_crops",
    "feature_columns",
    "match_labels",
    "measure_cells",
    "segment_field",
    "segment_nuclei",
]
