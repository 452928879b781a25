"""OME-Zarr storage: NGFF validity (ome-zarr-models, ome-zarr-py reader), round trips,
rewrites, labels, plate metadata and concurrent shards."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from ome_zarr_models.v05.hcs import HCS
from ome_zarr_models.v05.image import Image
from ome_zarr_models.v05.image_label import ImageLabel
from ome_zarr_models.v05.labels import Labels

from locatlas.omezarr import (
    FieldImageWriter,
    delete_image,
    downsample_mean2,
    field_path,
    open_field_array,
    open_field_meta,
    read_field_image,
    read_labels,
    write_field_image,
    write_labels,
    write_plate_metadata,
)

ROLES3 = ["nucleus", "microtubules", "protein"]


def smooth_image(shape, seed=0, dtype=np.uint16):
    """Smooth random (t, c, z, y, x) image: compressible like microscopy, not constant."""
    rng = np.random.default_rng(seed)
    t, c, z, y, x = shape
    yy, xx = np.mgrid[0:y, 0:x]
    out = np.empty(shape, dtype=dtype)
    for i in range(t * c * z):
        fy, fx, ph = rng.uniform(0.005, 0.05, 2).tolist() + [rng.uniform(0, 6)]
        base = 2000 + 1500 * np.sin(fy * yy + ph) * np.cos(fx * xx)
        out.reshape(-1, y, x)[i] = (base + rng.normal(0, 30, (y, x))).clip(0, 65535)
    return out


def files_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_field_path_layout():
    assert field_path("results/zarr", "P1", "B05", 1) == "results/zarr/P1.ome.zarr/B/5/1"
    assert field_path("s3://bkt/z/", "plate 7", "aa12", 3) == "s3://bkt/z/plate-7.ome.zarr/AA/12/3"


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.uint32])
@pytest.mark.parametrize("shape", [(3, 2, 301, 517), (1, 1), (2, 5, 1)])
def test_downsample_mean2_rounds_half_up_exactly(dtype, shape):
    info = np.iinfo(dtype)
    rng = np.random.default_rng(0)
    image = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    y, x = shape[-2:]
    pad = [(0, 0)] * (len(shape) - 2) + [(0, y % 2), (0, x % 2)]
    wide = np.pad(image, pad, mode="edge").astype(np.int64)
    total = wide[..., 0::2, 0::2] + wide[..., 1::2, 0::2] + wide[..., 0::2, 1::2]
    want = (total + wide[..., 1::2, 1::2] + 2) // 4
    got = downsample_mean2(image)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, want)


def test_round_trip_pyramid_units_and_chunks(tmp_path):
    data = smooth_image((2, 3, 2, 600, 1100), seed=1)
    path = field_path(str(tmp_path), "P1", "B5", 1)
    write_field_image(
        path,
        data,
        pixel_size_um=0.08,
        z_step_um=0.3,
        channel_roles=ROLES3,
        time_step=30.0,
        attrs={"source": ["a.tif"], "n": np.int64(3), "x": float("nan")},
    )
    image, meta = read_field_image(path)
    np.testing.assert_array_equal(image, data)
    assert image.dtype == np.uint16
    assert meta["pixel_size_um"] == pytest.approx(0.08)
    assert meta["z_step_um"] == pytest.approx(0.3)
    assert meta["time_step"] == pytest.approx(30.0)
    assert meta["channel_roles"] == ROLES3
    assert meta["attrs"]["source"] == ["a.tif"] and meta["attrs"]["n"] == 3
    assert meta["attrs"]["x"] is None
    # y/x halved until <= 512 px, z kept: 1100 -> 550 -> 275
    assert meta["n_levels"] == 3
    assert meta["dataset_paths"] == ["s0", "s1", "s2"]
    lvl1, meta1 = read_field_image(path, level=1)
    assert lvl1.shape == (2, 3, 2, 300, 550)
    np.testing.assert_array_equal(lvl1, downsample_mean2(data))
    assert meta1["pixel_size_um"] == pytest.approx(0.16)
    assert read_field_image(path, level=2)[0].shape == (2, 3, 2, 150, 275)
    # chunks: one plane of one channel, at most 1024², zstd level 1 with bitshuffle
    # in 1 MiB blosc blocks
    arr = open_field_array(path)
    assert arr.chunks == (1, 1, 1, 600, 1024)
    meta_json = json.loads((Path(path) / "s0" / "zarr.json").read_text())
    blosc = [c for c in meta_json["codecs"] if c["name"] == "blosc"][0]["configuration"]
    assert (blosc["cname"], blosc["clevel"], blosc["shuffle"]) == ("zstd", 1, "bitshuffle")
    assert blosc["blocksize"] == 2**20
    assert meta_json["dimension_names"] == ["t", "c", "z", "y", "x"]
    ome = zarr.open_group(path, mode="r").attrs["ome"]
    axes = ome["multiscales"][0]["axes"]
    assert [a.get("unit") for a in axes] == [
        "second",
        None,
        "micrometer",
        "micrometer",
        "micrometer",
    ]
    assert [ch["label"] for ch in ome["omero"]["channels"]] == ROLES3
    assert [ch["color"] for ch in ome["omero"]["channels"]] == ["0000FF", "FF0000", "00FF00"]
    scale0 = ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale0 == pytest.approx([30.0, 1.0, 0.3, 0.08, 0.08])


def test_plate_validates_with_ome_zarr_models_and_reader(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    root = str(tmp_path)
    rows = []
    data = smooth_image((1, 3, 1, 96, 128), seed=2)
    for well in ("B05", "C12"):
        for field in (1, 2):
            path = field_path(root, "P1", well, field)
            write_field_image(path, data, pixel_size_um=0.5, z_step_um=None, channel_roles=ROLES3)
            write_field_image(
                path, data, name="cleared", pixel_size_um=0.5, z_step_um=None, channel_roles=ROLES3
            )
            labels = np.zeros((1, 1, 96, 128), np.uint32)
            labels[0, 0, 10:30, 20:50] = 1
            write_labels(path, "nuclei", labels)
            write_labels(path, "cells", labels * 2)
            rows.append({"plate": "P1", "well": well, "field": field, "timepoint": 0})
    # a field of the manifest that was never written (quarantined) is left out
    rows.append({"plate": "P1", "well": "D01", "field": 1, "timepoint": 0})
    rows.append({"plate": "P2", "well": "A01", "field": 1, "timepoint": 0})
    write_plate_metadata(root, "P1", pd.DataFrame(rows))

    plate = zarr.open_group(f"{root}/P1.ome.zarr", mode="r")
    hcs = HCS.from_zarr(plate)
    assert hcs.n_wells == 2
    assert [w.path for w in hcs.ome_attributes.plate.wells] == ["B/5", "C/12"]
    wells = list(hcs.well_groups)
    assert [[im.path for im in w.ome_attributes.well.images] for w in wells] == [["1", "2"]] * 2
    field = zarr.open_group(field_path(root, "P1", "C12", 2), mode="r")
    image = Image.from_zarr(field)
    assert image.labels is not None and image.labels.label_paths == ["cells", "nuclei"]
    Image.from_zarr(field["cleared"])
    Labels.from_zarr(field["labels"])
    ImageLabel.from_zarr(field["labels"]["nuclei"])

    nodes = list(Reader(parse_url(f"{root}/P1.ome.zarr"))())
    assert [type(s).__name__ for s in nodes[0].specs] == ["Plate"]
    assert nodes[0].metadata["channel_names"] == ROLES3
    nodes = list(Reader(parse_url(field_path(root, "P1", "B05", 1)))())
    specs = {type(s).__name__ for n in nodes for s in n.specs}
    assert {"Multiscales", "OMERO", "Labels", "Label"} <= specs
    np.testing.assert_array_equal(np.asarray(nodes[0].data[0]), data)

    with pytest.raises(ValueError, match="no manifest row"):
        write_plate_metadata(root, "P9", pd.DataFrame(rows))


def test_rewrite_after_partial_write_is_clean_and_byte_identical(tmp_path):
    data = smooth_image((2, 2, 1, 300, 700), seed=3)
    kwargs = dict(pixel_size_um=0.1, z_step_um=None, channel_roles=["nucleus", "protein"])
    path = field_path(str(tmp_path / "a"), "P1", "A1", 1)
    # a first, complete write of different data, with derived images...
    write_field_image(path, smooth_image((3, 2, 1, 400, 900), seed=9), **kwargs)
    write_labels(path, "nuclei", np.ones((3, 1, 400, 900), np.uint16))
    write_field_image(path, smooth_image((3, 2, 1, 400, 900), seed=9), name="cleared", **kwargs)
    # ...then a rerun killed halfway: arrays partly written, no metadata
    killed = FieldImageWriter(path, shape=data.shape, dtype=data.dtype, **kwargs)
    killed.write_timepoint(0, data[0] + 1)
    with pytest.raises(ValueError, match="unfinished write"):
        open_field_meta(path)
    # the rerun replaces everything
    write_field_image(path, data, **kwargs)
    image, meta = read_field_image(path)
    np.testing.assert_array_equal(image, data)
    assert not (Path(path) / "labels").exists() and not (Path(path) / "cleared").exists()
    # same inputs, fresh store -> the same bytes (chunks and metadata)
    fresh = field_path(str(tmp_path / "b"), "P1", "A1", 1)
    write_field_image(fresh, data, **kwargs)
    assert files_digest(Path(path)) == files_digest(Path(fresh))
    # rewriting a nested image leaves the raw one alone
    write_field_image(path, data // 2, name="cleared", **kwargs)
    np.testing.assert_array_equal(read_field_image(path)[0], data)
    np.testing.assert_array_equal(read_field_image(path, name="cleared")[0], data // 2)
    assert delete_image(path) and not Path(path).exists() and not delete_image(path)


def test_labels_per_timepoint_projection_and_errors(tmp_path):
    path = field_path(str(tmp_path), "P1", "A1", 1)
    write_field_image(
        path,
        smooth_image((3, 1, 4, 64, 80)),
        pixel_size_um=0.2,
        z_step_um=0.5,
        channel_roles=["nucleus"],
        time_step=None,
    )
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 9, (64, 80)).astype(np.int64)
    # one time point at a time, 2-D labels of a z-projection (z = 1)
    write_labels(path, "cells", lab, timepoint=2)
    write_labels(path, "cells", lab + 1, timepoint=0)
    out = read_labels(path, "cells")
    assert out.shape == (3, 1, 64, 80) and out.dtype == np.uint32
    np.testing.assert_array_equal(out[2, 0], lab)
    np.testing.assert_array_equal(out[0, 0], lab + 1)
    assert not out[1].any()
    np.testing.assert_array_equal(read_labels(path, "cells", timepoint=2)[0], lab)
    # whole stack, full z
    stack = rng.integers(0, 5, (3, 4, 64, 80)).astype(np.uint16)
    write_labels(path, "nuclei", stack)
    np.testing.assert_array_equal(read_labels(path, "nuclei"), stack)
    assert read_labels(path, "nuclei", level=0).dtype == np.uint16
    lmeta = open_field_meta(path + "/labels/nuclei")
    assert lmeta["pixel_size_um"] == pytest.approx(0.2) and lmeta["z_step_um"] == pytest.approx(0.5)
    Image.from_zarr(zarr.open_group(path, mode="r"))
    with pytest.raises(ValueError, match="do not fit"):
        write_labels(path, "bad", np.zeros((3, 2, 64, 80), np.uint16))
    with pytest.raises(ValueError, match="time point"):
        write_labels(path, "bad", lab, timepoint=3)
    with pytest.raises(ValueError, match="integers"):
        write_labels(path, "bad", lab.astype(float), timepoint=0)


def test_bad_arguments_raise_clear_errors(tmp_path):
    path = field_path(str(tmp_path), "P1", "A1", 1)
    data = smooth_image((1, 2, 1, 16, 16))
    with pytest.raises(ValueError, match="channel roles"):
        write_field_image(path, data, pixel_size_um=1.0, z_step_um=None, channel_roles=["x"])
    with pytest.raises(ValueError, match="pixel_size_um"):
        write_field_image(path, data, pixel_size_um=0, z_step_um=None, channel_roles=["a", "b"])
    with pytest.raises(ValueError, match=r"\(t, c, z, y, x\)"):
        write_field_image(path, data[0], pixel_size_um=1, z_step_um=None, channel_roles=["a", "b"])
    with pytest.raises(FileNotFoundError, match="no zarr group"):
        read_field_image(str(tmp_path / "nothing.ome.zarr" / "A" / "1" / "1"))


def test_concurrent_shards_share_parent_groups(tmp_path):
    """Many writers create the same plate/row/well groups at once: none fails, none
    clobbers another's field, and the plate validates afterwards."""
    root = str(tmp_path)
    jobs = [(w, f) for w in ("A01", "A02", "B01") for f in range(1, 7)]

    def write(job):
        well, field = job
        data = np.full((1, 1, 1, 32, 32), field, np.uint16)
        write_field_image(
            field_path(root, "P1", well, field),
            data,
            pixel_size_um=1.0,
            z_step_um=None,
            channel_roles=["nucleus"],
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, jobs))
    for well, field in jobs:
        image, _ = read_field_image(field_path(root, "P1", well, field))
        assert (image == field).all()
    manifest = pd.DataFrame([{"plate": "P1", "well": w, "field": f} for w, f in jobs])
    write_plate_metadata(root, "P1", manifest)
    # plate metadata survives a later rerun of a shard (parents are never rewritten)
    write(("A01", 1))
    hcs = HCS.from_zarr(zarr.open_group(f"{root}/P1.ome.zarr", mode="r"))
    assert hcs.n_wells == 3 and hcs.ome_attributes.plate.field_count == 6


