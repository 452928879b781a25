"""One field in, nuclei + cells + QC out: the entry point the workflow calls."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from .. import ROLES
from ._scale import upsample_labels, upsampled_label_counts
from .cells import cells_working
from .nuclei import nuclei_working
from .params import SegmentParams, as_params

#: Roles whose channel outlines the cytoplasm (used to grow cells), in order of use.
CYTO_ROLES = ("microtubules", "er")


def check_field(image: np.ndarray, roles: Sequence[str], pixel_size_um: float) -> np.ndarray:
    """Validate a (C, Y, X) field and its roles; return it as an ndarray.

    Raises ``ValueError`` naming the problem (wrong shape, unknown or repeated role,
    missing ``nucleus``, bad pixel size, non-finite values).
    """
    image = np.asarray(image)
    roles = list(roles)
    if image.ndim != 3:
        raise ValueError(f"expected a (C, Y, X) image, got shape {image.shape}")
    if image.shape[0] != len(roles):
        raise ValueError(f"image has {image.shape[0]} channels but {len(roles)} roles {roles}")
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise ValueError(f"unknown channel role(s) {unknown}; known roles: {list(ROLES)}")
    if len(set(roles)) != len(roles):
        raise ValueError(f"repeated channel role in {roles}")
    if "nucleus" not in roles:
        raise ValueError(f"segmentation needs a 'nucleus' channel; roles are {roles}")
    if not (np.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise ValueError(f"pixel_size_um must be a positive number, got {pixel_size_um!r}")
    if image.shape[1] < 8 or image.shape[2] < 8:
        raise ValueError(f"image too small to segment: {image.shape}")
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise ValueError(f"image dtype {image.dtype} is not a real number type")
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        raise ValueError("image contains NaN or infinite values")
    return image


def _flags(
    image: np.ndarray,
    roles: Sequence[str],
    nucleus_px: np.ndarray,
    nuc_info: dict,
    cell_info: dict,
    pixel_size_um: float,
    params: SegmentParams,
) -> list[str]:
    flags = []
    n = nucleus_px.size - 1
    if n == 0:
        flags.append("no_nuclei")
    elif nuc_info.get("contrast", np.inf) < 10:
        flags.append("low_contrast")
    if n:
        areas = nucleus_px[1:] * pixel_size_um**2
        expected = np.pi * params.nucleus_diameter_um**2 / 4
        med = float(np.median(areas))
        if not 0.25 * expected <= med <= 4 * expected:
            flags.append("nucleus_size_mismatch")
    if cell_info.get("grown") == "expanded":
        flags.append("no_cytoplasm_channel")
    if cell_info.get("orphan_area_fraction", 0.0) > 0.25:
        flags.append("orphan_cytoplasm")
    dna = image[list(roles).index("nucleus")]
    if np.issubdtype(dna.dtype, np.integer):
        top = np.iinfo(dna.dtype).max
        sample = dna[::4, ::4]
        if np.count_nonzero(sample >= top) > 0.005 * sample.size:
            flags.append("saturated")
    return flags


def segment_field(
    image: np.ndarray,
    *,
    roles: Sequence[str],
    pixel_size_um: float,
    params: SegmentParams | dict | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Segment the nuclei and cells of one field.

    Parameters
    ----------
    image : ndarray (C, Y, X)
        One plane of a field, any real dtype; channel ``i`` has role ``roles[i]``.
    roles : sequence of str
        Channel roles, a subset of ``locatlas.ROLES``; ``'nucleus'`` is required.
        Cells grow on ``microtubules`` and ``er`` (whichever exist), else on
        ``protein``, else the nuclei are expanded by ``cell_expand_um``.
    pixel_size_um : float
        Pixel size in µm (all size parameters are in µm).
    params : SegmentParams, dict or None
        Parameters (dict keys are the :class:`SegmentParams` field names).

    Returns
    -------
    nuclei : ndarray (Y, X) int32
        Nucleus labels 1..n, 0 = background.
    cells : ndarray (Y, X) int32
        Cell ``k`` contains nucleus ``k`` (ids 1..n). A nucleus without grown
        cytoplasm gets a cell equal to its nucleus; cytoplasm without a nucleus is
        dropped (counted in ``qc``).
    qc : dict
        ``n_nuclei``, ``n_cells``, ``flags`` (list of str: ``no_nuclei``,
        ``low_contrast``, ``nucleus_size_mismatch``, ``no_cytoplasm_channel``,
        ``orphan_cytoplasm``, ``saturated``), ``n_orphan_regions``,
        ``orphan_area_fraction``, ``working_factor``, ``nucleus_threshold``,
        ``backend``, ``timings`` (seconds per step).

    Examples
    --------
    >>> nuclei, cells, qc = segment_field(img, roles=["nucleus", "er"],
    ...                                   pixel_size_um=0.2)  # doctest: +SKIP
    """
    t0 = time.perf_counter()
    params = as_params(params)
    image = check_field(image, roles, pixel_size_um)
    roles = list(roles)
    shape = image.shape[1:]
    dna = image[roles.index("nucleus")]
    cyto_roles = [r for r in CYTO_ROLES if r in roles] or [r for r in ("protein",) if r in roles]
    cyto = [image[roles.index(r)] for r in cyto_roles]
    timings: dict[str, float] = {}

    if params.backend == "cellpose":
        from .cellpose_backend import cellpose_segment

        nuclei, cells_full, nuc_info = cellpose_segment(
            image, roles=roles, pixel_size_um=pixel_size_um, params=params
        )
        factor, nucleus_px = 1, None  # (pixels per nucleus counted below)
    else:
        nuclei_w, factor, nuc_info = nuclei_working(dna, pixel_size_um=pixel_size_um, params=params)
        nuclei = upsample_labels(nuclei_w, factor, shape)
        nucleus_px = upsampled_label_counts(nuclei_w, factor, shape)  # no full-size pass
        cells_full = None
    timings["nuclei"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    if cells_full is not None:
        cells, cell_info = cells_full, {"grown": "cellpose"}
        cell_info.update(nuc_info.pop("cell_info", {}))
    else:
        cells_w, cell_factor, cell_info = cells_working(
            cyto, nuclei, pixel_size_um=pixel_size_um, params=params
        )
        cells = upsample_labels(cells_w, cell_factor, shape)
    timings["cells"] = time.perf_counter() - t1

    # Cell k must contain all of nucleus k.
    nuclei = np.ascontiguousarray(nuclei, dtype=np.int32)
    cells = np.ascontiguousarray(cells, dtype=np.int32)  # made here: updated in place
    np.copyto(cells, nuclei, where=nuclei > 0)
    if nucleus_px is None:
        nucleus_px = np.bincount(nuclei.ravel())
    n = nucleus_px.size - 1  # the largest nucleus id
    flags = _flags(image, roles, nucleus_px, nuc_info, cell_info, pixel_size_um, params)
    timings["total"] = time.perf_counter() - t0
    qc = {
        "n_nuclei": n,
        "n_cells": n,
        "flags": flags,
        "n_orphan_regions": int(cell_info.get("n_orphan_regions", 0)),
        "orphan_area_fraction": float(cell_info.get("orphan_area_fraction", 0.0)),
        "working_factor": int(factor),
        "nucleus_threshold": float(nuc_info.get("threshold", float("nan"))),
        "cyto_roles": cyto_roles,
        "backend": params.backend,
        "timings": timings,
    }
    return nuclei, cells, qc
