"""Build the manifest: one row per field of view × time point, sharded per plate.

Ingest only probes metadata (file headers, vendor metadata); pixels are read later,
field by field, with :func:`read_field_pixels`. Bad input goes to the quarantine
table with the file and the reason; everything else goes on.

Derived identifiers (when the sheet has no plate/well/field, or for a directory):

* HPA stems that encode ``<plate>_<well>_<field>`` (``89_B5_1``,
  ``B2AI_1_untreated_A1_R1``), optionally followed by ``_t<timepoint>`` (the
  simulator's ``P1_B05_1_t000``), give those values;
* otherwise plate = the name of the folder holding the source (for per-colour
  folders, the folder above them), well = ``A01``, field = a counter from 1 within
  (plate, well) over sources in sheet order (directories: sorted path order; Kaggle
  layout: ``train.csv`` row order), skipping field numbers given explicitly. Each
  scene (and each unstitched mosaic tile) of a file takes the next number. Counters
  follow the listing, so adding files to a directory can renumber the fields after
  them: use a sample sheet with explicit plate/well/field for ids that never move.

Plate names are stored path-safe (:func:`locatlas.ids.safe_name`: ``B2AI_1`` ->
``B2AI-1``), as in the field ids.

Sources may be URLs (``s3://bucket/prefix/`` as the folder, a sheet in object storage,
or ``s3://`` URLs in a sheet's ``source`` column; :mod:`locatlas.remote`). They are
treated like local paths (object names as file names, prefixes as folders), so the
same files give the same manifest rows locally and in object storage, except for
``source``, which keeps the URL.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from locatlas import remote
from locatlas.ids import (
    make_field_id,
    make_shard_id,
    make_view_id,
    normalize_well,
    parse_well,
    safe_name,
)
from locatlas.ingest.detect import (
    NON_IMAGE_EXTENSIONS,
    detect_format,
    format_from_extension,
)
from locatlas.ingest.errors import IngestError
from locatlas.ingest.hpa import (
    HPA_COLOURS,
    clear_listing_cache,
    exists_listed,
    find_channel_files,
    group_hpa_files,
    is_kaggle_layout,
    parse_stem,
    probe_hpa,
    read_kaggle_rows,
    resolve_hpa_files,
)
from locatlas.ingest.planes import decode_plane, fast_checksum, full_checksum, read_file_bytes
from locatlas.ingest.quarantine import quarantine_frame, quarantine_record, record_from_error
from locatlas.ingest.readers import (
    ChannelInfo,
    SceneInfo,
    package_version,
    probe_file,
    read_file_field,
)
from locatlas.ingest.roles import assign_roles
from locatlas.ingest.samplesheet import read_samplesheet
from locatlas.remote import UrlPath

log = logging.getLogger("locatlas.ingest")

#: Manifest columns, in order. See the module docs of :mod:`locatlas.ingest` for each.
MANIFEST_COLUMNS = (
    "field_id",
    "view_id",
    "plate",
    "well",
    "field",
    "timepoint",
    "source",
    "format",
    "scene",
    "tile",
    "t_index",
    "channel_roles",
    "channel_names",
    "protein",
    "cell_line",
    "labels",
    "split",
    "pixel_size_um",
    "z_step_um",
    "pixel_size_source",
    "size_c",
    "size_z",
    "size_y",
    "size_x",
    "dtype",
    "checksum",
    "reader",
    "reader_version",
    "shard",
)
_INT_COLUMNS = (
    "field",
    "timepoint",
    "scene",
    "tile",
    "t_index",
    "size_c",
    "size_z",
    "size_y",
    "size_x",
)
_FLOAT_COLUMNS = ("pixel_size_um", "z_step_um")


@dataclass(frozen=True)
class IngestLimits:
    """Size limits, checked from headers before any pixel is decoded.

    Attributes
    ----------
    max_plane_pixels
        Largest Y*X of one plane (default 2**28 = 16384², about 268 M pixels).
    max_field_bytes
        Largest C*Z*Y*X*itemsize of one field (one time point), default 8 GiB.
    """

    max_plane_pixels: int = 1 << 28
    max_field_bytes: int = 8 << 30


@dataclass
class _Entry:
    """One source to probe: a file or an HPA stem, with its sheet values."""

    kind: str  # "hpa" | "file"
    path: Path | UrlPath
    order: int
    group: str  # default plate (folder name)
    values: dict[str, Any] = field(default_factory=dict)
    declared: str | None = None
    files: dict[str, list[Path | UrlPath]] | None = None  # pre-grouped HPA files (directory)
    where: str = ""  # sheet line, for messages


@dataclass
class _Probed:
    fmt: str
    reader: str
    reader_version: str
    scenes: tuple[SceneInfo, ...]
    source: str  # str path, or JSON list of channel files
    checksum: str


# --------------------------------------------------------------------------- entries


def _abs(path: Path | UrlPath) -> Path | UrlPath:
    if isinstance(path, UrlPath):
        return path
    return Path(os.path.normpath(path.absolute()))


def _exists(path: Path | UrlPath) -> bool:
    # objects: from the (cached) listing of their folder, not one request per row
    return exists_listed(path) if isinstance(path, UrlPath) else path.exists()


def _entries_from_sheet(sheet: Path | UrlPath) -> tuple[list[_Entry], list[dict[str, str]]]:
    rows, bad, _ = read_samplesheet(sheet)
    entries = []
    for i, row in enumerate(rows):
        v = dict(row.values)
        src = remote.as_path(v.pop("source"))
        path = _abs(src if src.is_absolute() else sheet.parent / src)
        declared = v.pop("format", "") or None
        if declared == "hpa":
            kind = "hpa"
        elif declared is None and not _exists(path) and find_channel_files(path):
            kind = "hpa"
        else:
            kind = "file"
        group = path.parent.name
        entries.append(
            _Entry(kind, path, i, group or "plate", v, declared, where=f"{sheet}:{row.line}")
        )
    return entries, bad


def _listing(root: Path | UrlPath, pattern: str | None) -> list[tuple[Path | UrlPath, bool]]:
    """(path, is a folder) below ``root``; an object store has no folders of its own."""
    if isinstance(root, UrlPath):
        return [(UrlPath(u), False) for u in remote.list_files(root, pattern or "**/*")]
    return [(p, p.is_dir()) for p in sorted(root.glob(pattern or "**/*"))]


def _entries_from_directory(
    root: Path | UrlPath, pattern: str | None
) -> tuple[list[_Entry], list[dict[str, str]]]:
    bad: list[dict[str, str]] = []
    if is_kaggle_layout(root) and pattern is None:
        return _entries_from_kaggle(root), bad
    candidates: list[Path | UrlPath] = []
    skipped = 0
    for p, is_dir in _listing(root, pattern):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        is_imageish = format_from_extension(p) is not None
        if is_dir:
            if is_imageish:  # e.g. a folder named "x.tif": a mix-up, not a plate folder
                bad.append(
                    quarantine_record(
                        str(_abs(p)),
                        f"{_abs(p)}: is a directory, expected an image file",
                        error_type="not-a-file",
                    )
                )
            continue
        if pattern is None and p.suffix.lower() in NON_IMAGE_EXTENSIONS:
            skipped += 1
            continue
        candidates.append(_abs(p))
    if skipped:
        log.info("%s: skipped %d non-image files (tables, notes)", root, skipped)
    groups, rest = group_hpa_files(candidates)
    entries: list[_Entry] = []
    items: list[tuple[Path | UrlPath, str, dict | None]] = [
        (s, "hpa", f) for s, f in groups.items()
    ]
    items += [(p, "file", None) for p in rest]
    for i, (path, kind, files) in enumerate(sorted(items, key=lambda x: str(x[0]))):
        group = path.parent.name or root.name
        entries.append(_Entry(kind, path, i, group, {}, "hpa" if kind == "hpa" else None, files))
    return entries, bad


def _entries_from_kaggle(root: Path | UrlPath) -> list[_Entry]:
    entries = []
    images = root / "train"
    for i, (lineno, ident, target) in enumerate(read_kaggle_rows(root)):
        values: dict[str, Any] = {"plate": images.name, "well": "A01", "field": i + 1}
        if target:
            values["labels"] = target
        values["split"] = "train"
        entries.append(
            _Entry(
                "hpa",
                _abs(images / ident),
                i,
                images.name,
                values,
                "hpa",
                where=f"{root / 'train.csv'}:{lineno}",
            )
        )
    return entries


# --------------------------------------------------------------------------- probing


def _probe_entry(
    entry: _Entry, limits: IngestLimits, colours: Sequence[str], checksum: str
) -> _Probed:
    if entry.kind == "hpa":
        if entry.files is not None:
            files = resolve_hpa_files(entry.path, colours, found=entry.files)
        else:
            files = resolve_hpa_files(entry.path, colours)
        hp = probe_hpa(entry.path, files, colours=colours, max_plane_pixels=limits.max_plane_pixels)
        if checksum == "full":
            sums = [full_checksum(p) for p in hp.files]
        else:
            sums = [fast_checksum(fb) for fb in hp.bytes_]
        combined = "sha256-multi:" + hashlib.sha256("\n".join(sums).encode()).hexdigest()
        y, x = hp.shape
        scene = SceneInfo(
            0,
            "0",
            1,
            len(colours),
            1,
            y,
            x,
            hp.dtype,
            tuple(ChannelInfo(c) for c in colours),
            None,
            None,
        )
        fmts = sorted(set(hp.formats))
        libs = sorted({"tifffile" if f == "tiff" else "imagecodecs" for f in fmts})
        version = "; ".join(f"{lib} {package_version(lib)}" for lib in libs)
        return _Probed(
            "hpa", "hpa-planes", version, (scene,), json.dumps([str(p) for p in hp.files]), combined
        )
    fb = read_file_bytes(entry.path)
    fmt = detect_format(entry.path, fb.head, entry.declared)
    info = probe_file(fb, fmt, max_plane_pixels=limits.max_plane_pixels)
    digest = full_checksum(entry.path) if checksum == "full" else fast_checksum(fb)
    return _Probed(
        info.format, info.reader, info.reader_version, info.scenes, str(entry.path), digest
    )


def _safe_probe(args) -> _Probed | IngestError:
    entry, limits, colours, checksum = args
    try:
        return _probe_entry(entry, limits, colours, checksum)
    except IngestError as exc:
        return exc
    except MemoryError:
        return IngestError(
            entry.path, "out of memory while probing (absurd header sizes?)", "too-large"
        )
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop the others
        return IngestError(
            entry.path, f"unexpected error while probing: {type(exc).__name__}: {exc}", "corrupt"
        )


# --------------------------------------------------------------------------- rows


def normalize_labels(text: str | int | float | None) -> str:
    """``"16 0"`` / ``"0;16"`` / ``"16,0"`` -> ``"0;16"``; empty -> ``""``."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""
    parts = [p for p in re.split(r"[;,\s]+", str(text).strip()) if p]
    return ";".join(str(i) for i in sorted({int(p) for p in parts}))