def test_fsspec_url_round_trip():
    path = field_path("memory://locatlas-test/zarr", "P1", "A1", 0)
    data = smooth_image((1, 2, 3, 40, 50))
    write_field_image(
        path, data, pixel_size_um=0.5, z_step_um=1.0, channel_roles=["nucleus", "protein"]
    )
    image, meta = read_field_image(path)
    np.testing.assert_array_equal(image, data)
    assert meta["z_step_um"] == 1.0
    write_labels(path, "nuclei", np.ones((1, 3, 40, 50), np.uint16))
    assert read_labels(path, "nuclei").sum() == 3 * 40 * 50


def test_s3_url_round_trip_on_moto():
    """The same API on an S3 URL (moto's local S3 server through s3fs)."""
    from s3_utils import moto_s3

    with moto_s3() as (_, client):
        client.create_bucket(Bucket="atlas")
        path = field_path("s3://atlas/zarr", "P1", "B2", 1)
        data = smooth_image((1, 2, 1, 600, 300), seed=4)
        kwargs = dict(pixel_size_um=0.5, z_step_um=None, channel_roles=["nucleus", "protein"])
        write_field_image(path, smooth_image((1, 2, 1, 700, 300), seed=5), **kwargs)
        write_field_image(path, data, **kwargs)  # rewrite over an existing image
        image, meta = read_field_image(path)
        np.testing.assert_array_equal(image, data)
        assert meta["n_levels"] == 2
        write_labels(path, "nuclei", np.ones((1, 1, 600, 300), np.uint16))
        manifest = pd.DataFrame({"plate": ["P1"], "well": ["B2"], "field": [1]})
        write_plate_metadata("s3://atlas/zarr", "P1", manifest)
        store = zarr.storage.FsspecStore.from_url("s3://atlas/zarr/P1.ome.zarr", read_only=True)
        hcs = HCS.from_zarr(zarr.open_group(store, mode="r"))
        assert hcs.n_wells == 1 and next(hcs.well_groups).ome_attributes.well.images[0].path == "1"
        assert delete_image(path) and not delete_image(path)
