"""Clear job: remove out-of-focus haze from every field of a shard, stored beside the raw image."""

from __future__ import annotations

import os
from functools import partial

import numpy as np
import pandas as pd

from ..parallel import map_ordered
from .common import log, write_receipt

#: Emission wavelengths (µm) assumed per role when the metadata gives none (HPA dyes).
DEFAULT_WAVELENGTHS_UM = {"nucleus": 0.461, "microtubules": 0.603, "er": 0.665, "protein": 0.519}


def clear_field(image: np.ndarray, *, roles, pixel_size_um, z_step_um, params: dict) -> np.ndarray:
    """Clear a (t, c, z, y, x) field plane by plane (2D) or stack by stack (3D).

    Returns the same shape and dtype as ``image``: cleared intensities are rounded and
    clipped back into the raw dtype so downstream stages read one kind of array.
    """
    from ..clearing import clear_image

    wavelengths = {**DEFAULT_WAVELENGTHS_UM, **(params.get("wavelengths_um") or {})}
    options = {"device": os.environ.get("LOCATLAS_DEVICE", "auto")}
    options |= {
        k: params[k]
        for k in (
            "mode",
            "feature_scale_um",
            "strength",
            "na",
            "immersion_index",
            "iterations",
            "regularization",
            "regularizer",
            "threshold",
            "baseline_iterations",
            "feature_scale_z_um",
            "tile_size",
        )
        if k in params
    }
    out = np.empty_like(image)
    info = np.iinfo(image.dtype) if np.issubdtype(image.dtype, np.integer) else None
    for t in range(image.shape[0]):
        for c, role in enumerate(roles):
            stack = image[t, c]  # clear_image converts to float32 (one pass)
            plane_or_stack = stack[0] if stack.shape[0] == 1 else stack
            cleared = clear_image(
                plane_or_stack,
                pixel_size_um=pixel_size_um,
                z_step_um=z_step_um if stack.shape[0] > 1 else None,
                wavelength_um=float(wavelengths.get(role, 0.52)),
                **options,
            ).reshape(stack.shape)
            if info is not None:  # in place: a field is 4 planes of 16 MB each
                np.clip(np.rint(cleared, out=cleared), info.min, info.max, out=cleared)
            out[t, c] = cleared
    return out


def _clear_one(rec: dict, *, params: dict) -> dict:
    from ..omezarr import read_field_image, write_field_image

    image, meta = read_field_image(rec["zarr_path"])
    roles = list(meta["channel_roles"])
    cleared = clear_field(
        image,
        roles=roles,
        pixel_size_um=float(meta["pixel_size_um"]),
        z_step_um=meta.get("z_step_um"),
        params=params,
    )
    write_field_image(
        rec["zarr_path"],
        cleared,
        name="cleared",
        pixel_size_um=float(meta["pixel_size_um"]),
        z_step_um=meta.get("z_step_um"),
        channel_roles=roles,
        attrs={"clearing": {k: v for k, v in params.items() if k != "enabled"}},
    )
    return {"view_path": rec["zarr_path"], "cleared": True}


def run_clear(normalize_receipt: str, receipt: str, *, params: dict, threads: int = 1) -> None:
    fields = pd.read_parquet(normalize_receipt)
    fields = fields[fields["qc_pass"].astype(bool)]
    view_paths = sorted(set(fields["zarr_path"]))
    enabled = bool(params.get("enabled", True))
    if enabled:
        map_ordered(
            partial(_clear_one, params=params),
            [{"zarr_path": p} for p in view_paths],
            workers=threads,
        )
    out = fields[["field_id", "view_id", "timepoint", "zarr_path"]].copy()
    out["image"] = "cleared" if enabled else "raw"
    log.info("clear: %d views (%s)", len(view_paths), "cleared" if enabled else "disabled")
    write_receipt(out.sort_values("field_id").reset_index(drop=True), receipt, params=params)
