"""Manifest contract: ids, shards, sheet validation, derived values, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from locatlas.atomic import write_parquet
from locatlas.ids import make_field_id, make_shard_id, make_view_id
from locatlas.ingest import (
    MANIFEST_COLUMNS,
    QUARANTINE_COLUMNS,
    SampleSheetError,
    assign_roles,
    build_manifest,
    read_field_pixels,
)
from locatlas.ingest.samplesheet import SCHEMA_PATH, load_schema

COLOURS = ("red", "green", "blue", "yellow")


def write_hpa_field(stem: Path, *, shape=(24, 32), seed=0, ext="tif") -> list[Path]:
    """Four channel files ``<stem>_<colour>.<ext>``, channel value k*1000 + noise."""
    rng = np.random.default_rng(seed)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for k, colour in enumerate(COLOURS):
        arr = (rng.integers(1, 500, shape) + 1000 * (k + 1)).astype(np.uint16)
        path = stem.parent / f"{stem.name}_{colour}.{ext}"
        tifffile.imwrite(path, arr)
        out.append(path)
    return out


def write_sheet(path: Path, rows: list[dict], sep: str = ",") -> Path:
    pd.DataFrame(rows).to_csv(path, index=False, sep=sep)
    return path


def sim_rows(root: Path, plate: str, wells=("B5", "A1", "C12"), fields=(1, 2), tps=(0, 1, 2)):
    """Simulator-style rows (one HPA stem per field × time point)."""
    rows = []
    for w in wells:
        for f in fields:
            for t in tps:
                stem = root / plate / f"{plate}_{w}_{f}_t{t}"
                write_hpa_field(stem, seed=hash((plate, w, f, t)) % 1000)
                rows.append(
                    {
                        "source": str(stem.relative_to(root)),
                        "format": "hpa",
                        "plate": plate,
                        "well": w,
                        "field": f,
                        "timepoint": t,
                        "protein": "TP53",
                        "cell_line": "U-2 OS",
                        "labels": "0;16" if f == 1 else "",
                        "split": "train",
                        "pixel_size_um": 0.08,
                    }
                )
    return rows


@pytest.fixture
def two_plates(tmp_path):
    rows1 = sim_rows(tmp_path, "P1")
    rows2 = sim_rows(tmp_path, "P2", wells=("D4",), fields=(1, 2, 3))
    return tmp_path, rows1, rows2


def test_manifest_columns_types_and_ids(two_plates):
    root, rows1, _ = two_plates
    sheet = write_sheet(root / "sheet.csv", rows1)
    manifest, quarantine = build_manifest(sheet, shard_size=2)
    assert quarantine.empty, quarantine.to_string()
    assert tuple(manifest.columns) == MANIFEST_COLUMNS
    assert tuple(quarantine.columns) == QUARANTINE_COLUMNS
    assert len(manifest) == 3 * 2 * 3
    for _, r in manifest.iterrows():
        assert r.field_id == make_field_id(r.plate, r.well, r.field, r.timepoint)
        assert r.view_id == make_view_id(r.plate, r.well, r.field)
    row = manifest.set_index("field_id").loc["P1_B05_1_t002"]
    assert row.well == "B05" and row.protein == "TP53" and row.labels == "0;16"
    assert row.pixel_size_um == 0.08 and row.pixel_size_source == "samplesheet"
    assert np.isnan(row.z_step_um)
    assert json.loads(row.channel_roles) == ["nucleus", "microtubules", "er", "protein"]
    assert json.loads(row.channel_names) == ["blue", "red", "yellow", "green"]
    files = json.loads(row.source)
    assert [Path(f).name for f in files] == [
        f"P1_B5_1_t2_{c}.tif" for c in ("blue", "red", "yellow", "green")
    ]
    assert row.checksum.startswith("sha256-multi:")
    assert manifest["field"].dtype == np.int64 and manifest["pixel_size_um"].dtype == np.float64
    # manifest order: plate, well (A01 < B05 < C12), field, time point
    assert list(manifest.well.unique()) == ["A01", "B05", "C12"]
    # pixels: channel k of the source order = colour value band
    arr = read_field_pixels(row.to_dict() | {"field_id": "P1_B05_1_t002"})
    assert arr.shape == (4, 1, 24, 32) and arr.dtype == np.uint16
    # blue was written as k=2 -> values 3001..3500; red k=0 -> 1001..1500
    assert 3000 < arr[0].min() and arr[0].max() <= 3500
    assert 1000 < arr[1].min() and arr[1].max() <= 1500


def test_shards_per_plate_are_stable_when_a_plate_is_added(two_plates):
    root, rows1, rows2 = two_plates
    m1, q1 = build_manifest(write_sheet(root / "one.csv", rows1), shard_size=2)
    m2, q2 = build_manifest(write_sheet(root / "two.csv", rows2 + rows1), shard_size=2)
    assert q1.empty and q2.empty
    before = m1.set_index("field_id")["shard"]
    after = m2.set_index("field_id")["shard"]
    pd.testing.assert_series_equal(before, after.loc[before.index])
    # P1: 6 views sorted by (well, field), 2 per shard -> 3 shards; P2 adds its own
    assert sorted(before.unique()) == [make_shard_id("P1", k) for k in range(3)]
    new = after.drop(before.index)
    assert sorted(new.unique()) == [make_shard_id("P2", 0), make_shard_id("P2", 1)]
    # the first shard of P1 holds the first two views in (well, field) order
    first = m1[m1.shard == "P1-00000"].view_id.unique()
    assert sorted(first) == ["P1_A01_1", "P1_A01_2"]


def test_all_timepoints_of_a_view_share_a_shard(two_plates):
    root, rows1, rows2 = two_plates
    manifest, _ = build_manifest(write_sheet(root / "s.csv", rows1 + rows2), shard_size=1)
    per_view = manifest.groupby("view_id")["shard"].nunique()
    assert (per_view == 1).all()
    assert (manifest.groupby("view_id").size() == 3).all()
    # shard_size views per shard, not rows
    assert (manifest.groupby("shard")["view_id"].nunique() == 1).all()


def test_field_ids_and_bytes_are_stable(two_plates, tmp_path):
    root, rows1, rows2 = two_plates
    sheet = write_sheet(root / "s.csv", rows1 + rows2)
    m1, _ = build_manifest(sheet, shard_size=3, workers=1)
    m2, _ = build_manifest(sheet, shard_size=3, workers=4)
    shuffled = pd.DataFrame(rows1 + rows2).sample(frac=1.0, random_state=3)
    m3, _ = build_manifest(
        write_sheet(root / "shuffled.csv", shuffled.to_dict("records")), shard_size=3
    )
    pd.testing.assert_frame_equal(m1, m2)
    pd.testing.assert_frame_equal(m1, m3)
    a = write_parquet(m1, tmp_path / "a.parquet").read_bytes()
    b = write_parquet(m3, tmp_path / "b.parquet").read_bytes()
    assert a == b


def test_tsv_sheet_and_relative_paths(two_plates):
    root, rows1, _ = two_plates
    sub = root / "sheets"
    sub.mkdir()
    rows = [dict(r, source=str(Path("..") / r["source"])) for r in rows1[:3]]
    manifest, quarantine = build_manifest(write_sheet(sub / "s.tsv", rows, sep="\t"))
    assert quarantine.empty and len(manifest) == 3


def test_schema_documents_every_column():
    schema = load_schema()
    assert SCHEMA_PATH.name == "samplesheet.schema.yaml"
    for name in (
        "source format plate well field timepoint protein cell_line labels split "
        "pixel_size_um scene"
    ).split():
        prop = schema["properties"][name]
        assert prop.get("type") and len(prop.get("description", "")) > 10, name
    assert schema["required"] == ["source"]


@pytest.mark.parametrize(
    ("column", "value", "words"),
    [
        ("field", "abc", "is not of type 'integer'"),
        ("well", "Z999x", "does not match"),
        ("timepoint", "-1", "less than the minimum"),
        ("pixel_size_um", "-0.5", "less than or equal to the minimum"),
        ("pixel_size_um", "fast", "is not of type 'number'"),
        ("labels", "3;nucleus", "does not match"),
        ("format", "bmp", "is not one of"),
        ("source", "", "is a required property"),
    ],
)
def test_sheet_validation_errors_name_the_column(tmp_path, column, value, words):
    write_hpa_field(tmp_path / "good_A1_1")
    write_hpa_field(tmp_path / "bad_A1_1")
    rows = [
        {"source": "good_A1_1", "format": "hpa", "well": "A1", "field": 1, "pixel_size_um": 0.1},
        {"source": "bad_A1_1", "format": "hpa", "well": "A1", "field": 1, "pixel_size_um": 0.1},
    ]
    rows[1][column] = value
    manifest, quarantine = build_manifest(write_sheet(tmp_path / "s.csv", rows))
    assert list(manifest.plate) == ["good"]
    assert len(quarantine) == 1
    q = quarantine.iloc[0]
    assert q.error_type == "bad-sheet-row" and q.stage == "ingest"
    assert f"column '{column}'" in q.reason and words in q.reason
    assert "s.csv:3" in q.reason  # sheet and line


def test_sheet_level_errors_raise(tmp_path):
    (tmp_path / "nosource.csv").write_text("path,plate\nx.tif,P1\n")
    with pytest.raises(SampleSheetError, match="missing required column 'source'"):
        build_manifest(tmp_path / "nosource.csv")
    (tmp_path / "empty.csv").write_text("# just a comment\n\n")
    with pytest.raises(SampleSheetError, match="empty sheet"):
        build_manifest(tmp_path / "empty.csv")
    with pytest.raises(FileNotFoundError):
        build_manifest(tmp_path / "absent.csv")
    with pytest.raises(ValueError, match="not a role"):
        build_manifest(tmp_path / "nosource.csv", roles_override={"DAPI": "nucleolus"})


def test_derived_values_for_a_directory_of_vendor_files(tmp_path):
    d = tmp_path / "run7"
    d.mkdir()
    for name, t in (("b.ome.tif", 1), ("a.ome.tif", 3)):
        data = np.arange(t * 2 * 3 * 8 * 8, dtype=np.uint16).reshape(t, 2, 3, 8, 8) + 1
        tifffile.imwrite(
            d / name,
            data,
            ome=True,
            metadata={
                "axes": "TCZYX",
                "PhysicalSizeX": 0.5,
                "PhysicalSizeY": 0.5,
                "PhysicalSizeZ": 2.0,
                "Channel": {"Name": ["Hoechst 33342", "mEGFP"]},
            },
        )
    (d / "notes.txt").write_text("ignored sidecar")
    manifest, quarantine = build_manifest(d, shard_size=1)
    assert quarantine.empty, quarantine.to_string()
    # plate = folder, well A01, field counter in sorted path order, t from the file
    assert list(manifest.field_id) == [
        "run7_A01_1_t000",
        "run7_A01_1_t001",
        "run7_A01_1_t002",
        "run7_A01_2_t000",
    ]
    assert Path(manifest.source.iloc[0]).name == "a.ome.tif"
    r = manifest.iloc[1]
    assert (r.size_c, r.size_z, r.size_y, r.size_x, r.t_index) == (2, 3, 8, 8, 1)
    assert r.pixel_size_um == 0.5 and r.z_step_um == 2.0 and r.pixel_size_source == "metadata"
    assert json.loads(r.channel_roles) == ["nucleus", "protein"]
    arr = read_field_pixels(r)
    expected = np.arange(3 * 2 * 3 * 8 * 8, dtype=np.uint16).reshape(3, 2, 3, 8, 8)[1] + 1
    np.testing.assert_array_equal(arr, expected)
    assert list(manifest.shard.unique()) == ["run7-00000", "run7-00001"]


def test_kaggle_layout(tmp_path):
    from imagecodecs import png_encode

    (tmp_path / "train").mkdir()
    ids = ["00070df0-bbc3", "000a6c98-bb9b", "000a9596-bbc4"]
    (tmp_path / "train.csv").write_text(
        "Id,Target\n"
        + "\n".join(f"{i},{t}" for i, t in zip(ids, ["16 0", "7 1 2 0", "5"], strict=True))
        + "\n"
    )
    rng = np.random.default_rng(1)
    for i in ids:
        for c in COLOURS:
            (tmp_path / "train" / f"{i}_{c}.png").write_bytes(
                png_encode(rng.integers(1, 255, (16, 16), dtype=np.uint8))
            )
    manifest, quarantine = build_manifest(tmp_path, pixel_size_um=0.08)
    assert quarantine.empty, quarantine.to_string()
    assert list(manifest.labels) == ["0;16", "0;1;2;7", "5"]
    assert list(manifest.field_id) == [f"train_A01_{k}_t000" for k in (1, 2, 3)]
    assert set(manifest.split) == {"train"}
    assert read_field_pixels(manifest.iloc[0]).shape == (4, 1, 16, 16)


def test_multi_scene_and_scene_column(tmp_path):
    path = tmp_path / "two.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        for s in range(2):
            tw.write(
                np.full((2, 8, 8), s + 1, np.uint16),
                metadata={"axes": "CYX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.3},
            )
    rows = [
        {"source": "two.ome.tif", "plate": "P", "well": "C3", "field": 10},
        {"source": "two.ome.tif", "plate": "P", "well": "D4", "field": 1, "scene": 1},
    ]
    manifest, quarantine = build_manifest(write_sheet(tmp_path / "s.csv", rows))
    # the first row expands to scene 0 -> field 10 and scene 1 -> field 11; the second
    # row lists scene 1 again under another id: quarantined as the same image twice
    assert list(manifest.field_id) == ["P_C03_10_t000", "P_C03_11_t000"]
    assert list(manifest.scene) == [0, 1]
    assert len(quarantine) == 1 and quarantine.iloc[0].error_type == "duplicate-id"
    assert read_field_pixels(manifest.iloc[1]).max() == 2


def test_roles_rules_and_override():
    roles, notes = assign_roles(
        ["DAPI", "Alexa Fluor 488", "anti-tubulin 568", "Calreticulin", "Brightfield", "xyz"]
    )
    assert roles == ["nucleus", "protein", "microtubules", "er", "", ""]
    assert len(notes) == 2
    roles, _ = assign_roles(["405", "488", "561", "640"])
    assert roles == ["nucleus", "protein", "microtubules", "er"]
    roles, notes = assign_roles(["Hoechst", "DAPI"])  # one nucleus only
    assert roles == ["nucleus", ""] and "already taken" in notes[0]
    roles, _ = assign_roles(["DAPI", "Cy5", "GFP"], override={"cy5": "er", "gfp": "ignore"})
    assert roles == ["nucleus", "er", ""]
    roles, _ = assign_roles(["ChS1"], hints=[("Alexa Fluor 568",)])
    assert roles == ["microtubules"]
    roles, _ = assign_roles(["blue", "red", "yellow", "green"])
    assert roles == ["nucleus", "microtubules", "er", "protein"]


def test_roles_override_reaches_the_manifest(tmp_path):
    write_hpa_field(tmp_path / "x_A1_1")
    rows = [{"source": "x_A1_1", "format": "hpa", "pixel_size_um": 0.1}]
    manifest, _ = build_manifest(
        write_sheet(tmp_path / "s.csv", rows), roles_override={"yellow": "ignore"}
    )
    assert json.loads(manifest.channel_roles.iloc[0]) == ["nucleus", "microtubules", "", "protein"]
