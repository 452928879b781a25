"""Broken input of many kinds, mixed with good files: every bad one is quarantined with
a reason naming the file and the problem (at ingest, or when its pixels are read as
normalization does), every good one is in the manifest and reads back."""

from __future__ import annotations

import csv
import os
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from imagecodecs import jpeg8_encode, png_encode

from locatlas.ingest import (
    QUARANTINE_COLUMNS,
    IngestError,
    build_manifest,
    read_field_pixels,
    record_from_error,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

COLOURS = ("red", "green", "blue", "yellow")
RNG = np.random.default_rng(20261124)


# --------------------------------------------------------------------------- writers


def hpa(root: Path, stem: str, *, ext="tif", shape=(24, 32), skip=(), zero=(), dtype=np.uint16):
    """HPA channel files; ``skip`` colours are not written, ``zero`` colours are all zero."""
    paths = {}
    for k, colour in enumerate(COLOURS):
        if colour in skip:
            continue
        arr = RNG.integers(1, 200, shape).astype(dtype) + np.asarray(10 * k, dtype)
        if colour in zero:
            arr[:] = 0
        path = root / f"{stem}_{colour}.{ext}"
        if ext == "tif":
            tifffile.imwrite(path, arr)
        elif ext == "png":
            path.write_bytes(png_encode(arr))
        else:  # HPA-style tinted RGB JPEG
            rgb = np.zeros((*shape, 3), np.uint8)
            for comp in {"red": (0,), "green": (1,), "blue": (2,), "yellow": (0, 1)}[colour]:
                rgb[..., comp] = arr.astype(np.uint8)
            path.write_bytes(jpeg8_encode(rgb, level=95))
        paths[colour] = path
    return paths


def truncate(path: Path, frac: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * frac)])
    return path


def png_bomb(path: Path, side: int = 100_000) -> Path:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    return path


def tiff_bomb(path: Path, side: int = 200_000) -> Path:
    """A valid little TIFF whose header claims side x side pixels (deflate, 1 strip)."""
    blob = zlib.compress(b"\0" * 4096)
    entries = [
        (256, 4, 1, side),
        (257, 4, 1, side),
        (258, 3, 1, 8),
        (259, 3, 1, 8),
        (262, 3, 1, 1),
        (273, 4, 1, 0),
        (277, 3, 1, 1),
        (278, 4, 1, side),
        (279, 4, 1, len(blob)),
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    data_off = 8 + ifd_size
    out = bytearray(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries)))
    for tag, typ, count, value in entries:
        value = data_off if tag == 273 else value
        fmt = "<HHIHH" if typ == 3 else "<HHII"
        out += (
            struct.pack(fmt, tag, typ, count, value, 0)
            if typ == 3
            else struct.pack(fmt, tag, typ, count, value)
        )
    out += struct.pack("<I", 0) + blob
    path.write_bytes(bytes(out))
    return path


def ome_tiff(path: Path, shape=(2, 2, 3, 16, 16), scenes=1) -> Path:
    with tifffile.TiffWriter(path, ome=True) as tw:
        for _ in range(scenes):
            tw.write(
                RNG.integers(1, 1000, shape, dtype=np.uint16),
                metadata={
                    "axes": "TCZYX"[-len(shape) :],
                    "PhysicalSizeX": 0.2,
                    "PhysicalSizeY": 0.2,
                    "Channel": {"Name": ["DAPI", "GFP"]},
                },
            )
    return path


def czi(path: Path) -> Path:
    from pylibCZIrw import czi as pyczi

    data = RNG.integers(1, 1000, (2, 2, 40, 48), dtype=np.uint16)
    with pyczi.create_czi(str(path)) as w:
        for c in range(2):
            for z in range(2):
                w.write(data=data[c, z], plane={"C": c, "Z": z, "T": 0})
        w.write_metadata(
            "x",
            channel_names={0: "DAPI", 1: "EGFP"},
            scale_x=0.2e-6,
            scale_y=0.2e-6,
            scale_z=0.5e-6,
        )
    return path