def _well_key(well: str) -> tuple[int, str, int]:
    row, col = parse_well(well)
    return len(row), row, col


@dataclass
class _View:
    entry: _Entry
    probed: _Probed
    scene: SceneInfo
    tile: int
    offset: int  # position among the scenes/tiles of its entry
    plate: str
    well: str
    field: int | None  # None: derive


def _plan_views(entry: _Entry, probed: _Probed, bad: list) -> list[_View]:
    v = entry.values
    scenes = list(probed.scenes)
    if "scene" in v:
        idx = int(v["scene"])
        if idx >= len(scenes):
            bad.append(
                quarantine_record(
                    probed.source,
                    f"{entry.path}: scene {idx} requested but the file has {len(scenes)} scene(s)",
                    error_type="bad-scene",
                )
            )
            return []
        scenes = [scenes[idx]]
    parsed = parse_stem(entry.path.name) if entry.kind == "hpa" else None
    plate = str(v.get("plate") or (parsed[0] if parsed else entry.group))
    well = str(v.get("well") or (parsed[1] if parsed else "A01"))
    base = v.get("field", parsed[2] if parsed else None)
    if parsed and parsed[3] is not None and "timepoint" not in v:
        v["timepoint"] = parsed[3]
    try:
        safe_name(plate)
        normalize_well(well)
    except ValueError as exc:  # e.g. a derived plate name without a letter or digit
        bad.append(
            quarantine_record(probed.source, f"{entry.path}: {exc}", error_type="bad-sheet-row")
        )
        return []
    views = []
    offset = 0
    for sc in scenes:
        for tile in range(sc.n_tiles) if sc.n_tiles else [-1]:
            fld = None if base is None else int(base) + offset
            views.append(_View(entry, probed, sc, tile, offset, plate, well, fld))
            offset += 1
    return views


