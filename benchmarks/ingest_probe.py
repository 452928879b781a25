"""Ingest probe speed on the HPA layout (one file per channel).

Writes N simulated HPA fields (4 single-plane files each) to a temporary folder and
times ``build_manifest`` on them (sample sheet and directory mode, fast and full
checksums, 1 and the default number of probe threads), against a baseline measured
in the same run: decoding every file (what an ingest that reads pixels would cost).

    python benchmarks/bench_ingest_probe.py --fields 500 --size 512 --ext tif
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

COLOURS = ("red", "green", "blue", "yellow")


def write_fields(root: Path, n: int, size: int, ext: str, seed: int = 0) -> Path:
    import imagecodecs
    import tifffile

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 4000, (size, size), dtype=np.uint16)
    rows = []
    for i in range(n):
        well = f"{'ABCDEFGH'[(i // 12) % 8]}{i % 12 + 1}"
        stem = root / "P1" / f"P1_{well}_{i // 96 + 1}"
        stem.parent.mkdir(parents=True, exist_ok=True)
        for k, colour in enumerate(COLOURS):
            arr = np.roll(base, i * 7 + k, axis=1)  # distinct content per file, cheap to make
            path = stem.parent / f"{stem.name}_{colour}.{ext}"
            if ext == "tif":
                tifffile.imwrite(path, arr)
            else:
                path.write_bytes(imagecodecs.png_encode((arr >> 4).astype(np.uint8)))
        rows.append({"source": str(stem), "format": "hpa", "pixel_size_um": 0.08})
    sheet = root / "sheet.csv"
    pd.DataFrame(rows).to_csv(sheet, index=False)
    return sheet


def decode_all(files: list[Path]) -> None:
    import imagecodecs
    import tifffile

    for f in files:
        if f.suffix == ".tif":
            tifffile.imread(f)
        else:
            imagecodecs.png_decode(f.read_bytes())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", type=int, default=500)
    ap.add_argument("--size", type=int, default=512, help="plane side in pixels")
    ap.add_argument("--ext", choices=("tif", "png"), default="tif")
    ap.add_argument("--repeat", type=int, default=2, help="best of N runs (warm cache)")
    args = ap.parse_args(argv)

    from locatlas.ingest import build_manifest

    root = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        sheet = write_fields(root, args.fields, args.size, args.ext)
        files = sorted((root / "P1").iterdir())
        n_files = len(files)
        mb = sum(f.stat().st_size for f in files) / 2**20

        def best(fn) -> float:
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return min(times)

        runs = {
            "baseline: decode every file": lambda: decode_all(files),
            "build_manifest sheet, 1 thread": lambda: build_manifest(sheet, workers=1),
            "build_manifest sheet, default threads": lambda: build_manifest(sheet),
            "build_manifest directory": lambda: build_manifest(root / "P1", pixel_size_um=0.08),
            "build_manifest sheet, checksum=full": lambda: build_manifest(sheet, checksum="full"),
        }
        manifest, quarantine = build_manifest(sheet)
        assert len(manifest) == args.fields and quarantine.empty
        results = {name: best(fn) for name, fn in runs.items()}
        base = results["baseline: decode every file"]
        print(
            f"\nHPA layout: {args.fields} fields x 4 {args.ext} files of {args.size}^2 "
            f"({n_files} files, {mb:.0f} MiB), best of {args.repeat}, warm page cache\n"
        )
        print(
            f"{'method':42s} {'seconds':>8s} {'files/s':>9s} {'fields/s':>9s} {'vs baseline':>12s}"
        )
        for name, sec in results.items():
            print(
                f"{name:42s} {sec:8.3f} {n_files / sec:9.0f} {args.fields / sec:9.0f} "
                f"{base / sec:11.1f}x"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
