"""What a simulated protein is: its locations and how it behaves from cell to cell.

A :class:`ProteinSpec` is pure data. Class indices follow
``resources/classes_hpa28.tsv`` (the 28 Kaggle-2018 HPA classes).
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field

#: Classes the simulator can draw in the protein channel (HPA-28 indices).
SUPPORTED_CLASSES: dict[int, str] = {
    0: "Nucleoplasm",
    1: "Nuclear membrane",
    2: "Nucleoli",
    3: "Nucleoli fibrillar center",
    4: "Nuclear speckles",
    5: "Nuclear bodies",
    6: "Endoplasmic reticulum",
    7: "Golgi apparatus",
    8: "Peroxisomes",
    9: "Endosomes",
    10: "Lysosomes",
    11: "Intermediate filaments",
    12: "Actin filaments",
    13: "Focal adhesion sites",
    14: "Microtubules",
    18: "Microtubule organizing center",
    19: "Centrosome",
    20: "Lipid droplets",
    21: "Plasma membrane",
    22: "Cell junctions",
    23: "Mitochondria",
    24: "Aggresome",
    25: "Cytosol",
    26: "Cytoplasmic bodies",
    27: "Rods & rings",
}

#: Classes whose signal lies inside the nucleus.
NUCLEAR_CLASSES = frozenset({0, 1, 2, 3, 4, 5})


def _as_tuple(values, kind=int) -> tuple:
    if values is None:
        return ()
    if isinstance(values, int | float | str):
        values = [values]
    return tuple(kind(v) for v in values)


@dataclass(frozen=True)
class ProteinSpec:
    """A simulated protein (one antibody stain) and its single-cell behaviour.

    Parameters
    ----------
    name
        Protein (gene) name; also seeds the protein's own look (speckle count,
        Golgi compactness, ...) so every field of it looks alike.
    labels
        1–3 HPA-28 class indices of its locations (at time 0, before any
        translocation). Every cell shows the union, mixed by ``weights``.
    weights
        Relative signal per location (same length as ``labels``; default equal).
    level
        Median expression (relative; multiplies the per-cell level).
    cell_line
        Cell line the protein is stained in (informational; the field's
        ``cell_line`` argument decides the cell shapes).
    variability
        ``''`` (lognormal sigma 0.15 cell to cell), ``'intensity'`` (sigma
        ``variable_sigma``) or ``'spatial'`` (a fraction ``spatial_fraction`` of
        the cells also shows location ``spatial_label``).
    cycle_effect
        ``''``, ``'level'`` (level rises ``cycle_fold``-fold from G1, 2N, to G2,
        4N, linearly in DNA content) or ``'pattern'`` (cells past mid S phase,
        DNA content > 3.0, also show location ``cycle_label``).
    translocation_from, translocation_to, onset_frame
        Time-lapse translocation: from frame ``onset_frame`` on, the signal of
        location ``translocation_from`` moves to ``translocation_to`` (most of it
        at the onset frame, the rest over the next frames).
    """

    name: str
    labels: tuple[int, ...]
    weights: tuple[float, ...] = ()
    level: float = 1.0
    cell_line: str = "U2OS-sim"
    variability: str = ""
    variable_sigma: float = 0.8
    spatial_label: int | None = None
    spatial_fraction: float = 0.4
    cycle_effect: str = ""
    cycle_fold: float = 3.0
    cycle_label: int | None = None
    translocation_from: int | None = None
    translocation_to: int | None = None
    onset_frame: int | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        labels = _as_tuple(self.labels)
        object.__setattr__(self, "labels", labels)
        weights = _as_tuple(self.weights, float) or tuple(1.0 for _ in labels)
        object.__setattr__(self, "weights", weights)
        if not 1 <= len(labels) <= 3:
            raise ValueError(f"protein {self.name!r}: needs 1-3 locations, got {labels}")
        if len(set(labels)) != len(labels):
            raise ValueError(f"protein {self.name!r}: duplicate locations {labels}")
        if len(weights) != len(labels) or min(weights) <= 0:
            raise ValueError(f"protein {self.name!r}: weights {weights} do not match {labels}")
        for lab in (*labels, self.spatial_label, self.cycle_label, self.translocation_to):
            if lab is not None and lab not in SUPPORTED_CLASSES:
                raise ValueError(f"protein {self.name!r}: class {lab} cannot be simulated")
        if self.variability not in ("", "intensity", "spatial"):
            raise ValueError(f"protein {self.name!r}: variability {self.variability!r}")
        if self.variability == "spatial" and self.spatial_label is None:
            raise ValueError(f"protein {self.name!r}: spatial variability needs spatial_label")
        if self.cycle_effect not in ("", "level", "pattern"):
            raise ValueError(f"protein {self.name!r}: cycle_effect {self.cycle_effect!r}")
        if self.cycle_effect == "pattern" and self.cycle_label is None:
            raise ValueError(f"protein {self.name!r}: cycle_effect 'pattern' needs cycle_label")
        moving = (self.translocation_from, self.translocation_to, self.onset_frame)
        if any(v is not None for v in moving):
            if any(v is None for v in moving):
                raise ValueError(
                    f"protein {self.name!r}: a translocation needs from, to and onset_frame"
                )
            if self.translocation_from not in labels:
                raise ValueError(
                    f"protein {self.name!r}: translocation_from {self.translocation_from} "
                    f"is not one of its locations {labels}"
                )
        if self.level <= 0:
            raise ValueError(f"protein {self.name!r}: level must be > 0")

    # -- derived -----------------------------------------------------------------
    @property
    def labels_str(self) -> str:
        """';'-joined sorted class indices, e.g. ``'0;25'``."""
        return join_labels(self.labels)

    @property
    def translocates(self) -> bool:
        return self.onset_frame is not None

    @property
    def style_seed(self) -> int:
        """A stable seed from the name: the protein's own look across fields."""
        return zlib.crc32(self.name.encode())

    def weights_at(self, timepoint: int) -> dict[int, float]:
        """Location -> relative signal at ``timepoint`` (translocation applied)."""
        out = dict(zip(self.labels, self.weights, strict=True))
        if not self.translocates or timepoint < self.onset_frame:
            return out
        moved = translocated_fraction(timepoint - self.onset_frame)
        w = out[self.translocation_from]
        out[self.translocation_from] = w * (1.0 - moved)
        out[self.translocation_to] = out.get(self.translocation_to, 0.0) + w * moved
        return {k: v for k, v in out.items() if v > 1e-6}

    def labels_at(self, timepoint: int) -> tuple[int, ...]:
        """Protein-level locations at ``timepoint`` (where most of the signal is)."""
        if not self.translocates or timepoint < self.onset_frame:
            return self.labels
        rest = [lab for lab in self.labels if lab != self.translocation_from]
        return tuple(sorted({*rest, self.translocation_to}))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["labels"] = list(self.labels)
        d["weights"] = list(self.weights)
        return d