def _assign_fields(views: list[_View]) -> None:
    """Give derived field numbers: a counter per (plate, well) in entry order,
    skipping numbers used explicitly."""
    used: dict[tuple[str, str], set[int]] = {}
    for vw in views:
        if vw.field is not None:
            used.setdefault((safe_name(vw.plate), normalize_well(vw.well)), set()).add(vw.field)
    counters: dict[tuple[str, str], int] = {}
    for vw in views:
        if vw.field is not None:
            continue
        key = (safe_name(vw.plate), normalize_well(vw.well))
        n = counters.get(key, 0) + 1
        while n in used.get(key, ()):
            n += 1
        counters[key] = n
        vw.field = n


def _pixel_size(vw: _View, fallback: float | None) -> tuple[float, str] | None:
    sheet = vw.entry.values.get("pixel_size_um")
    meta = vw.scene.pixel_size_um
    if sheet is not None:
        if meta is not None and abs(meta - sheet) > 0.05 * sheet:
            log.warning(
                "%s: sample sheet pixel size %.4g µm overrides metadata %.4g µm",
                vw.entry.path,
                sheet,
                meta,
            )
        return float(sheet), "samplesheet"
    if meta is not None:
        return float(meta), "metadata"
    if fallback is not None:
        return float(fallback), "config-fallback"
    return None


