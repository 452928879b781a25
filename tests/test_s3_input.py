"""Inputs in object storage: ingest and pixel reads from ``s3://`` URLs (moto's S3
server on loopback, through s3fs), compared with the same files read locally.

The same bytes must give the same manifest rows (ids, sizes, roles, checksums) except
``source``, which keeps the URL; a missing object or an unreachable store is
quarantined with its URL while the rest of the batch goes on; and the real ingest and
normalize jobs run from the bucket into an OME-Zarr in the bucket.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from s3_utils import moto_s3

from locatlas.ingest import IngestError, build_manifest, read_field_pixels
from locatlas.remote import UrlPath, glob_regex, is_url, list_files

BUCKET = "atlas-in"
COLOURS = ("blue", "red", "yellow", "green")


# --------------------------------------------------------------------------- data


def _hpa_field(folder: Path, stem: str, *, seed: int, ext: str) -> None:
    import imagecodecs

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for k, colour in enumerate(COLOURS):
        if ext == "png":
            arr = rng.integers(1, 200, (48, 40), dtype=np.uint8) + 10 * k
            (folder / f"{stem}_{colour}.png").write_bytes(imagecodecs.png_encode(arr))
        else:
            arr = (rng.integers(1, 500, (48, 40)) + 1000 * (k + 1)).astype(np.uint16)
            tifffile.imwrite(folder / f"{stem}_{colour}.tif", arr)


def _stack(path: Path, shape, *, seed: int) -> None:
    """A (Z, C, Y, X) ImageJ hyperstack in µm: read by bioio-tifffile from a real file."""
    rng = np.random.default_rng(seed)
    data = rng.integers(1, 60000, shape, dtype=np.uint16)  # incompressible
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(1 / 0.25, 1 / 0.25),
        metadata={"axes": "ZCYX", "unit": "um", "spacing": 0.5},
    )


@pytest.fixture(scope="module")
def local_data(tmp_path_factory) -> Path:
    """``data/``: an HPA folder (ids in the stems, PNG and TIFF planes, one stem without
    ids), a folder of multi-channel stacks (one of them over 2 MiB, so its checksum is
    the ranged first/last MiB), a sidecar table and a hidden temporary."""
    root = tmp_path_factory.mktemp("s3src") / "data"
    _hpa_field(root / "P1", "P1_B02_1", seed=1, ext="png")
    _hpa_field(root / "P1", "P1_B03_1", seed=2, ext="tif")
    _hpa_field(root / "P1" / "more", "fieldA", seed=3, ext="tif")
    _stack(root / "stacks" / "small.tif", (2, 3, 32, 24), seed=4)
    _stack(root / "stacks" / "large.tif", (1, 3, 620, 600), seed=5)  # 2.2 MB
    (root / "P1" / "notes.csv").write_text("a,b\n1,2\n")
    (root / "P1" / ".P1_B09_1_blue.tif.part").write_bytes(b"partial upload")
    return root


@pytest.fixture(scope="module")
def s3(local_data):
    """moto's S3 server on 127.0.0.1 with ``local_data`` uploaded under
    ``s3://atlas-in/data/``; endpoint and credentials through the standard env vars."""
    with moto_s3() as (endpoint, client):
        client.create_bucket(Bucket=BUCKET)
        for p in sorted(local_data.rglob("*")):
            if p.is_file():
                key = f"data/{p.relative_to(local_data).as_posix()}"
                client.upload_file(str(p), BUCKET, key)
        yield {"endpoint": endpoint, "client": client, "url": f"s3://{BUCKET}/data"}


def _to_url(text: str, local_root: Path, url: str) -> str:
    return str(text).replace(str(local_root), url)


def _same_except_source(local: pd.DataFrame, remote: pd.DataFrame, root: Path, url: str):
    assert len(local) and list(local.columns) == list(remote.columns)
    pd.testing.assert_frame_equal(local.drop(columns="source"), remote.drop(columns="source"))
    assert list(remote["source"]) == [_to_url(s, root, url) for s in local["source"]]


# --------------------------------------------------------------------------- remote