def dv(path: Path) -> Path:
    import mrc

    arr = RNG.integers(1, 1000, (2, 3, 16, 16), dtype=np.uint16)
    mrc.imsave(
        str(path), arr, metadata={"wave": [461, 525, 0, 0, 0], "dx": 0.1, "dy": 0.1, "dz": 0.3}
    )
    return path


# --------------------------------------------------------------------------- cases


@dataclass
class Expect:
    needle: str  # must appear in the reason (names the file)
    types: tuple[str, ...]
    words: str  # regex the reason must match (names the problem)


CASES: dict[str, Callable[[Path], tuple[list[dict], list[Expect]]]] = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


def row(source, **kw):
    return {"source": str(source), **kw}


@case
def truncated_tiff_channel(d):
    p = hpa(d, "trunctif_A1_1")
    truncate(p["green"], 0.5)
    return [row("trunctif_A1_1", format="hpa", pixel_size_um=0.1)], [
        Expect("trunctif_A1_1_green.tif", ("truncated",), r"truncated.*ends at byte")
    ]


@case
def truncated_png_channel(d):
    p = hpa(d, "truncpng_A1_1", ext="png")
    truncate(p["blue"], 0.6)
    return [row("truncpng_A1_1", format="hpa", pixel_size_um=0.1)], [
        Expect("truncpng_A1_1_blue.png", ("truncated",), r"PNG is truncated")
    ]


@case
def truncated_jpeg_channel(d):
    p = hpa(d, "truncjpg_A1_1", ext="jpg")
    truncate(p["red"], 0.7)
    return [row("truncjpg_A1_1", format="hpa", pixel_size_um=0.1)], [
        Expect("truncjpg_A1_1_red.jpg", ("truncated",), r"JPEG is truncated")
    ]


@case
def truncated_czi(d):
    truncate(czi(d / "trunc.czi"), 0.6)
    return [row("trunc.czi")], [Expect("trunc.czi", ("truncated",), r"CZI is truncated")]


@case
def truncated_ome_tiff(d):
    truncate(ome_tiff(d / "trunc.ome.tif"), 0.5)
    return [row("trunc.ome.tif")], [Expect("trunc.ome.tif", ("truncated",), r"TIFF is truncated")]


@case
def truncated_dv(d):
    truncate(dv(d / "trunc.dv"), 0.8)
    return [row("trunc.dv")], [Expect("trunc.dv", ("truncated",), r"DV file is truncated")]


@case
def random_bytes_tif(d):
    (d / "noise.tif").write_bytes(RNG.bytes(5000))
    return [row("noise.tif", pixel_size_um=0.1)], [
        Expect("noise.tif", ("corrupt",), r"not a valid tiff")
    ]


@case
def random_bytes_png_channel(d):
    p = hpa(d, "noisepng_A1_1", ext="png")
    p["yellow"].write_bytes(RNG.bytes(3000))
    return [row("noisepng_A1_1", format="hpa", pixel_size_um=0.1)], [
        Expect("noisepng_A1_1_yellow.png", ("corrupt",), r"not a valid png")
    ]


@case
def random_bytes_czi(d):
    (d / "noise.czi").write_bytes(RNG.bytes(4000))
    return [row("noise.czi")], [Expect("noise.czi", ("corrupt",), r"not a valid czi")]


@case
def random_bytes_nd2(d):
    (d / "noise.nd2").write_bytes(RNG.bytes(4000))
    return [row("noise.nd2")], [Expect("noise.nd2", ("corrupt",), r"not a valid nd2")]


@case
def empty_file(d):
    (d / "empty.ome.tif").write_bytes(b"")
    return [row("empty.ome.tif")], [Expect("empty.ome.tif", ("empty-file",), r"empty \(0 bytes\)")]