def _check_size(vw: _View, limits: IngestLimits) -> IngestError | None:
    sc = vw.scene
    plane = sc.size_y * sc.size_x
    if plane > limits.max_plane_pixels:
        return IngestError(
            vw.probed.source,
            f"scene {sc.index}: {sc.size_y}x{sc.size_x} = {plane:,} "
            f"pixels per plane, over the limit of {limits.max_plane_pixels:,}",
            "too-large",
        )
    nbytes = sc.size_c * sc.size_z * plane * np.dtype(sc.dtype).itemsize
    if nbytes > limits.max_field_bytes:
        return IngestError(
            vw.probed.source,
            f"scene {sc.index}: one field is {nbytes:,} bytes "
            f"(C={sc.size_c}, Z={sc.size_z}, {sc.size_y}x{sc.size_x} {sc.dtype}), over "
            f"the limit of {limits.max_field_bytes:,}",
            "too-large",
        )
    return None


def _rows_for_view(vw: _View, roles: list[str], px: tuple[float, str]) -> list[dict[str, Any]]:
    sc, v = vw.scene, vw.entry.values
    plate = safe_name(vw.plate)
    well = normalize_well(vw.well)
    t0 = int(v.get("timepoint", 0))
    dz = v.get("z_step_um", sc.z_step_um)
    z_step = float(dz) if (dz is not None and sc.size_z > 1) else math.nan
    reader = sc.reader or vw.probed.reader
    version = package_version(sc.reader) if sc.reader else vw.probed.reader_version
    out = []
    for t in range(sc.size_t):
        out.append(
            {
                "field_id": make_field_id(plate, well, vw.field, t0 + t),
                "view_id": make_view_id(plate, well, vw.field),
                "plate": plate,
                "well": well,
                "field": int(vw.field),
                "timepoint": t0 + t,
                "source": vw.probed.source,
                "format": vw.probed.fmt,
                "scene": sc.index,
                "tile": vw.tile,
                "t_index": t,
                "channel_roles": json.dumps(roles),
                "channel_names": json.dumps([c.name for c in sc.channels]),
                "protein": str(v.get("protein", "")),
                "cell_line": str(v.get("cell_line", "")),
                "labels": normalize_labels(v.get("labels")),
                "split": str(v.get("split", "")),
                "pixel_size_um": px[0],
                "z_step_um": z_step,
                "pixel_size_source": px[1],
                "size_c": sc.size_c,
                "size_z": sc.size_z,
                "size_y": sc.size_y,
                "size_x": sc.size_x,
                "dtype": sc.dtype,
                "checksum": vw.probed.checksum,
                "reader": reader,
                "reader_version": version,
                "shard": "",
            }
        )
    return out