def test_url_paths_and_glob():
    p = UrlPath("s3://bkt/a/b/../c/x.ome.tif")
    assert str(p) == "s3://bkt/a/c/x.ome.tif" and p.name == "x.ome.tif" and p.suffix == ".tif"
    assert str(p.parent) == "s3://bkt/a/c" and str(p.parent / "y") == "s3://bkt/a/c/y"
    assert p.relative_to("s3://bkt/a").as_posix() == "c/x.ome.tif"
    assert UrlPath("s3://bkt").name == "bkt" and UrlPath("s3://bkt/").parent == UrlPath("s3://bkt")
    assert is_url("s3://b/x") and is_url("gs://b") and not is_url("/tmp/x")
    assert not is_url("file:///tmp/x") and not is_url("C:/x")
    rx = glob_regex("**/*.tif")
    assert rx.match("a.tif") and rx.match("d/e/a.tif") and not rx.match("a.tiff")
    assert glob_regex("P1/*_blue.*").match("P1/x_blue.png")
    assert not glob_regex("P1/*_blue.*").match("P1/sub/x_blue.png")
    assert glob_regex("[!.]*.tif").match("a.tif") and not glob_regex("[!.]*.tif").match(".a.tif")


def test_listing_is_recursive_sorted_and_filtered(s3, local_data):
    urls = list_files(s3["url"] + "/")
    local = sorted(p for p in local_data.rglob("*") if p.is_file())
    assert urls == sorted(f"{s3['url']}/{p.relative_to(local_data).as_posix()}" for p in local)
    assert list_files(s3["url"], "stacks/*.tif") == [
        f"{s3['url']}/stacks/large.tif",
        f"{s3['url']}/stacks/small.tif",
    ]


# --------------------------------------------------------------------------- manifests


def test_s3_folder_gives_the_local_manifest(s3, local_data):
    local, q_local = build_manifest(local_data, pixel_size_um=0.2, shard_size=2)
    remote, q_remote = build_manifest(s3["url"] + "/", pixel_size_um=0.2, shard_size=2)
    assert q_local.empty, q_local.to_string()
    assert q_remote.empty, q_remote.to_string()
    _same_except_source(local, remote, local_data, s3["url"])
    assert set(remote["format"]) == {"hpa", "tiff"}
    assert sorted(remote["plate"].unique()) == ["P1", "more", "stacks"]
    hpa = remote[remote["format"] == "hpa"].iloc[0]
    assert all(s.startswith("s3://atlas-in/data/P1/") for s in json.loads(hpa["source"]))
    large = remote[remote["source"].str.endswith("large.tif")].iloc[0]
    assert large["checksum"].startswith("sha256-fast:")  # first + last MiB, by ranged reads
    assert (large.size_c, large.size_y, large.size_x) == (3, 620, 600)
    assert large.pixel_size_um == pytest.approx(0.25) and large.pixel_size_source == "metadata"


def test_full_checksums_agree(s3, local_data):
    kw = dict(pixel_size_um=0.2, checksum="full")
    local, _ = build_manifest(local_data / "stacks", **kw)
    remote, _ = build_manifest(s3["url"] + "/stacks", **kw)
    _same_except_source(local, remote, local_data, s3["url"])
    assert remote["checksum"].str.startswith("sha256:").all()


def _sheet_rows(base: str) -> list[dict]:
    return [
        {"source": f"{base}/P1/P1_B02_1", "format": "hpa", "protein": "TP53"},
        {"source": f"{base}/P1/P1_B03_1", "format": "", "protein": "TP53"},  # stem, detected
        {
            "source": f"{base}/stacks/small.tif",
            "format": "",
            "plate": "P2",
            "well": "C4",
            "field": 7,
        },
        {"source": f"{base}/stacks/large.tif", "format": "tiff", "plate": "P2", "well": "C5"},
    ]


def test_sheet_of_s3_urls_gives_the_local_manifest_and_quarantines_missing_objects(
    s3, local_data, tmp_path
):
    local_sheet = tmp_path / "local.csv"
    pd.DataFrame(_sheet_rows(str(local_data))).to_csv(local_sheet, index=False)
    local, q_local = build_manifest(local_sheet, pixel_size_um=0.2)
    assert q_local.empty, q_local.to_string()

    missing = [
        f"{s3['url']}/stacks/not-there.tif",  # no such key
        "s3://no-such-bucket-here/x.tif",  # no such bucket
        f"{s3['url']}/P1/P1_B07_1",  # an HPA stem without channel files
    ]
    rows = _sheet_rows(s3["url"]) + [{"source": m, "format": ""} for m in missing]
    sheet = tmp_path / "remote.csv"
    pd.DataFrame(rows).to_csv(sheet, index=False)
    remote, quarantine = build_manifest(sheet, pixel_size_um=0.2)
    _same_except_source(local, remote, local_data, s3["url"])
    assert sorted(quarantine["source"]) == sorted(missing)
    by_source = quarantine.set_index("source")
    assert set(by_source.loc[missing[:2], "error_type"]) == {"not-found"}
    assert by_source.loc[missing[2], "error_type"] in ("not-found", "missing-channel")
    for url in missing:
        reason = by_source.loc[url, "reason"]
        assert url in reason and "sample sheet" in reason, reason
    assert "not found" in by_source.loc[missing[0], "reason"]