@case
def wrong_extension(d):
    (d / "mislabel.tif").write_bytes(png_encode(RNG.integers(1, 9, (8, 8), dtype=np.uint8)))
    return [row("mislabel.tif", pixel_size_um=0.1)], [
        Expect(
            "mislabel.tif", ("extension-mismatch",), r"extension says tiff but the content is png"
        )
    ]


@case
def wrong_extension_channel(d):
    p = hpa(d, "jpgpng_A1_1", ext="png")
    p["green"].write_bytes(jpeg8_encode(RNG.integers(1, 9, (24, 32), dtype=np.uint8)))
    return [row("jpgpng_A1_1", format="hpa", pixel_size_um=0.1)], [
        Expect("jpgpng_A1_1_green.png", ("extension-mismatch",), r"content is jpeg")
    ]


@case
def declared_format_mismatch(d):
    ome_tiff(d / "declared.ome.tif")
    return [row("declared.ome.tif", format="czi")], [
        Expect("declared.ome.tif", ("extension-mismatch",), r"sheet says format 'czi'")
    ]


@case
def missing_channel_file(d):
    hpa(d, "nochan_A1_1", skip=("yellow",))
    return [row("nochan_A1_1", format="hpa", pixel_size_um=0.1)], [
        Expect("nochan_A1_1", ("missing-channel",), r"missing channel file.*yellow")
    ]


@case
def shape_mismatch_across_channels(d):
    hpa(d, "shapes_A1_1")
    tifffile.imwrite(d / "shapes_A1_1_green.tif", np.ones((16, 16), np.uint16))
    return [row("shapes_A1_1", format="hpa", pixel_size_um=0.1)], [
        Expect("shapes_A1_1", ("shape-mismatch",), r"channel shapes differ.*green 16x16")
    ]


@case
def all_zero_image(d):
    hpa(d, "zeros_A1_1", zero=COLOURS)
    return [row("zeros_A1_1", format="hpa", pixel_size_um=0.1)], [
        Expect("zeros_A1_1", ("all-zero",), r"all pixels are zero")
    ]


@case
def all_zero_nucleus_channel(d):
    hpa(d, "deadblue_A1_1", zero=("blue",))
    return [row("deadblue_A1_1", format="hpa", pixel_size_um=0.1)], [
        Expect("deadblue_A1_1_blue.tif", ("all-zero",), r"role nucleus\) is entirely zero")
    ]


@case
def nan_float_tiff(d):
    arr = RNG.random((2, 16, 16)).astype(np.float32)
    arr[1, 3:5, 3:6] = np.nan
    tifffile.imwrite(d / "nan.tif", arr, imagej=True, metadata={"axes": "CYX"})
    return [row("nan.tif", pixel_size_um=0.1)], [
        Expect("nan.tif", ("non-finite",), r"channel 1 .* 6 NaN/inf pixels")
    ]


@case
def decompression_bomb_png(d):
    png_bomb(d / "bomb.png")
    return [row("bomb.png", pixel_size_um=0.1)], [
        Expect("bomb.png", ("too-large",), r"100000x100000 .*decompression bomb")
    ]


@case
def decompression_bomb_tiff(d):
    tiff_bomb(d / "bomb.tif")
    return [row("bomb.tif", pixel_size_um=0.1)], [
        Expect("bomb.tif", ("too-large",), r"200000x200000 .*refused before decoding")
    ]


@case
def decompression_bomb_hpa_channel(d):
    hpa(d, "bombch_A1_1", ext="png")
    png_bomb(d / "bombch_A1_1_red.png", side=30_000)
    return [row("bombch_A1_1", format="hpa", pixel_size_um=0.1)], [
        Expect("bombch_A1_1_red.png", ("too-large",), r"30000x30000")
    ]


@case
def unsupported_bmp(d):
    (d / "pic.bmp").write_bytes(b"BM" + RNG.bytes(200))
    return [row("pic.bmp")], [
        Expect("pic.bmp", ("unsupported-format",), r"unsupported image format \(bmp\)")
    ]