def _drop_duplicates(rows: list[dict[str, Any]], bad: list) -> list[dict[str, Any]]:
    """Quarantine field-id clashes and images listed twice; nothing is dropped silently."""
    by_id: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_id.setdefault(r["field_id"], []).append(r)
    keep: list[dict[str, Any]] = []
    seen_images: dict[tuple, str] = {}
    for r in rows:
        group = by_id[r["field_id"]]
        image = (r["source"], r["scene"], r["tile"], r["t_index"])
        if len(group) > 1:
            images = {(g["source"], g["scene"], g["tile"], g["t_index"]) for g in group}
            if len(images) > 1:
                others = sorted({g["source"] for g in group if g is not r})
                bad.append(
                    quarantine_record(
                        r["source"],
                        f"{r['source']}: duplicate field_id {r['field_id']} (plate/well/field/timepoint "
                        f"also given to {', '.join(others)}); all {len(group)} quarantined",
                        error_type="duplicate-id",
                        field_id=r["field_id"],
                    )
                )
                continue
            if r is not group[0]:
                bad.append(
                    quarantine_record(
                        r["source"],
                        f"{r['source']}: listed twice with field_id {r['field_id']}; "
                        "duplicate row ignored",
                        error_type="duplicate-id",
                        field_id=r["field_id"],
                    )
                )
                continue
        if image in seen_images:
            bad.append(
                quarantine_record(
                    r["source"],
                    f"{r['source']}: the same image (scene {r['scene']}, t {r['t_index']}) "
                    f"is listed again as {r['field_id']} after {seen_images[image]}; duplicate quarantined",
                    error_type="duplicate-id",
                    field_id=r["field_id"],
                )
            )
            continue
        seen_images[image] = r["field_id"]
        keep.append(r)
    return keep