def translocated_fraction(frames_since_onset: int) -> float:
    """Fraction of the moving pool that has arrived, ``frames_since_onset`` >= 0.

    75 % at the onset frame, then first-order kinetics (≈ 94 % one frame later).
    """
    if frames_since_onset < 0:
        return 0.0
    return float(1.0 - 0.25 * 0.25**frames_since_onset)


def join_labels(labels) -> str:
    """``(25, 0)`` -> ``'0;25'``; empty -> ``''``."""
    return ";".join(str(int(v)) for v in sorted(set(labels)))


@dataclass(frozen=True)
class CellLine:
    """Morphology of a simulated cell line; lengths in µm."""

    name: str
    cell_radius_um: float  # median radius of the cell body
    cell_radius_cv: float
    elongation_max: float  # max long/short axis ratio of a cell
    nucleus_radius_um: float  # median nucleus radius of a G1 (2N) cell
    nucleus_radius_cv: float
    confluence: tuple[float, float]  # range of the fraction of the field covered
    stress_fibres: float  # how prominent actin stress fibres are (0..1)
    mitotic_fraction: float = 0.03  # fraction of cells in mitosis (rounded, condensed DNA)


CELL_LINES: dict[str, CellLine] = {
    # U2OS: large flat osteosarcoma cells, 25–40 µm, prominent stress fibres.
    "U2OS-sim": CellLine("U2OS-sim", 14.0, 0.18, 1.9, 5.0, 0.09, (0.55, 0.9), 1.0),
    # smaller, rounder epithelial cells growing in tight islands.
    "A431-sim": CellLine("A431-sim", 10.5, 0.15, 1.4, 4.5, 0.08, (0.7, 0.95), 0.4),
}
