"""Segmentation parameters: one frozen dataclass, every size in µm.

Sizes are physical so that one configuration works at any pixel size; the
algorithm converts them to pixels of its working scale (see ``working_factor``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

BACKENDS = ("classic", "cellpose")


@dataclass(frozen=True)
class SegmentParams:
    """Parameters of :func:`locatlas.segment.segment_field`.

    Attributes
    ----------
    backend : {"classic", "cellpose"}
        ``classic``: threshold + distance/intensity watershed for nuclei, seeded
        watershed on the cytoplasmic channels for cells. ``cellpose``: a Cellpose
        model given by local path (``cellpose_model``) segments the nuclei (and,
        with ``cellpose_cell_model``, the cells); needs ``cellpose`` importable.
    nucleus_diameter_um : float
        Typical nucleus diameter (µm). Sets the working scale, filter sizes and the
        spacing of nucleus seeds. Within a factor ~1.5 of the truth is fine.
    min_nucleus_area_um2 : float or None
        Objects smaller than this are debris and dropped. Default
        0.08 × the area of a typical nucleus (small enough to keep mitotic figures).
    nucleus_threshold_factor : float
        Global foreground threshold as a multiple of the Otsu threshold of the
        background-corrected nucleus channel. Below 1 keeps dim nuclei; the local
        contrast rule below then sets their boundaries.
    nucleus_local_contrast : float
        A pixel belongs to a nucleus only if it is brighter than this fraction of the
        brightest (smoothed) intensity within a quarter diameter: this draws the
        boundary at the half-maximum of each nucleus whatever its brightness and cuts
        the dim necks between touching nuclei. 0 turns it off.
    nucleus_edge_fraction : float
        After splitting, each nucleus is grown back into the global foreground and
        keeps the pixels brighter than this fraction of its own mean signal (then its
        small holes are filled): textured nuclei get their dark chromatin back. Lower
        values give larger nuclei (0.5 ≈ half-maximum of a blurred edge); 0 turns
        the step off.
    nucleus_split_distance_um : float or None
        Minimum distance between the centres of two touching nuclei that are split.
        Default 0.35 × ``nucleus_diameter_um`` (over-split elongated nuclei are merged
        back when no saddle separates them).
    background_radius_um : float or None
        Radius of the local-background estimate (a smoothed minimum filter) that
        removes uneven illumination. Default 1.5 × ``nucleus_diameter_um``.
    cell_threshold_factor : float
        Cytoplasm foreground threshold as a multiple of the Otsu threshold of the
        (background-corrected, normalised) mean of the cytoplasmic channels.
    cell_max_distance_um : float or None
        Cells reach at most this far from their nucleus boundary. Default
        2.5 × ``nucleus_diameter_um``.
    cell_orphan_distance_um : float or None
        Cytoplasm farther than this from every nucleus seeds a "decoy" region that is
        dropped: a cell whose nucleus is missing is not handed to its neighbours.
        Default 2 × ``nucleus_diameter_um``; 0 turns it off (then only
        ``cell_max_distance_um`` limits how far a neighbour can reach).
    cell_expand_um : float or None
        Without any cytoplasmic channel, cells are the nuclei grown by this distance
        (µm). Default 0.5 × ``nucleus_diameter_um``.
    cell_compactness : float
        Compactness of the cell watershed, per µm of distance from the seed (0: pure
        intensity watershed; larger values, e.g. 0.01, give more Voronoi-like cells
        where the cytoplasm stain shows no boundary between touching cells).
    work_nucleus_px : float
        Minimum nucleus diameter in pixels of the working scale of the nucleus step:
        the image is binned by the largest integer factor that keeps a nucleus at
        least this wide (and the grid at least ``MIN_WORK_GRID`` = 512 px on its short
        side); never upsampled.
    work_cell_nucleus_px : float
        The same for the cell step, which works on a coarser grid (cells are larger
        and their borders need less precision than the nuclei).
    cellpose_model : str or None
        Local path of a Cellpose model file for nuclei (``backend="cellpose"``).
    cellpose_cell_model : str or None
        Local path of a Cellpose model file for whole cells (optional; without it
        cells are grown from the Cellpose nuclei as in the classic backend).
    """

    backend: str = "classic"
    nucleus_diameter_um: float = 10.0
    min_nucleus_area_um2: float | None = None
    nucleus_threshold_factor: float = 0.5
    nucleus_local_contrast: float = 0.55
    nucleus_edge_fraction: float = 0.6
    nucleus_split_distance_um: float | None = None
    background_radius_um: float | None = None
    cell_threshold_factor: float = 1.0
    cell_max_distance_um: float | None = None
    cell_orphan_distance_um: float | None = None
    cell_expand_um: float | None = None
    cell_compactness: float = 0.0
    work_nucleus_px: float = 16.0
    work_cell_nucleus_px: float = 12.0
    cellpose_model: str | None = None
    cellpose_cell_model: str | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"SegmentParams.backend={self.backend!r}: expected one of {BACKENDS}")
        if self.backend == "cellpose" and not self.cellpose_model:
            raise ValueError(
                "SegmentParams: backend='cellpose' needs cellpose_model (a local path)"
            )
        for name in ("nucleus_diameter_um", "work_nucleus_px", "work_cell_nucleus_px"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"SegmentParams.{name} must be > 0, got {getattr(self, name)!r}")
        for name in (
            "min_nucleus_area_um2",
            "nucleus_split_distance_um",
            "background_radius_um",
            "cell_max_distance_um",
            "cell_orphan_distance_um",
            "cell_expand_um",
        ):
            value = getattr(self, name)
            if value is not None and not float(value) >= 0:
                raise ValueError(f"SegmentParams.{name} must be >= 0 or None, got {value!r}")
        if not 0 <= float(self.nucleus_local_contrast) < 1:
            raise ValueError(
                "SegmentParams.nucleus_local_contrast must be in [0, 1), "
                f"got {self.nucleus_local_contrast!r}"
            )
        if not 0 <= float(self.nucleus_edge_fraction) < 1:
            raise ValueError(
                "SegmentParams.nucleus_edge_fraction must be in [0, 1), "
                f"got {self.nucleus_edge_fraction!r}"
            )
        for name in ("nucleus_threshold_factor", "cell_threshold_factor"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"SegmentParams.{name} must be > 0, got {getattr(self, name)!r}")
        if not float(self.cell_compactness) >= 0:
            raise ValueError(
                f"SegmentParams.cell_compactness must be >= 0, got {self.cell_compactness!r}"
            )

    # Derived sizes (µm), with their documented defaults.
    @property
    def min_nucleus_area(self) -> float:
        if self.min_nucleus_area_um2 is not None:
            return float(self.min_nucleus_area_um2)
        return 0.08 * 3.141592653589793 * self.nucleus_diameter_um**2 / 4

    @property
    def split_distance(self) -> float:
        if self.nucleus_split_distance_um is not None:
            return float(self.nucleus_split_distance_um)
        return 0.35 * self.nucleus_diameter_um

    @property
    def background_radius(self) -> float:
        if self.background_radius_um is not None:
            return float(self.background_radius_um)
        return 1.5 * self.nucleus_diameter_um

    @property
    def cell_max_distance(self) -> float:
        if self.cell_max_distance_um is not None:
            return float(self.cell_max_distance_um)
        return 2.5 * self.nucleus_diameter_um

    @property
    def orphan_distance(self) -> float:
        if self.cell_orphan_distance_um is not None:
            return float(self.cell_orphan_distance_um)
        return 2.0 * self.nucleus_diameter_um

    @property
    def cell_expand(self) -> float:
        if self.cell_expand_um is not None:
            return float(self.cell_expand_um)
        return 0.5 * self.nucleus_diameter_um

    def working_factor(self, pixel_size_um: float, shape: tuple[int, ...] | None = None) -> int:
        """Integer binning factor so that a nucleus spans at least ``work_nucleus_px``
        pixels; capped so that the working grid keeps >= ``MIN_WORK_GRID`` pixels on
        its short side (large nuclei keep smooth outlines)."""
        diameter_px = self.nucleus_diameter_um / pixel_size_um
        return _cap(max(1, int(diameter_px // self.work_nucleus_px)), shape)

    def cell_factor(self, pixel_size_um: float, shape: tuple[int, ...] | None = None) -> int:
        """Integer binning factor of the cell step (``work_cell_nucleus_px``), capped
        as :meth:`working_factor`."""
        diameter_px = self.nucleus_diameter_um / pixel_size_um
        return _cap(max(1, int(diameter_px // self.work_cell_nucleus_px)), shape)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: The working grids of the nucleus and cell steps keep at least this many pixels on
#: the short side of the field.
MIN_WORK_GRID = 512


def _cap(factor: int, shape: tuple[int, ...] | None) -> int:
    if shape is None:
        return factor
    return max(1, min(factor, min(shape[-2:]) // MIN_WORK_GRID))


def as_params(params: SegmentParams | Mapping[str, Any] | None) -> SegmentParams:
    """Coerce ``None``, a mapping (e.g. the ``segment`` config section) or a
    :class:`SegmentParams` into a :class:`SegmentParams`; unknown keys raise."""
    if params is None:
        return SegmentParams()
    if isinstance(params, SegmentParams):
        return params
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be SegmentParams, a mapping or None, not {type(params)}")
    known = {f.name for f in fields(SegmentParams)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"unknown segmentation parameter(s) {unknown}; known: {sorted(known)}")
    return SegmentParams(**dict(params))