def assign_shards(manifest: pd.DataFrame, shard_size: int) -> pd.Series:
    """Shard of every row: views sorted by (well, field) within each plate, ``shard_size``
    views per shard, numbered within the plate (:func:`locatlas.ids.make_shard_id`).

    All time points of a view share its shard; adding a plate changes no existing shard.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    shard_of_view: dict[str, str] = {}
    views = manifest[["plate", "well", "field", "view_id"]].drop_duplicates("view_id")
    for plate, grp in views.groupby("plate", sort=True):
        order = sorted(
            zip(grp["well"], grp["field"], grp["view_id"], strict=True),
            key=lambda t: (_well_key(t[0]), int(t[1])),
        )
        for k, (_, _, view) in enumerate(order):
            shard_of_view[view] = make_shard_id(plate, k // shard_size)
    return manifest["view_id"].map(shard_of_view)


def empty_manifest() -> pd.DataFrame:
    return _typed(pd.DataFrame({c: [] for c in MANIFEST_COLUMNS}))


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    df = df.loc[:, list(MANIFEST_COLUMNS)].copy()
    for c in MANIFEST_COLUMNS:
        if c in _INT_COLUMNS:
            df[c] = df[c].astype("int64")
        elif c in _FLOAT_COLUMNS:
            df[c] = df[c].astype("float64")
        else:
            df[c] = df[c].astype(object).where(df[c].notna(), "").astype(str)
    return df


def _default_workers() -> int:
    return max(1, min(8, 2 * (os.cpu_count() or 1)))


def build_manifest(
    samples: str | os.PathLike,
    *,
    pattern: str | None = None,
    roles_override: Mapping | None = None,
    pixel_size_um: float | None = None,
    shard_size: int = 100,
    limits: IngestLimits | None = None,
    hpa_colours: Sequence[str] = HPA_COLOURS,
    checksum: str = "fast",
    workers: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Probe every source and build the sharded manifest and the quarantine table.

    Parameters
    ----------
    samples
        A sample sheet (CSV/TSV, see ``workflow/schemas/samplesheet.schema.yaml``), a
        directory of images (HPA-named files are grouped into fields; a Kaggle layout
        ``train.csv`` + ``train/`` is recognized), or a single image file; each may be
        a URL (``s3://bucket/prefix/``, see :mod:`locatlas.remote`), and a sheet's
        sources may be URLs.
    pattern
        Glob pattern relative to a ``samples`` directory (default: every file, skipping
        hidden files and sidecar tables).
    roles_override
        Channel name (case-insensitive) or index -> role or ``"ignore"``.
    pixel_size_um
        Fallback pixel size (µm) for sources without one in the sheet or metadata;
        None: such sources are quarantined.
    shard_size
        Views (fields of view, all their time points) per shard.
    limits
        Size limits checked from headers (:class:`IngestLimits`).
    hpa_colours
        Channel colours an HPA field must have, in storage order.
    checksum
        ``"fast"``: SHA-256 of files up to 2 MiB, of size + first + last MiB above;
        ``"full"``: SHA-256 of every byte.
    workers
        Threads probing files in parallel (I/O bound); the result does not depend on it.

    Returns
    -------
    manifest, quarantine
        The manifest (columns :data:`MANIFEST_COLUMNS`, sorted by plate, well, field,
        time point) and the quarantine table (:data:`QUARANTINE_COLUMNS`).

    Raises
    ------
    FileNotFoundError
        ``samples`` does not exist.
    locatlas.ingest.samplesheet.SampleSheetError
        The sheet as a whole is unusable (e.g. no ``source`` column).
    """
    limits = limits or IngestLimits()
    if checksum not in ("fast", "full"):
        raise ValueError(f"checksum must be 'fast' or 'full', got {checksum!r}")
    unknown = [c for c in hpa_colours if c not in HPA_COLOURS]
    if unknown or not hpa_colours:
        raise ValueError(
            f"hpa_colours must be a non-empty subset of {HPA_COLOURS}, got {hpa_colours}"
        )
    assign_roles([], override=roles_override)  # validate the override early
    samples = _abs(remote.as_path(samples))
    clear_listing_cache()
    if isinstance(samples, UrlPath):
        is_dir = remote.isdir(samples)
        is_file = not is_dir and remote.isfile(samples)
    else:
        is_dir, is_file = samples.is_dir(), samples.is_file()
    if is_dir:
        entries, bad = _entries_from_directory(samples, pattern)
    elif is_file:
        if format_from_extension(samples) is not None or samples.suffix.lower() not in (
            ".csv",
            ".tsv",
            ".tab",
            ".txt",
        ):
            entries, bad = [_Entry("file", samples, 0, samples.parent.name or "plate")], []
        else:
            entries, bad = _entries_from_sheet(samples)
    else:
        raise FileNotFoundError(f"samples not found: {samples}")

    jobs = [(e, limits, tuple(hpa_colours), checksum) for e in entries]
    n_workers = workers or _default_workers()
    if n_workers > 1 and len(jobs) > 1:
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            probes = list(pool.map(_safe_probe, jobs, chunksize=16))
    else:
        probes = [_safe_probe(j) for j in jobs]

    views: list[_View] = []
    for entry, probed in zip(entries, probes, strict=True):
        if isinstance(probed, IngestError):
            rec = record_from_error(probed, source=str(entry.path))
            if entry.where:
                rec["reason"] += f" [sample sheet {entry.where}]"
            bad.append(rec)
            continue
        views.extend(_plan_views(entry, probed, bad))
    _assign_fields(views)

    rows: list[dict[str, Any]] = []
    warned: set[str] = set()
    fallback_used: list[str] = []
    for vw in views:
        err = _check_size(vw, limits)
        if err is not None:
            bad.append(record_from_error(err))
            continue
        px = _pixel_size(vw, pixel_size_um)
        if px is None:
            bad.append(
                quarantine_record(
                    vw.probed.source,
                    f"{vw.entry.path}: no pixel size in the file metadata or the sample sheet, and no "
                    "fallback configured (channels.pixel_size_um)",
                    error_type="no-pixel-size",
                )
            )
            continue
        if px[1] == "config-fallback":
            fallback_used.append(str(vw.entry.path))
        ch = vw.scene.channels
        roles, notes = assign_roles(
            [c.name for c in ch],
            hints=[c.hints for c in ch],
            wavelengths=[c.wavelength_nm for c in ch],
            override=roles_override,
            auto=not vw.scene.spectral,
        )
        if vw.scene.spectral:
            notes = [
                *notes,
                f"spectral scan {vw.entry.path.name} scene {vw.scene.index}: "
                "channels are wavelength bins and left unmapped (use a roles override)",
            ]
        for note in notes:
            msg = f"{vw.probed.fmt}: {note}"
            if msg not in warned:
                warned.add(msg)
                log.warning("%s (first seen in %s)", msg, vw.entry.path)
        try:
            rows.extend(_rows_for_view(vw, roles, px))
        except ValueError as exc:  # e.g. a derived plate name with no usable character
            bad.append(
                quarantine_record(
                    vw.probed.source, f"{vw.entry.path}: {exc}", error_type="bad-sheet-row"
                )
            )
    if fallback_used:
        log.warning(
            "%d source(s) have no pixel size in metadata or sheet; using the fallback %.4g µm "
            "(first: %s)",
            len(fallback_used),
            pixel_size_um,
            fallback_used[0],
        )
    rows = _drop_duplicates(rows, bad)

    if rows:
        manifest = pd.DataFrame(rows)
        manifest["shard"] = assign_shards(manifest, shard_size)
        manifest["_wk"] = manifest["well"].map(_well_key)
        manifest = manifest.sort_values(["plate", "_wk", "field", "timepoint"], kind="stable")
        manifest = _typed(manifest.drop(columns="_wk").reset_index(drop=True))
    else:
        manifest = empty_manifest()
    return manifest, quarantine_frame(bad)


