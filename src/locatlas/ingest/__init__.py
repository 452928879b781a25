"""Ingest: many vendor formats -> a sharded manifest of fields, with a quarantine table.

Public API::

    from locatlas.ingest import build_manifest, read_field_pixels, QUARANTINE_COLUMNS

    manifest, quarantine = build_manifest("samples.csv", shard_size=100)
    pixels = read_field_pixels(manifest.iloc[0])   # (C, Z, Y, X), native dtype

Manifest columns (one row per field of view × time point):

==================  =========================================================================
field_id            locatlas.ids.make_field_id(plate, well, field, timepoint): "P1_B05_1_t000"
view_id             locatlas.ids.make_view_id(plate, well, field): the field across time
plate               plate name, path-safe (locatlas.ids.safe_name)
well                normalized well, "B05"
field               field of view number (int)
timepoint           time point (int): sheet timepoint + index along the file's T axis
source              file path (absolute); for HPA fields a JSON list of the channel files
                    in channel order
format              hpa | czi | lif | nd2 | ome-tiff | tiff | lsm | dv | png | jpeg
scene               scene/series index in the file (int; 0 for single-scene sources)
tile                mosaic tile read as its own field (int), -1 when none / stitched
t_index             index along the file's T axis (int) that read_field_pixels reads
channel_roles       JSON list: the role of each channel in source order, "" if unmapped
channel_names       JSON list: channel names in source order (HPA: the colours)
protein             target protein from the sheet ("" if none)
cell_line           cell line from the sheet ("" if none)
labels              class indices sorted and ';'-joined, "" when none
split               train/val/test from the sheet ("" if none)
pixel_size_um       pixel size in µm (y = x)
z_step_um           z step in µm, NaN for single planes or unknown
pixel_size_source   'samplesheet' | 'metadata' | 'config-fallback' (precedence in that order)
size_c/z/y/x        array sizes of one field (after mosaic stitching)
dtype               numpy dtype name of the pixels
checksum            "sha256:<hex>" of the file (files <= 2 MiB, or checksum="full");
                    "sha256-fast:<hex>" of size + first MiB + last MiB for larger files;
                    HPA fields: "sha256-multi:<hex>" over the per-file checksums in order
reader              backend that reads the pixels (e.g. bioio-czi, liffile, mrc, hpa-planes)
reader_version      its version
shard               make_shard_id(plate, k): views sorted by (well, field) within the plate,
                    shard_size views per shard; all time points of a view share a shard
==================  =========================================================================

Quarantine columns: ``source, field_id, stage, reason, error_type`` (``reason`` names
the file and the problem; ``error_type`` is one of
:data:`locatlas.ingest.errors.ERROR_TYPES`).
"""

from locatlas.ingest.errors import ERROR_TYPES, IngestError
from locatlas.ingest.hpa import HPA_COLOURS
from locatlas.ingest.manifest import (
    MANIFEST_COLUMNS,
    IngestLimits,
    assign_shards,
    build_manifest,
    check_pixels,
    read_field_pixels,
)
from locatlas.ingest.quarantine import (
    QUARANTINE_COLUMNS,
    quarantine_frame,
    quarantine_record,
    record_from_error,
)
from locatlas.ingest.roles import assign_roles
from locatlas.ingest.samplesheet import SampleSheetError, read_samplesheet

__all__ = [
    "ERROR_TYPES",
    "HPA_COLOURS",
    "MANIFEST_COLUMNS",
    "QUARANTINE_COLUMNS",
    "IngestError",
    "IngestLimits",
    "SampleSheetError",
    "assign_roles",
    "assign_shards",
    "build_manifest",
    "check_pixels",
    "quarantine_frame",
    "quarantine_record",
    "read_field_pixels",
    "read_samplesheet",
    "record_from_error",
]
