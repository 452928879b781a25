"""Normalize jobs: flat-field per plate, OME-Zarr per shard, plate metadata per plate."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import atomic_path, write_text
from ..parallel import map_ordered
from .common import log, quarantine_frame, read_manifest, views, write_receipt


def run_flatfield(shard_manifests: list[str], out: str, *, params: dict) -> None:
    """Fit one flat-field per channel role for a plate from a sample of its fields."""
    from ..normalize import estimate_plate_flatfield

    rows = pd.concat([read_manifest(p) for p in sorted(shard_manifests)], ignore_index=True)
    flat = estimate_plate_flatfield(
        rows,
        sample_size=int(params.get("flatfield_sample", 100)),
        seed=int(params.get("seed", 0)),
        params=params,
    )
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.asarray(flat, dtype=np.float32))
    log.info("flat-field for %d fields written to %s", len(rows), out)


def _normalize_view(rows: pd.DataFrame, *, zarr_root: str, params: dict, flatfields):
    from ..normalize import normalize_shard

    return normalize_shard(rows, zarr_root, params=params, flatfields=flatfields)


def run_normalize(
    shard_manifest: str,
    zarr_root: str,
    receipt: str,
    quarantine: str,
    *,
    params: dict,
    flatfield: str | None,
    threads: int = 1,
) -> pd.DataFrame:
    rows = read_manifest(shard_manifest)
    flatfields = None
    if flatfield and params.get("flatfield", True):
        plate = rows["plate"].iloc[0]
        flatfields = {plate: np.load(flatfield)}
    results = map_ordered(
        partial(_normalize_view, zarr_root=zarr_root, params=params, flatfields=flatfields),
        views(rows),
        workers=threads,
    )
    done = pd.concat([r[0] for r in results], ignore_index=True) if results else pd.DataFrame()
    bad = pd.concat([r[1] for r in results], ignore_index=True) if results else pd.DataFrame()
    n_failed = 0 if done.empty else int((~done["qc_pass"].astype(bool)).sum())
    log.info(
        "normalize %s: %d fields written (%d fail QC), %d quarantined",
        Path(shard_manifest).stem,
        len(done),
        n_failed,
        len(bad),
    )
    write_receipt(quarantine_frame(bad.to_dict("records")), quarantine, params=params)
    # timings go to the log, not the receipt: receipts must be byte-identical on rerun
    timing = [c for c in ("read_s", "process_s", "write_s") if c in done]
    if timing:
        log.info("normalize timings (s, total): %s", done[timing].sum().round(2).to_dict())
    done = done.drop(columns=timing)
    write_receipt(done.sort_values("field_id").reset_index(drop=True), receipt, params=params)
    return done


def run_plate_metadata(
    zarr_root: str, plate: str, shard_manifests: list[str], receipts: list[str], out: str
) -> None:
    """Write the HCS plate and well metadata once all of the plate's shards are done."""
    from ..omezarr import write_plate_metadata

    rows = pd.concat([read_manifest(p) for p in sorted(shard_manifests)], ignore_index=True)
    written = pd.concat([pd.read_parquet(r) for r in sorted(receipts)], ignore_index=True)
    rows = rows[rows["field_id"].isin(set(written["field_id"]))]
    write_plate_metadata(zarr_root, plate, rows)
    write_text(
        f"plate\t{plate}\nwells\t{rows['well'].nunique()}\nfields\t{rows['view_id'].nunique()}\n",
        out,
    )