# --------------------------------------------------------------------------- pixels


def _as_int(x: Any, default: int = 0) -> int:
    try:
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return default
        return int(x)
    except (TypeError, ValueError):
        return default


def read_field_pixels(
    row: Mapping,
    *,
    limits: IngestLimits | None = None,
    allow_empty_channels: bool = False,
) -> np.ndarray:
    """The full pixels of one manifest row as (C, Z, Y, X), native dtype.

    Channels are in source order (``row['channel_roles']`` gives their roles).

    Raises
    ------
    IngestError
        Unreadable/truncated/changed file, size over the limits, a channel that is
        entirely zero (unless ``allow_empty_channels``), or NaN/inf pixels. The message
        names the file and the problem; normalization quarantines the field with
        :func:`locatlas.ingest.quarantine.record_from_error`.
    """
    limits = limits or IngestLimits()
    fmt = str(row["format"])
    source = str(row["source"])
    expected = tuple(_as_int(row.get(k), -1) for k in ("size_c", "size_z", "size_y", "size_x"))
    if expected[2] * expected[3] > limits.max_plane_pixels:
        raise IngestError(
            source,
            f"{expected[2]}x{expected[3]} pixels per plane is over the limit "
            f"of {limits.max_plane_pixels:,}",
            "too-large",
        )
    if -1 not in expected:
        itemsize = np.dtype(str(row.get("dtype") or "uint8")).itemsize
        nbytes = int(np.prod(expected)) * itemsize
        if nbytes > limits.max_field_bytes:
            raise IngestError(
                source,
                f"one field is {nbytes:,} bytes, over the limit of {limits.max_field_bytes:,}",
                "too-large",
            )
    names = json.loads(row.get("channel_names") or "[]")
    roles = json.loads(row.get("channel_roles") or "[]")
    if fmt == "hpa":
        paths = json.loads(source)
        planes = []
        for path, colour in zip(paths, names, strict=True):
            planes.append(
                decode_plane(path, colour=colour, max_plane_pixels=limits.max_plane_pixels)
            )
        shapes = {p.shape for p in planes}
        if len(shapes) > 1:
            raise IngestError(source, f"channel shapes differ: {sorted(shapes)}", "shape-mismatch")
        arr = np.stack(planes)[:, None]
        files = paths
    else:
        arr = read_file_field(
            source,
            fmt,
            scene=_as_int(row.get("scene")),
            t_index=_as_int(row.get("t_index")),
            tile=_as_int(row.get("tile"), -1),
            direct_lif=row.get("reader") == "liffile",
        )
        files = [source] * arr.shape[0]
    if -1 not in expected and tuple(arr.shape) != expected:
        raise IngestError(
            source,
            f"pixels have shape {tuple(arr.shape)} but the manifest says "
            f"(C, Z, Y, X) = {expected}: file changed since ingest?",
            "changed-since-ingest",
        )
    return check_pixels(
        arr, files=files, names=names, roles=roles, allow_empty_channels=allow_empty_channels
    )


