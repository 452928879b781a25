"""Ingest job: sample sheet or folder -> manifest, per-shard manifests, quarantine."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..atomic import write_parquet, write_text
from .common import log, quarantine_frame


def _frames_equal(path: Path, df: pd.DataFrame) -> bool:
    if not path.exists():
        return False
    try:
        old = pd.read_parquet(path)
    except (OSError, ValueError):
        return False
    return old.reset_index(drop=True).equals(df.reset_index(drop=True))


def shard_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per shard: plate, number of views and fields, whether it holds training labels."""
    has_labels = manifest["labels"].fillna("").astype(str) != ""
    is_train = manifest["split"].fillna("").astype(str).isin(["train", ""]) & has_labels
    sizes = [c for c in ("size_c", "size_z", "size_y", "size_x") if c in manifest]
    mpx = manifest[sizes].prod(axis=1) / 1e6 if sizes else pd.Series(16.0, index=manifest.index)
    # a view's time points are processed together: its megapixels add up
    view_mpx = mpx.groupby(manifest["view_id"]).transform("sum")
    g = manifest.assign(_train=is_train, _labelled=has_labels, _mpx=view_mpx).groupby(
        "shard", sort=True
    )
    return pd.DataFrame(
        {
            "shard": g.size().index,
            "plate": g["plate"].first().values,
            "n_fields": g.size().values,
            "n_views": g["view_id"].nunique().values,
            "n_train": g["_train"].sum().values.astype(int),
            "n_labelled": g["_labelled"].sum().values.astype(int),
            "max_field_mpx": g["_mpx"].max().values.round(3),
        }
    )


def run_ingest(
    samples: str,
    out_dir: str,
    *,
    pattern: str | None,
    roles_override: dict | None,
    pixel_size_um: float | None,
    shard_size: int,
    limits: dict | None = None,
) -> pd.DataFrame:
    """Write ``manifest.parquet``, ``shards.tsv``, ``quarantine.parquet`` and
    ``shards/<shard>.parquet`` under ``out_dir``.

    A per-shard manifest is rewritten only when its content changed, so adding a
    plate leaves every existing shard's file (and so its downstream jobs) untouched.
    """
    from ..ingest import IngestLimits, build_manifest

    limits = dict(limits or {})
    checksum = limits.pop("checksum", "fast")
    out = Path(out_dir)
    manifest, quarantine = build_manifest(
        samples,
        pattern=pattern,
        roles_override=roles_override or None,
        pixel_size_um=pixel_size_um,
        shard_size=shard_size,
        limits=IngestLimits(**limits),
        checksum=checksum,
    )
    if manifest.empty:
        raise SystemExit(
            f"ingest: no usable field in {samples} ({len(quarantine)} quarantined); see "
            f"{out / 'quarantine.parquet'}"
        )
    manifest = manifest.sort_values(["shard", "view_id", "timepoint"]).reset_index(drop=True)
    shard_dir = out / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    kept = set()
    for shard, rows in manifest.groupby("shard", sort=True):
        path = shard_dir / f"{shard}.parquet"
        kept.add(path.name)
        if not _frames_equal(path, rows):
            write_parquet(rows, path)
    for stale in shard_dir.glob("*.parquet"):
        if stale.name not in kept:
            stale.unlink()
    shards = shard_table(manifest)
    write_parquet(quarantine_frame(quarantine.to_dict("records")), out / "quarantine.parquet")
    write_text(shards.to_csv(sep="\t", index=False), out / "shards.tsv")
    write_parquet(manifest, out / "manifest.parquet")
    log.info(
        "ingest: %d fields in %d shards, %d quarantined",
        len(manifest),
        len(shards),
        len(quarantine),
    )
    for rec in quarantine.to_dict("records"):
        log.warning("quarantined %s: %s", rec.get("source"), rec.get("reason"))
    return manifest