@case
def unsupported_extension(d):
    (d / "data.xyz").write_text("hello, not an image\n")
    return [row("data.xyz")], [Expect("data.xyz", ("unsupported-format",), r"unsupported format")]


@case
def bad_sheet_values(d):
    for s in ("badfield_A1_1", "badwell_A1_1", "badpx_A1_1", "badlabel_A1_1"):
        hpa(d, s)
    rows = [
        row("badfield_A1_1", format="hpa", field="abc", pixel_size_um=0.1),
        row("badwell_A1_1", format="hpa", well="Q999x", pixel_size_um=0.1),
        row("badpx_A1_1", format="hpa", pixel_size_um=-3),
        row("badlabel_A1_1", format="hpa", labels="3;nucleus", pixel_size_um=0.1),
    ]
    return rows, [
        Expect(
            "badfield_A1_1", ("bad-sheet-row",), r"column 'field': 'abc' is not of type 'integer'"
        ),
        Expect("badwell_A1_1", ("bad-sheet-row",), r"column 'well': 'Q999x' does not match"),
        Expect("badpx_A1_1", ("bad-sheet-row",), r"column 'pixel_size_um': -3.* minimum"),
        Expect("badlabel_A1_1", ("bad-sheet-row",), r"column 'labels'"),
    ]


@case
def duplicate_field_ids(d):
    hpa(d, "dupa_A1_1")
    hpa(d, "dupb_A1_1")
    rows = [
        row(s, format="hpa", plate="DUP", well="A1", field=1, pixel_size_um=0.1)
        for s in ("dupa_A1_1", "dupb_A1_1")
    ]
    return rows, [
        Expect("dupa_A1_1", ("duplicate-id",), r"duplicate field_id DUP_A01_1_t000"),
        Expect("dupb_A1_1", ("duplicate-id",), r"duplicate field_id DUP_A01_1_t000"),
    ]


@case
def missing_file(d):
    return [row("ghost.ome.tif")], [Expect("ghost.ome.tif", ("not-found",), r"file not found")]


@case
def directory_instead_of_file(d):
    (d / "folder.tif").mkdir()
    return [row("folder.tif")], [Expect("folder.tif", ("not-a-file",), r"is a directory")]


@case
def scene_out_of_range(d):
    ome_tiff(d / "onescene.ome.tif")
    return [row("onescene.ome.tif", scene=3)], [
        Expect("onescene.ome.tif", ("bad-scene",), r"scene 3 requested but the file has 1 scene")
    ]


@case
def no_pixel_size_anywhere(d):
    (d / "nopx.png").write_bytes(png_encode(RNG.integers(1, 99, (8, 8), dtype=np.uint8)))
    return [row("nopx.png")], [Expect("nopx.png", ("no-pixel-size",), r"no pixel size")]


GOOD_STEMS = {
    "good1_A1_1": "tif",
    "good2_A2_1": "tif",
    "good3_B2_2": "tif",
    "goodpng_C1_1": "png",
    "goodjpg_C2_1": "jpg",
}


def good_inputs(d: Path) -> tuple[list[dict], int]:
    """Good sources and the number of manifest rows they make."""
    rows = []
    for stem, ext in GOOD_STEMS.items():
        hpa(d, stem, ext=ext)
        rows.append(row(stem, format="hpa", pixel_size_um=0.1, protein="TP53", labels="0"))
    ome_tiff(d / "good.ome.tif")  # T=2
    czi(d / "good.czi")
    dv(d / "good.dv")
    (d / "goodrgb.png").write_bytes(png_encode(RNG.integers(1, 255, (12, 12, 3), dtype=np.uint8)))
    tifffile.imwrite(d / "goodfloat.tif", RNG.random((12, 12)).astype(np.float32) + 0.5)
    rows += [
        row("good.ome.tif"),
        row("good.czi"),
        row("good.dv"),
        row("goodrgb.png", pixel_size_um=0.3),
        row("goodfloat.tif", pixel_size_um=0.3),
    ]
    return rows, len(GOOD_STEMS) + 5