def check_pixels(
    arr: np.ndarray,
    *,
    files: Sequence[str],
    names: Sequence[str] = (),
    roles: Sequence[str] = (),
    allow_empty_channels: bool = False,
) -> np.ndarray:
    """Refuse NaN/inf values, an all-zero image, and an all-zero channel that has a role.

    ``arr`` is (C, Z, Y, X); ``files[c]`` names the file of channel ``c`` in the error.
    Returns ``arr`` unchanged.
    """

    def label(c: int) -> str:
        name = names[c] if c < len(names) else f"C{c}"
        role = roles[c] if c < len(roles) and roles[c] else "unmapped"
        return f"channel {c} ({name!r}, role {role})"

    if np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.complexfloating):
        for c in range(arr.shape[0]):
            bad = int(arr[c].size - np.count_nonzero(np.isfinite(arr[c])))
            if bad:
                raise IngestError(
                    files[c],
                    f"{label(c)} has {bad:,} NaN/inf pixels of {arr[c].size:,}",
                    "non-finite",
                )
    empty = [c for c in range(arr.shape[0]) if not np.any(arr[c])]
    if len(empty) == arr.shape[0]:
        raise IngestError(
            files[0] if len(set(files)) == 1 else json.dumps(list(files)),
            "all pixels are zero (empty image)",
            "all-zero",
        )
    # An empty channel matters when it has a role (a dead nucleus or protein channel);
    # unmapped channels (e.g. far bins of a spectral scan) may legitimately be empty.
    mapped_empty = [c for c in empty if c < len(roles) and roles[c]]
    if mapped_empty and not allow_empty_channels:
        c = mapped_empty[0]
        raise IngestError(
            files[c], f"{label(c)} is entirely zero (dead or missing channel)", "all-zero"
        )
    return arr
