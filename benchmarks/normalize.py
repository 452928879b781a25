"""Normalization throughput per core: TIFF / PNG fields -> OME-Zarr, against plain decode.

Generates N HPA-like fields (4 channels × 2048² uint16, one file per channel as in the
HPA layout), written once as uncompressed TIFF and once as PNG, then measures on ONE
thread (BLAS, zarr's codec pool and blosc limited to 1):

- decode only (tifffile / imagecodecs PNG) - the floor any converter pays;
- convert: decode + ``write_field_image`` (pyramid, zstd-1 + bitshuffle chunks);
- normalize: ``normalize_shard`` (reorder, flat-field, QC, convert, attributes).

MB are raw uint16 megabytes (10^6 B) of pixels; "MB/s per core" divides by CPU time of
this process (wall time is shown too; the machine may be shared). bioformats2raw, the
usual converter, does ≈23 MB/s per job.

    .venv/bin/python benchmarks/normalize.py            # 8 fields of 4 × 2048²
    .venv/bin/python benchmarks/normalize.py --fields 2 --size 512   # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import imagecodecs
import numcodecs.blosc
import numpy as np
import pandas as pd
import tifffile
import zarr
from scipy import ndimage
from threadpoolctl import threadpool_limits

from locatlas import ROLES
from locatlas.ids import make_field_id, make_view_id
from locatlas.normalize import normalize_shard, read_files_pixels
from locatlas.omezarr import field_path, write_field_image

BIOFORMATS2RAW_MB_S = 23.0


def synthetic_field(size: int, seed: int) -> np.ndarray:
    """(4, size, size) uint16: smooth cell-like structures + Poisson noise + offset."""
    rng = np.random.default_rng(seed)
    small = size // 4
    chans = []
    for scale, density in ((6, 0.002), (3, 0.02), (4, 0.01), (1.5, 0.004)):
        seeds = (rng.random((small, small)) < density).astype(np.float32)
        img = ndimage.gaussian_filter(seeds, scale) * (scale**2) * 6
        img += 0.3 * ndimage.gaussian_filter(rng.random((small, small)).astype(np.float32), 8)
        chans.append(img)
    low = np.stack(chans)
    full = ndimage.zoom(low, (1, 4, 4), order=1)  # smooth at full resolution
    full = np.clip(full, 0, None) / full.max(axis=(1, 2), keepdims=True) * 12000 + 200
    # shot noise (Gaussian approximation of Poisson: 10x faster) + camera offset
    full += np.sqrt(full) * rng.standard_normal(full.shape, dtype=np.float32) + 100
    return full.clip(0, 65535).astype(np.uint16)


def write_inputs(folder: Path, n: int, size: int) -> dict[str, pd.DataFrame]:
    rows: dict[str, list[dict]] = {"tiff": [], "png": []}
    for i in range(n):
        data = synthetic_field(size, seed=i)
        well, field = "A01", i + 1
        fid = make_field_id("BENCH", well, field, 0)
        for fmt, ext in (("tiff", "tif"), ("png", "png")):
            paths = []
            for c, role in enumerate(ROLES):
                path = folder / fmt / f"{fid}_{role}.{ext}"
                path.parent.mkdir(parents=True, exist_ok=True)
                if fmt == "tiff":
                    tifffile.imwrite(path, data[c])
                else:
                    path.write_bytes(imagecodecs.png_encode(data[c], level=1))
                paths.append(str(path))
            rows[fmt].append(
                {
                    "field_id": fid,
                    "view_id": make_view_id("BENCH", well, field),
                    "plate": "BENCH",
                    "well": well,
                    "field": field,
                    "timepoint": 0,
                    "source": json.dumps(paths),
                    "format": fmt,
                    "channel_roles": json.dumps(list(ROLES)),
                    "pixel_size_um": 0.08,
                    "z_step_um": None,
                    # ingest records checksums; do not hash the files again here
                    "checksum": "sha256:precomputed-by-ingest",
                }
            )
    return {k: pd.DataFrame(v) for k, v in rows.items()}


def timed(fn) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fields", type=int, default=8)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs per step")
    ap.add_argument("--keep", default=None, help="work folder to keep (default: temporary)")
    args = ap.parse_args(argv)

    numcodecs.blosc.set_nthreads(1)
    zarr.config.set({"threading.max_workers": 1})
    work = Path(args.keep or tempfile.mkdtemp(prefix="locatlas-bench-"))
    try:
        t0 = time.perf_counter()
        manifests = write_inputs(work / "src", args.fields, args.size)
        print(
            f"inputs: {args.fields} fields of 4 x {args.size}^2 uint16 "
            f"({time.perf_counter() - t0:.1f} s to generate)"
        )
        mb = args.fields * 4 * args.size * args.size * 2 / 1e6
        flat = np.ones((len(ROLES), args.size, args.size), np.float32)
        yy, xx = np.mgrid[0 : args.size, 0 : args.size] / args.size - 0.5
        flat[:] = (1 + (yy**2 + xx**2) / 1.5) ** -2
        flat /= flat.mean(axis=(1, 2), keepdims=True)

        def decode(fmt):
            for row in manifests[fmt].to_dict("records"):
                for path in json.loads(row["source"]):
                    if fmt == "tiff":
                        tifffile.imread(path)
                    else:
                        imagecodecs.imread(path)

        def convert(fmt):
            root = work / f"zarr-convert-{fmt}"
            for row in manifests[fmt].to_dict("records"):
                data = read_files_pixels(row)[None]
                path = field_path(str(root), "BENCH", row["well"], row["field"])
                write_field_image(
                    path, data, pixel_size_um=0.08, z_step_um=None, channel_roles=list(ROLES)
                )

        def normalize(fmt, flatfield):
            root = str(work / f"zarr-normalize-{fmt}")
            receipt, quarantine = normalize_shard(
                manifests[fmt],
                root,
                params={"flatfield": flatfield},
                flatfields={"BENCH": flat} if flatfield else None,
                reader=read_files_pixels,
            )
            assert quarantine.empty and len(receipt) == args.fields

        steps = [
            ("TIFF decode (tifffile)", "tiff", lambda: decode("tiff")),
            ("TIFF -> OME-Zarr (convert)", "tiff", lambda: convert("tiff")),
            ("TIFF -> normalize (QC)", "tiff", lambda: normalize("tiff", False)),
            ("TIFF -> normalize (QC + flat)", "tiff", lambda: normalize("tiff", True)),
            ("PNG decode (imagecodecs)", "png", lambda: decode("png")),
            ("PNG -> OME-Zarr (convert)", "png", lambda: convert("png")),
            ("PNG -> normalize (QC + flat)", "png", lambda: normalize("png", True)),
        ]
        results = {}
        with threadpool_limits(1):
            for name, _, fn in steps:
                runs = [timed(fn) for _ in range(args.repeat)]
                results[name] = min(runs, key=lambda r: r[1])
        base = {"tiff": results[steps[0][0]], "png": results[steps[4][0]]}
        print(f"\n{args.fields} fields, {mb:.0f} MB raw uint16, one thread, best of {args.repeat}")
        header = (
            f"{'step':32s} {'wall s':>7s} {'cpu s':>7s} {'MB/s/core':>10s} "
            f"{'x decode':>9s} {'x b2raw':>8s}"
        )
        print(header)
        print("-" * len(header))
        for name, fmt, _ in steps:
            wall, cpu = results[name]
            rate = mb / cpu
            ratio = cpu / base[fmt][1]
            print(
                f"{name:32s} {wall:7.2f} {cpu:7.2f} {rate:10.0f} {ratio:9.1f} "
                f"{rate / BIOFORMATS2RAW_MB_S:8.1f}"
            )
        print("\nx decode: step CPU time / decode-only CPU time of the same files")
        print(f"x b2raw: MB/s per core / {BIOFORMATS2RAW_MB_S} (bioformats2raw per job)")
        size_on_disk = sum(
            f.stat().st_size for f in (work / "zarr-convert-tiff").rglob("*") if f.is_file()
        )
        print(
            f"OME-Zarr on disk (all pyramid levels): {size_on_disk / 1e6:.0f} MB "
            f"for {mb:.0f} MB raw ({mb / (size_on_disk / 1e6):.2f}x smaller)"
        )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