def normalize_like(manifest: pd.DataFrame) -> tuple[list[dict], set[str]]:
    """Read every row as normalization does; refused fields become quarantine records."""
    records, ok = [], set()
    for _, r in manifest.iterrows():
        try:
            arr = read_field_pixels(r)
        except IngestError as exc:
            records.append(
                record_from_error(exc, source=r.source, field_id=r.field_id, stage="normalize")
            )
            continue
        assert arr.shape == (r.size_c, r.size_z, r.size_y, r.size_x)
        ok.add(r.field_id)
    return records, ok


def test_broken_inputs_are_quarantined_with_file_and_reason(tmp_path):
    d = tmp_path / "fuzz"
    d.mkdir()
    rows, n_good = good_inputs(d)
    expects: list[Expect] = []
    for build in CASES.values():
        more_rows, more_expects = build(d)
        rows += more_rows
        expects += more_expects
    assert len(CASES) >= 20
    sheet = d / "sheet.csv"
    cols = sorted({k for r in rows for k in r}, key=lambda c: (c != "source", c))
    with open(sheet, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
        fh.write("ragged.tif" + "," * (len(cols) + 2) + "\n")  # too many fields
    expects.append(
        Expect("ragged.tif", ("bad-sheet-row",), r"row has \d+ fields but the header has")
    )

    manifest, quarantine = build_manifest(sheet)
    assert tuple(quarantine.columns) == QUARANTINE_COLUMNS
    assert set(quarantine.stage) == {"ingest"}
    records, ok = normalize_like(manifest)
    allq = pd.concat([quarantine, pd.DataFrame(records, columns=list(QUARANTINE_COLUMNS))])

    unmatched = allq.copy()
    for exp in expects:
        hits = allq[allq.reason.str.contains(exp.needle, regex=False)]
        assert len(hits) >= 1, f"{exp.needle}: not quarantined"
        for _, h in hits.iterrows():
            assert h.error_type in exp.types, (exp.needle, h.error_type, h.reason)
            assert re.search(exp.words, h.reason, re.IGNORECASE), (exp.needle, h.reason)
        unmatched = unmatched[~unmatched.reason.str.contains(exp.needle, regex=False)]
    assert unmatched.empty, f"unexpected quarantine:\n{unmatched.to_string()}"

    # every good source is in the manifest and reads back
    good_sources = [
        s
        for s in manifest.source
        if any(
            g in s
            for g in [*GOOD_STEMS, "good.ome.tif", "good.czi", "good.dv", "goodrgb", "goodfloat"]
        )
    ]
    good_rows = manifest[manifest.source.isin(good_sources)]
    assert good_rows.drop_duplicates(["source", "scene"]).shape[0] == n_good
    assert set(good_rows.field_id) <= ok
    assert len(good_rows) == n_good + 1  # good.ome.tif has two time points
    jpg = good_rows[good_rows.source.str.contains("goodjpg")].iloc[0]
    assert read_field_pixels(jpg).dtype == np.uint8
    # the bad rows never reach the manifest except those only the pixels can reveal
    in_manifest_bad = {
        e.needle for e in expects if manifest.source.str.contains(e.needle, regex=False).any()
    }
    assert in_manifest_bad == {"zeros_A1_1", "deadblue_A1_1_blue.tif", "nan.tif"}


def test_directory_mode_quarantines_and_goes_on(tmp_path):
    d = tmp_path / "plate7"
    d.mkdir()
    for stem in ("p7_A1_1", "p7_A1_2", "p7_B3_1"):
        hpa(d, stem)
    hpa(d, "p7_C1_1", skip=("green", "blue"))
    (d / "folder.tif").mkdir()
    (d / "noise.tif").write_bytes(RNG.bytes(999))
    (d / "empty.png").write_bytes(b"")
    (d / "pic.bmp").write_bytes(b"BM" + RNG.bytes(99))
    (d / "notes.csv").write_text("a,b\n1,2\n")  # a sidecar table: skipped, not quarantined
    (d / ".hidden.tif").write_bytes(b"junk")
    manifest, quarantine = build_manifest(d, pixel_size_um=0.2)
    assert sorted(manifest.field_id) == ["p7_A01_1_t000", "p7_A01_2_t000", "p7_B03_1_t000"]
    by_name = {
        Path(s).name: t for s, t in zip(quarantine.source, quarantine.error_type, strict=True)
    }
    assert by_name == {
        "p7_C1_1": "missing-channel",
        "folder.tif": "not-a-file",
        "noise.tif": "corrupt",
        "empty.png": "empty-file",
        "pic.bmp": "unsupported-format",
    }
    assert all(
        os.path.basename(s) in r for s, r in zip(quarantine.source, quarantine.reason, strict=True)
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dtype": np.uint8},
        {"dtype": np.uint16},
        {"dtype": np.float32},
        {"dtype": np.int16, "byteorder": ">"},
        {"dtype": np.uint16, "bigtiff": True},
        {"dtype": np.uint16, "compression": "zlib", "rowsperstrip": 5},
        {"dtype": np.uint16, "tile": (16, 16)},
        {"dtype": np.uint8, "rgb": True},
    ],
)
def test_fast_tiff_header_agrees_with_tifffile(tmp_path, kwargs):
    from locatlas.ingest.planes import _fast_tiff_header, read_file_bytes

    kw = dict(kwargs)
    dtype = kw.pop("dtype")
    rgb = kw.pop("rgb", False)
    bigtiff = kw.pop("bigtiff", False)
    byteorder = kw.pop("byteorder", "<")
    shape = (40, 48, 3) if rgb else (40, 48)
    arr = (RNG.random(shape) * 100).astype(dtype)
    path = tmp_path / "x.tif"
    tifffile.imwrite(
        path,
        arr,
        bigtiff=bigtiff,
        byteorder=byteorder,
        photometric="rgb" if rgb else "minisblack",
        **kw,
    )
    hdr = _fast_tiff_header(read_file_bytes(path))
    assert hdr is not None
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        assert (hdr.height, hdr.width) == page.shape[:2]
        assert hdr.samples == (3 if rgb else 1)
        assert hdr.dtype == np.dtype(page.dtype).name


