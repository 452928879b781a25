"""Time the simulator: ``python -m locatlas.simulate.benchmark [--sizes 512 1024 2048]``.

Prints one row per field size: wall and CPU seconds per field (best of
``--repeats``), cells per field, and the ratio to a baseline measured in the same
run (4 channels of Gaussian noise plus one Gaussian blur each: the least any
4-channel noisy, blurred field can cost).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage

from .field import simulate_field
from .spec import ProteinSpec


def _best(fn, repeats: int) -> tuple[float, float, object]:
    wall, cpu, out = [], [], None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return min(wall), min(cpu), out


def _baseline(shape, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.standard_normal((4, *shape), dtype=np.float32)
    return [ndimage.gaussian_filter(c, 1.0) for c in img]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--labels", default="7,23", help="protein classes, e.g. '7,23'")
    args = ap.parse_args(argv)
    protein = ProteinSpec("BENCH", labels=tuple(int(v) for v in args.labels.split(",")))
    simulate_field(protein, shape=(128, 128), seed=0)  # warm caches / imports
    print(f"protein classes {protein.labels_str}; best of {args.repeats}; one thread")
    print(f"{'size':>6} {'wall s':>8} {'cpu s':>8} {'cells':>6} {'baseline s':>11} {'ratio':>6}")
    for n in args.sizes:
        shape = (n, n)
        w, c, f = _best(lambda s=shape: simulate_field(protein, shape=s, seed=1), args.repeats)
        bw, _, _ = _best(lambda s=shape: _baseline(s), args.repeats)
        print(f"{n:>6} {w:8.3f} {c:8.3f} {len(f.cells_table):6d} {bw:11.3f} {w / bw:6.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