def test_sheet_in_the_bucket_with_relative_sources(s3, local_data, tmp_path):
    rows = _sheet_rows("../data")
    body = pd.DataFrame(rows).to_csv(index=False, sep="\t").encode()
    s3["client"].put_object(Bucket=BUCKET, Key="sheets/run1.tsv", Body=body)
    local_sheet = local_data.parent / "sheets" / "run1.tsv"
    local_sheet.parent.mkdir(exist_ok=True)
    local_sheet.write_bytes(body)
    local, _ = build_manifest(local_sheet, pixel_size_um=0.2)
    remote, quarantine = build_manifest(f"s3://{BUCKET}/sheets/run1.tsv", pixel_size_um=0.2)
    assert quarantine.empty, quarantine.to_string()
    _same_except_source(local, remote, local_data, s3["url"])


def test_unreachable_store_is_quarantined_and_the_batch_goes_on(
    s3, local_data, tmp_path, monkeypatch
):
    import s3fs

    rows = [
        {"source": str(local_data / "stacks" / "small.tif"), "plate": "L", "well": "A1"},
        {"source": f"{s3['url']}/stacks/large.tif", "plate": "R", "well": "A1"},
    ]
    sheet = tmp_path / "mixed.csv"
    pd.DataFrame(rows).to_csv(sheet, index=False)
    # nothing listens on port 9 (discard) of loopback: connection refused
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.setenv(key, "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        manifest, quarantine = build_manifest(sheet)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    assert list(manifest["plate"]) == ["L"]
    assert list(quarantine["source"]) == [rows[1]["source"]]
    rec = quarantine.iloc[0]
    assert rec.error_type == "not-found"
    assert "unreachable" in rec.reason and rows[1]["source"] in rec.reason


# --------------------------------------------------------------------------- pixels


def test_pixels_from_s3_equal_local_and_leave_no_copies(s3, local_data, monkeypatch, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where local copies go
    local, _ = build_manifest(local_data, pixel_size_um=0.2)
    remote, _ = build_manifest(s3["url"], pixel_size_um=0.2)
    assert list(scratch.iterdir()) == []  # probing: copies of the stacks, all deleted
    for (_, a), (_, b) in zip(local.iterrows(), remote.iterrows(), strict=True):
        pa, pb = read_field_pixels(a), read_field_pixels(b)
        assert pb.dtype == pa.dtype and pb.shape == (b.size_c, b.size_z, b.size_y, b.size_x)
        np.testing.assert_array_equal(pa, pb, err_msg=b.field_id)
    assert list(scratch.iterdir()) == []


def test_object_deleted_after_ingest_names_the_url(s3, local_data):
    s3["client"].upload_file(str(local_data / "stacks" / "small.tif"), BUCKET, "gone/small.tif")
    s3["client"].upload_file(
        str(local_data / "P1" / "P1_B02_1_red.png"), BUCKET, "gone/P1_B02_1_red.png"
    )
    for c in ("blue", "yellow", "green"):
        s3["client"].upload_file(
            str(local_data / "P1" / f"P1_B02_1_{c}.png"), BUCKET, f"gone/P1_B02_1_{c}.png"
        )
    manifest, _ = build_manifest(f"s3://{BUCKET}/gone", pixel_size_um=0.2)
    assert len(manifest) == 2
    s3["client"].delete_object(Bucket=BUCKET, Key="gone/small.tif")
    s3["client"].delete_object(Bucket=BUCKET, Key="gone/P1_B02_1_red.png")
    for _, row in manifest.iterrows():
        with pytest.raises(IngestError) as err:
            read_field_pixels(row)
        assert err.value.error_type == "not-found"
        assert str(err.value).startswith(f"s3://{BUCKET}/gone/"), str(err.value)


# --------------------------------------------------------------------------- jobs


def test_ingest_and_normalize_jobs_from_s3_into_an_s3_zarr(s3, local_data, tmp_path):
    """The real CLI jobs: ``locatlas ingest --samples s3://...`` and ``locatlas
    normalize --zarr-root s3://...``; the images equal a local run's."""
    from locatlas.cli import main
    from locatlas.omezarr import read_field_image

    params = json.dumps({"channels": {"pixel_size_um": 0.2}, "ingest": {}})
    out = {}
    for name, samples, zarr_root in (
        ("local", str(local_data / "P1"), str(tmp_path / "local" / "zarr")),
        ("s3", f"{s3['url']}/P1/", f"s3://{BUCKET}/out/zarr"),
    ):
        work = tmp_path / name
        assert main(["ingest", "--samples", samples, "--out-dir", str(work / "manifest"),
                     "--shard-size", "10", "--params", params]) == 0  # fmt: skip
        shards = sorted((work / "manifest" / "shards").glob("*.parquet"))
        assert [p.stem for p in shards] == ["P1-00000", "more-00000"]
        receipts = []
        for shard in shards:
            receipt = work / "receipts" / f"{shard.stem}.parquet"
            assert main(["normalize", "--shard-manifest", str(shard), "--zarr-root", zarr_root,
                         "--receipt", str(receipt), "--quarantine",
                         str(work / "quarantine" / f"{shard.stem}.parquet"),
                         "--params", "{}"]) == 0  # fmt: skip
            receipts.append(pd.read_parquet(receipt))
            assert pd.read_parquet(work / "quarantine" / f"{shard.stem}.parquet").empty
        out[name] = pd.concat(receipts, ignore_index=True)
    local, remote = out["local"], out["s3"]
    assert len(remote) == len(local) == 3
    assert remote["zarr_path"].str.startswith(f"s3://{BUCKET}/out/zarr/").all()
    for (_, a), (_, b) in zip(local.iterrows(), remote.iterrows(), strict=True):
        assert a.field_id == b.field_id
        ia, ma = read_field_image(a.zarr_path)
        ib, mb = read_field_image(b.zarr_path)
        np.testing.assert_array_equal(ia, ib, err_msg=b.field_id)
        assert ma["channel_roles"] == mb["channel_roles"]
        assert ma["pixel_size_um"] == mb["pixel_size_um"] == 0.2
    manifest = pd.read_parquet(tmp_path / "s3" / "manifest" / "manifest.parquet")
    assert all(is_url(s) for row in manifest["source"] for s in json.loads(row))


def test_real_vendor_files_from_s3_equal_local(s3, shared_data):
    """CZI, LIF (spectral, xz), ND2, DV, LSM, OME-TIFF from ../shared/data/formats: read
    through local copies of the objects, they give the local rows and pixels."""
    import warnings

    formats = shared_data / "formats"
    for p in sorted(formats.rglob("*")):
        if p.is_file():
            key = f"formats/{p.relative_to(formats).as_posix()}"
            s3["client"].upload_file(str(p), BUCKET, key)
    url = f"s3://{BUCKET}/formats"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local, q_local = build_manifest(formats)
        remote, q_remote = build_manifest(url + "/")
        assert q_local.empty and q_remote.empty, q_remote.to_string()
        _same_except_source(local, remote, formats, url)
        assert {"czi", "lif", "nd2", "dv", "lsm", "ome-tiff"} <= set(remote["format"])
        views = local.drop_duplicates("view_id").index
        for i in views:
            a, b = local.loc[i], remote.loc[i]
            np.testing.assert_array_equal(
                read_field_pixels(a), read_field_pixels(b), err_msg=b.field_id
            )


def test_workflow_ingests_an_s3_prefix_and_reruns_when_objects_land(s3, local_data, tmp_path):
    """``input.samples: s3://...`` in the workflow: the ingest checkpoint takes the URL
    (not a file Snakemake can date) and reruns when a new object lands under it."""
    import yaml
    from workflow_utils import REPO, snakemake

    client, prefix = s3["client"], "workflow/"
    for p in sorted((local_data / "P1").glob("P1_B02_1_*")):
        client.upload_file(str(p), BUCKET, prefix + p.name)
    config = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    config["input"] = {"samples": f"s3://{BUCKET}/{prefix}", "simulate": None}
    config["channels"] = {"pixel_size_um": 0.2}
    cfg = tmp_path / "s3.yaml"
    cfg.write_text(yaml.safe_dump(config))
    work, target = tmp_path / "run", "results/manifest/manifest.parquet"
    work.mkdir()

    snakemake(work, target, config=str(cfg))
    manifest = pd.read_parquet(work / target)
    assert list(manifest["field_id"].str.contains("B02")) == [True]
    assert all(s.startswith(f"s3://{BUCKET}/{prefix}") for s in json.loads(manifest["source"][0]))
    assert "Nothing to be done" in snakemake(work, target, "-n", config=str(cfg)).stdout

    for p in sorted((local_data / "P1").glob("P1_B03_1_*")):  # the microscope writes a field
        client.upload_file(str(p), BUCKET, prefix + p.name)
    assert "ingest" in snakemake(work, target, "-n", config=str(cfg)).stdout
    snakemake(work, target, config=str(cfg))
    manifest = pd.read_parquet(work / target)
    assert sorted(manifest["well"]) == ["B02", "B03"]
