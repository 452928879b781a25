"""Segment job: nuclei + cells per field, per-cell table, crops, labels into the OME-Zarr field."""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd

from ..atomic import write_parquet
from ..config import config_hash
from ..crops_store import crops_writer
from ..parallel import imap_ordered
from ..provenance import provenance
from .common import log, read_manifest, write_receipt

#: Manifest columns copied onto every cell row.
CELL_METADATA = [
    "field_id",
    "view_id",
    "plate",
    "well",
    "field",
    "timepoint",
    "protein",
    "cell_line",
    "split",
    "labels",
    "checksum",
]


def _segment_view(view: pd.DataFrame, *, image_name: str | None, params: dict):
    """Segment one view; a view that cannot be segmented is reported, not fatal."""
    try:
        return _segment_view_unsafe(view, image_name=image_name, params=params)
    except (ValueError, RuntimeError, OSError, KeyError) as err:
        log.exception("segment: view %s failed", view["view_id"].iloc[0])
        qc = [
            {
                "field_id": fid,
                "n_nuclei": 0,
                "n_cells": 0,
                "flags": f"failed: {type(err).__name__}: {err}",
            }
            for fid in view["field_id"]
        ]
        return [], [], [], qc, None


def _crop_geometry(params: dict) -> tuple[float, int]:
    """Crop side in µm and px (the schema's defaults when a caller leaves them out)."""
    return float(params.get("crop_size_um", 40.0)), int(params.get("crop_size_px", 96))


def _label_stack(planes: list[np.ndarray]) -> np.ndarray:
    """(t, 1, Y, X) uint32 labels of the time points: the int32 labels (>= 0) are
    reinterpreted, not converted, and one time point is not copied."""
    stack = planes[0][None] if len(planes) == 1 else np.stack(planes)
    return stack.astype(np.int32, copy=False)[:, None].view(np.uint32)


def _segment_view_unsafe(view: pd.DataFrame, *, image_name: str | None, params: dict):
    from ..omezarr import read_field_image, write_labels
    from ..segment import extract_crops, measure_cells, segment_field

    path = view["zarr_path"].iloc[0]
    image, meta = read_field_image(path, name=image_name)
    roles = list(meta["channel_roles"])
    pixel = float(meta["pixel_size_um"])
    nuclei_t, cells_t, tables, crops, masks, qc_rows = [], [], [], [], [], []
    seg_params = {k: v for k, v in params.items() if k not in ("crop_size_um", "crop_size_px")}
    size_um, size_px = _crop_geometry(params)
    for rec in view.sort_values("timepoint").to_dict("records"):
        t = int(rec["timepoint"])
        # z-stacks are segmented on their maximum projection (after clearing, the haze
        # that would dominate a raw projection is gone).
        plane = image[t].max(axis=1)
        nuclei, cells, qc = segment_field(
            plane, roles=roles, pixel_size_um=pixel, params=seg_params
        )
        table = measure_cells(plane, nuclei, cells, roles=roles, pixel_size_um=pixel)
        c, m = extract_crops(
            plane,
            cells,
            nuclei,
            pixel_size_um=pixel,
            size_um=size_um,
            size_px=size_px,
            cell_ids=table["cell_id"].to_numpy(),
            centroids=(table["centroid_y"].to_numpy(), table["centroid_x"].to_numpy()),
        )
        for col in CELL_METADATA:
            table.insert(min(len(table.columns), CELL_METADATA.index(col)), col, rec.get(col, ""))
        flags = list(qc.get("flags", []))
        table["qc_pass"] = ~table["edge"].astype(bool) & (len(flags) == 0)
        tables.append(table)
        crops.append(c)
        masks.append(m)
        nuclei_t.append(nuclei)
        cells_t.append(cells)
        qc_rows.append(
            {
                "field_id": rec["field_id"],
                "n_nuclei": int(qc.get("n_nuclei", nuclei.max())),
                "n_cells": int(qc.get("n_cells", len(table))),
                "flags": ";".join(map(str, flags)),
            }
        )
    write_labels(path, "nuclei", _label_stack(nuclei_t))
    write_labels(path, "cells", _label_stack(cells_t))
    return tables, crops, masks, qc_rows, roles


def _views_in_field_order(fields: pd.DataFrame) -> list[pd.DataFrame]:
    """Views ordered by their first field id, each view's fields by id: together, the
    fields in id order (a view's field ids all start with the view id, so no other
    view's fall between them). The crops can then be written as each view is done,
    already in the order of the sorted cell table."""
    views = (g.sort_values("field_id") for _, g in fields.groupby("view_id"))
    return sorted(views, key=lambda g: g["field_id"].iloc[0])


def _is_identity(order: np.ndarray) -> bool:
    return bool((order == np.arange(order.size)).all())


def run_segment(
    clear_receipt: str,
    shard_manifest: str,
    cells_out: str,
    crops_out: str,
    receipt: str,
    *,
    params: dict,
    threads: int = 1,
) -> None:
    fields = pd.read_parquet(clear_receipt)
    manifest = read_manifest(shard_manifest)
    meta_cols = [c for c in CELL_METADATA if c in manifest.columns and c != "field_id"]
    fields = fields[["field_id", "zarr_path", "image"]].merge(
        manifest[["field_id", *meta_cols]], on="field_id", how="left"
    )
    image_name = "cleared" if (fields["image"] == "cleared").any() else None
    groups = _views_in_field_order(fields)
    size_um, size_px = _crop_geometry(params)
    attrs = {"channels": [], "size_um": size_um, "size_px": size_px, "um_per_px": size_um / size_px}
    tables, qc, channels = [], [], None
    segment = partial(_segment_view, image_name=image_name, params=params)
    with crops_writer(crops_out, size_px=size_px, attrs=attrs) as writer:
        for view_tables, view_crops, view_masks, view_qc, roles in imap_ordered(
            segment, groups, workers=threads
        ):
            # fields were segmented in time order; crops go out in field-id order
            by_id = np.argsort([q["field_id"] for q in view_qc], kind="stable")
            if len(view_tables) == len(by_id):  # (a failed view has no tables)
                view_tables = [view_tables[i] for i in by_id]
                view_crops = [view_crops[i] for i in by_id]
                view_masks = [view_masks[i] for i in by_id]
            for c, m in zip(view_crops, view_masks, strict=True):
                writer.append(c, m)
            tables += view_tables
            qc += view_qc
            channels = channels or (list(roles) if roles is not None else None)
        attrs["channels"] = channels or []
    if tables:
        cells = pd.concat(tables, ignore_index=True)
    else:
        cells = pd.DataFrame(columns=[*CELL_METADATA, "cell_id", "qc_pass"])
    order = np.lexsort((cells["cell_id"].to_numpy(), cells["field_id"].to_numpy()))
    if not _is_identity(order):
        raise RuntimeError(f"{cells_out}: cells are not in (field_id, cell_id) order")
    write_parquet(
        cells,
        cells_out,
        metadata=provenance(
            config_hash=config_hash(params),
            input_checksums=config_hash(sorted(manifest.get("checksum", pd.Series()).astype(str))),
        ),
    )
    log.info("segment: %d fields, %d cells", len(qc), len(cells))
    write_receipt(pd.DataFrame(qc).sort_values("field_id"), receipt, params=params)
