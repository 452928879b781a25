"""A mixed folder of real vendor files through the workflow into valid OME-Zarr plates.

Zeiss CZI, Leica LIF (spectral, xz, time series), Nikon ND2, OME-TIFF, Zeiss LSM,
DeltaVision and two Human Protein Atlas fields (one JPEG per channel) sit in one
folder, as a user would bring them. The workflow's conversion target (``ome_zarr``)
must turn every field with a mapped channel into a NGFF 0.5 HCS plate that
ome-zarr-models validates and ome-zarr-py reads, and list every other field in a
quarantine table with its reason: no field may be lost silently.
"""

from __future__ import annotations

import glob
import json

import numpy as np
import pandas as pd
import pytest
import yaml
import zarr

pytestmark = [pytest.mark.workflow]

# HPA v18 JPEGs carry no pixel size; the HPA confocal images are ~0.08 µm/px.
CONFIG = {
    "channels": {"roles": {"Bright": "protein", "Glow": "protein"}, "pixel_size_um": 0.08},
    "shard_size": 4,
}


@pytest.fixture(scope="module")
def formats_run(shared_data, tmp_path_factory):
    from workflow_utils import snakemake

    root = tmp_path_factory.mktemp("formats")
    folder = root / "incoming"
    folder.mkdir()
    for src in sorted((shared_data / "formats").glob("*.*")):
        (folder / src.name).symlink_to(src)
    for src in sorted((shared_data / "hpa_fields" / "hpa_v18").glob("*.jpg")):
        (folder / src.name).symlink_to(src)
    cfg = root / "config.yaml"
    cfg.write_text(yaml.safe_dump({"input": {"samples": str(folder)}, **CONFIG}))
    work = root / "work"
    work.mkdir()
    snakemake(work, "ome_zarr", config=str(cfg))
    return work / "results"


def _tables(results, kind):
    return pd.concat([pd.read_parquet(p) for p in sorted(glob.glob(f"{results}/{kind}/*.parquet"))])


def test_every_field_is_written_or_quarantined_with_a_reason(formats_run):
    manifest = pd.read_parquet(formats_run / "manifest" / "manifest.parquet")
    written = _tables(formats_run, "receipts/normalize")
    skipped = _tables(formats_run, "quarantine/normalize")
    assert set(manifest["format"]) >= {"czi", "lif", "nd2", "ome-tiff", "lsm", "dv", "hpa"}
    assert set(written["field_id"]).isdisjoint(skipped["field_id"])
    assert set(written["field_id"]) | set(skipped["field_id"]) == set(manifest["field_id"])
    # the spectral LIF scans have only wavelength-bin channels: nothing maps to a role
    assert len(skipped) >= 1 and skipped["reason"].str.contains("no channel is mapped").all()
    formats_written = set(manifest.set_index("field_id").loc[written["field_id"], "format"])
    assert formats_written >= {"czi", "lif", "nd2", "ome-tiff", "lsm", "dv", "hpa"}


def test_plates_validate_and_open_with_the_reference_reader(formats_run):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05.hcs import HCS
    from ome_zarr_models.v05.image import Image

    written = _tables(formats_run, "receipts/normalize")
    plates = sorted((formats_run / "zarr").glob("*.ome.zarr"))
    assert {p.name for p in plates} == {"incoming.ome.zarr", "89.ome.zarr", "800.ome.zarr"}
    for plate in plates:
        hcs = HCS.from_zarr(zarr.open_group(plate, mode="r"))
        n_images = sum(len(w.ome_attributes.well.images) for w in hcs.well_groups)
        expected = written.loc[written["plate"] == plate.name.removesuffix(".ome.zarr")]
        assert n_images == expected["view_id"].nunique()
    # ome-zarr-py's plate node tiles a well's fields into one grid, which needs fields
    # of one shape: true of the HPA plates, not of the vendor-file mix, whose fields
    # are each opened as images instead.
    for plate in ("89", "800"):
        nodes = list(Reader(parse_url(str(formats_run / "zarr" / f"{plate}.ome.zarr")))())
        assert nodes and nodes[0].data, plate
    for path in sorted(set(written["zarr_path"])):
        nodes = list(Reader(parse_url(str(formats_run.parent / path)))())
        assert nodes and nodes[0].data[0].ndim == 5, path
        group = zarr.open_group(formats_run.parent / path, mode="r")
        image = Image.from_zarr(group)
        axes = image.ome_attributes.multiscales[0].axes
        assert [a.unit for a in axes if a.type == "space"] == ["micrometer"] * 3


def test_same_field_from_czi_and_ome_tiff_is_identical(formats_run):
    from locatlas.omezarr import read_field_image

    manifest = pd.read_parquet(formats_run / "manifest" / "manifest.parquet")
    written = _tables(formats_run, "receipts/normalize").merge(
        manifest[["field_id", "format"]], on="field_id"
    )
    paths = {
        fmt: formats_run.parent / written.loc[written["format"] == fmt, "zarr_path"].iloc[0]
        for fmt in ("czi", "ome-tiff")
    }
    czi, meta_czi = read_field_image(str(paths["czi"]))
    tif, meta_tif = read_field_image(str(paths["ome-tiff"]))
    np.testing.assert_array_equal(czi, tif)
    assert meta_czi["pixel_size_um"] == pytest.approx(meta_tif["pixel_size_um"])
    assert meta_czi["pixel_size_um"] == pytest.approx(1.0833, rel=1e-3)


def test_hpa_fields_have_their_roles_and_the_fallback_pixel_size(formats_run):
    from locatlas.omezarr import read_field_image

    written = _tables(formats_run, "receipts/normalize")
    hpa = written[written["plate"].isin(["89", "800"])]
    assert len(hpa) == 2
    for _, row in hpa.iterrows():
        image, meta = read_field_image(str(formats_run.parent / row["zarr_path"]))
        assert meta["channel_roles"] == ["nucleus", "microtubules", "er", "protein"]
        assert meta["pixel_size_um"] == pytest.approx(0.08)
        assert bool(row["pixel_size_fallback"])
        # every channel carries signal (the matching colour plane of the tinted JPEG)
        assert all(image[0, c].std() > 0 for c in range(4))
    assert json.loads(hpa["channel_roles"].iloc[0]) == ["nucleus", "microtubules", "er", "protein"]