@pytest.mark.parametrize("ext", ["tif", "png", "jpg"])
def test_random_truncation_is_caught_or_harmless(tmp_path, ext):
    """Cut a channel file at 40 random points: either ingest/read refuses it with a
    reason naming the file, or (a cut in trailing metadata) the pixels are unchanged."""
    hpa(tmp_path, "t_A1_1", ext=ext, shape=(48, 64))
    target = tmp_path / f"t_A1_1_green.{ext}"
    full = target.read_bytes()
    sheet = tmp_path / "s.csv"
    sheet.write_text("source,format,pixel_size_um\nt_A1_1,hpa,0.1\n")
    manifest, _ = build_manifest(sheet)
    reference = read_field_pixels(manifest.iloc[0])
    cuts = sorted(set(RNG.integers(1, len(full), 40).tolist()))
    for cut in cuts:
        target.write_bytes(full[:cut])
        manifest, quarantine = build_manifest(sheet)
        if len(quarantine):
            assert target.name in quarantine.reason.iloc[0], quarantine.reason.iloc[0]
            assert quarantine.error_type.iloc[0] in ("truncated", "corrupt"), (
                quarantine.reason.iloc[0]
            )
            continue
        try:
            arr = read_field_pixels(manifest.iloc[0])
        except IngestError as exc:
            assert target.name in str(exc)
            continue
        np.testing.assert_array_equal(arr, reference, err_msg=f"cut at {cut} of {len(full)}")
