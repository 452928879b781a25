"""locatlas segmentation + measurement vs CellProfiler 4.2.8.1, same fields, one run.

Usage::

    .venv/bin/python benchmarks/vs_cellprofiler.py [--fields 8] [--size 2048]
        [--cellprofiler PATH/TO/cellprofiler] [--out benchmarks/out/vs_cellprofiler]

What it does

1. Finds CellProfiler (``--cellprofiler``, ``$CELLPROFILER``, ``/tmp/cellprofiler-venv``,
   ``benchmarks/out/cellprofiler-venv``); if none, installs it with
   ``../shared/peers/cellprofiler/install.sh`` into ``benchmarks/out/cellprofiler-venv``
   (its own Python 3.9 venv, never the project's ``.venv``).
2. Simulates ``--fields`` two-channel fields (nucleus + microtubules, uint16, 0.2 µm/px)
   with ground-truth nuclei (``locatlas.simulate``; the package's toy generator if the
   simulator is missing) and writes them as TIFFs named as the peer pipeline expects.
3. Runs the peer's ``segment_measure_nozernike.cppipe`` (IdentifyPrimaryObjects,
   IdentifySecondaryObjects, MeasureObjectIntensity, MeasureObjectSizeShape,
   ExportToSpreadsheet) headless, with two modules appended to save the nucleus labels
   for scoring; once on one field (start-up cost) and once on all fields.
4. Runs locatlas on the same TIFFs, one thread: read both TIFFs, ``segment_field``,
   ``measure_cells`` (and, reported apart, ``extract_crops``).
5. Prints seconds per field for both (process CPU time, the per-core cost, and wall
   time), the ratio, and nuclei F1 at IoU 0.5 against the truth for both.

CellProfiler discards nuclei touching the border (its pipeline's setting), so F1 is
given on all nuclei and on interior nuclei only (truth and predictions touching the
border removed before matching); the comparison uses the interior F1.
"""

from __future__ import annotations

import os

# One core is the unit of comparison: pin BLAS/OpenMP pools before numpy loads.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import csv  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import tifffile  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from locatlas.segment import extract_crops, match_labels, measure_cells, segment_field  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PEER = ROOT.parent / "shared" / "peers" / "cellprofiler"
PIPELINE = PEER / "segment_measure_nozernike.cppipe"
JAVA_HOME = "/usr/lib/jvm/java-17-openjdk-amd64"
ROLES = ("nucleus", "microtubules")

# Run inside CellProfiler's own Python: append "save the nucleus labels" to the pipeline
# (module settings set through CellProfiler's API, so the .cppipe syntax is its own).
ADD_LABEL_EXPORT = r"""
import sys
import cellprofiler_core.preferences as prefs
prefs.set_headless()
from cellprofiler_core.pipeline import Pipeline
from cellprofiler.modules.convertobjectstoimage import ConvertObjectsToImage
from cellprofiler.modules.saveimages import SaveImages

src, dst, size_range = sys.argv[1], sys.argv[2], sys.argv[3]
pipeline = Pipeline()
pipeline.load(src)
if size_range != "peer":
    low, high = (int(v) for v in size_range.split(","))
    for module in pipeline.modules():
        if module.module_name == "IdentifyPrimaryObjects":
            module.size_range.value = (low, high)
n = len(pipeline.modules())
conv = ConvertObjectsToImage()
conv.set_module_num(n + 1)
conv.object_name.value = "Nuclei"
conv.image_name.value = "NucleiLabels"
conv.image_mode.value = "uint16"
pipeline.add_module(conv)
save = SaveImages()
save.set_module_num(n + 2)
save.save_image_or_figure.value = "Image"
save.image_name.value = "NucleiLabels"
save.file_name_method.value = "From image filename"
save.file_image_name.value = "DNA"
save.wants_file_name_suffix.value = True
save.file_name_suffix.value = "_cpnuclei"
save.file_format.value = "tiff"
save.bit_depth.value = "16-bit integer"
save.overwrite.value = True
pipeline.add_module(save)
with open(dst, "w") as fh:
    pipeline.dump(fh)
print("modules:", [m.module_name for m in pipeline.modules()])
"""


def find_cellprofiler(explicit: str | None, install: bool, out: Path) -> Path:
    candidates = [explicit, os.environ.get("CELLPROFILER")]
    candidates += [
        "/tmp/cellprofiler-venv/bin/cellprofiler",
        str(ROOT / "benchmarks" / "out" / "cellprofiler-venv" / "bin" / "cellprofiler"),
    ]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    if not install:
        sys.exit("CellProfiler not found; pass --cellprofiler or drop --no-install")
    venv = ROOT / "benchmarks" / "out" / "cellprofiler-venv"
    print(f"installing CellProfiler into {venv} (a few minutes) ...", flush=True)
    subprocess.run(["bash", str(PEER / "install.sh"), str(venv)], check=True)
    return venv / "bin" / "cellprofiler"


def make_fields(n: int, size: int, seed: int, kind: str):
    """(image (2, Y, X) uint16, truth nuclei, pixel size, kind) per field.

    ``realistic``: ``locatlas.simulate`` HPA-style fields (textured chromatin,
    nucleoli, U2OS- and A431-like cells, alternating); ``simple``: the package's toy
    generator (smooth elliptical nuclei), the kind of field CellProfiler's pipeline
    was checked on. Without the simulator both sets are toy fields.
    """
    fields = []
    if kind == "realistic":
        try:
            from locatlas.simulate import ProteinSpec, simulate_field
        except ImportError:
            kind = "simple (no simulator)"
        else:
            for i in range(n):
                sf = simulate_field(
                    ProteinSpec(name=f"BENCH{i}", labels=(25,)),
                    shape=(size, size),
                    seed=seed + i,
                    cell_line=("U2OS-sim", "A431-sim")[i % 2],
                )
                fields.append((sf.image[[0, 1]], sf.nuclei, sf.pixel_size_um, kind))
            return fields
    from locatlas.segment._toyfield import toy_field

    for i in range(n):
        tf = toy_field((size, size), seed=seed + 1000 + i, cell_radius_um=11.0)
        fields.append((tf.image, tf.nuclei, tf.pixel_size_um, kind))
    return fields


def write_tiffs(fields, folder: Path) -> list[tuple[Path, Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (image, _, _, _) in enumerate(fields):
        dna = folder / f"f{i:03d}_ch1_DNA.tif"
        cyto = folder / f"f{i:03d}_ch2_Cyto.tif"
        tifffile.imwrite(dna, image[0])
        tifffile.imwrite(cyto, image[1])
        paths.append((dna, cyto))
    return paths


def child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_cellprofiler(exe: Path, pipeline: Path, inp: Path, out: Path) -> tuple[float, float]:
    """Run headless; return (wall s, CPU s of the process tree)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    env = dict(os.environ, JAVA_HOME=os.environ.get("JAVA_HOME", JAVA_HOME))
    cmd = [str(exe), "-c", "-r", "-p", str(pipeline), "-i", str(inp), "-o", str(out)]
    c0, w0 = child_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - w0, child_cpu() - c0
    (out / "cellprofiler.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"CellProfiler failed ({proc.returncode}); log: {out / 'cellprofiler.log'}")
    return wall, cpu


def module_seconds(out: Path, skip=("ConvertObjectsToImage", "SaveImages")) -> list[float]:
    """Per field: sum of CellProfiler's own ExecutionTime_* columns, without the two
    label-export modules this script appends."""
    with open(out / "CP_Image.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    cols = [c for c in rows[0] if c.startswith("ExecutionTime_") and not c.endswith(skip)]
    rows.sort(key=lambda r: int(r.get("Metadata_Field", 0)))
    return [sum(float(r[c]) for c in cols) for r in rows]


def interior(labels: np.ndarray) -> np.ndarray:
    border = np.unique(np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    return np.where(np.isin(labels, border[border > 0]), 0, labels)


def score(truth: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    return match_labels(truth, pred)["f1"], match_labels(interior(truth), interior(pred))["f1"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fields", type=int, default=8)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--cellprofiler", default=None)
    ap.add_argument(
        "--cp-diameter",
        default="auto",
        help="IdentifyPrimaryObjects 'typical diameter' range in px: 'auto' (0.5-2x the "
        "simulated nucleus diameter, what a user would set for these fields), 'peer' "
        "(the peer pipeline's 15,80), or 'MIN,MAX'",
    )
    ap.add_argument("--no-install", dest="install", action="store_false")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "vs_cellprofiler")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    exe = find_cellprofiler(args.cellprofiler, args.install, out)
    print(f"CellProfiler: {exe}")

    t0 = time.perf_counter()
    fields = make_fields(args.fields, args.size, args.seed, "realistic")
    fields += make_fields(args.fields, args.size, args.seed, "simple")
    kinds = list(dict.fromkeys(f[3] for f in fields))
    images = out / "images"
    if images.exists():
        shutil.rmtree(images)
    paths = write_tiffs(fields, images)
    one = out / "images_one"
    if one.exists():
        shutil.rmtree(one)
    one.mkdir(parents=True)
    for p in paths[0]:
        shutil.copy(p, one / p.name)
    for kind in kinds:
        n_true = [int(len(np.unique(f[1])) - 1) for f in fields if f[3] == kind]
        print(f"{len(n_true)} {kind} fields {args.size}², {np.mean(n_true):.0f} nuclei/field")
    print(f"made in {time.perf_counter() - t0:.0f} s", flush=True)

    # CellProfiler: the peer pipeline + label export; a 1-field run measures start-up.
    pipeline = out / "segment_measure_nozernike_labels.cppipe"
    py = exe.parent / "python"
    env = dict(os.environ, JAVA_HOME=os.environ.get("JAVA_HOME", JAVA_HOME))
    size_range = args.cp_diameter
    if size_range == "auto":
        d_px = 10.0 / fields[0][2]  # simulated nuclei: ~9-11 µm
        size_range = f"{int(0.5 * d_px)},{int(2 * d_px)}"
    print(f"CellProfiler nucleus diameter range (px): {size_range}")
    subprocess.run(
        [str(py), "-c", ADD_LABEL_EXPORT, str(PIPELINE), str(pipeline), size_range],
        check=True,
        env=env,
        capture_output=True,
    )
    wall1, cpu1 = run_cellprofiler(exe, pipeline, one, out / "cp_one")
    wall_n, cpu_n = run_cellprofiler(exe, pipeline, images, out / "cp_all")
    n = len(fields)
    cp_cpu = (cpu_n - cpu1) / (n - 1) if n > 1 else cpu_n
    cp_wall = (wall_n - wall1) / (n - 1) if n > 1 else wall_n
    cp_modules = np.array(module_seconds(out / "cp_all"))
    cp_scores = []
    for i, (_, truth, _, _) in enumerate(fields):
        pred = tifffile.imread(out / "cp_all" / f"f{i:03d}_ch1_DNA_cpnuclei.tiff")
        cp_scores.append(score(truth, pred.astype(np.int32)))

    # locatlas: read + segment + measure, one thread; crops timed apart.
    la_cpu, la_wall, crop_cpu, la_scores, n_cells = [], [], [], [], []
    with threadpool_limits(1):
        for rep, ((dna, cyto), (_, truth, ps, _)) in enumerate(
            [(paths[0], fields[0]), *zip(paths, fields, strict=True)]
        ):
            c0, w0 = time.process_time(), time.perf_counter()
            image = np.stack([tifffile.imread(dna), tifffile.imread(cyto)])
            nuclei, cells, qc = segment_field(image, roles=ROLES, pixel_size_um=ps)
            table = measure_cells(image, nuclei, cells, roles=ROLES, pixel_size_um=ps)
            c1, w1 = time.process_time(), time.perf_counter()
            extract_crops(image, cells, nuclei, pixel_size_um=ps, cell_ids=table["cell_id"])
            c2 = time.process_time()
            if rep == 0:
                continue  # warm-up (imports, first-touch allocations), like CP's start-up
            la_cpu.append(c1 - c0)
            la_wall.append(w1 - w0)
            crop_cpu.append(c2 - c1)
            la_scores.append(score(truth, nuclei))
            n_cells.append(len(table))
    la_cpu, la_wall = np.array(la_cpu), np.array(la_wall)
    cp_scores, la_scores = np.array(cp_scores), np.array(la_scores)
    kind_of = np.array([f[3] for f in fields])

    la_c, la_w = float(la_cpu.mean()), float(la_wall.mean())
    print()
    print(f"{'all fields':36s}{'CellProfiler':>13s}{'locatlas':>10s}{'ratio':>8s}")
    print(f"{'  CPU s/field (per core)':36s}{cp_cpu:13.2f}{la_c:10.3f}{cp_cpu / la_c:7.1f}x")
    print(
        f"{'  CP module CPU s/field':36s}{cp_modules.mean():13.2f}{la_c:10.3f}"
        f"{cp_modules.mean() / la_c:7.1f}x"
    )
    print(f"{'  wall s/field':36s}{cp_wall:13.2f}{la_w:10.3f}{cp_wall / la_w:7.1f}x")
    for kind in kinds:
        k = kind_of == kind
        cpf, laf = cp_scores[k].mean(axis=0), la_scores[k].mean(axis=0)
        print(f"{kind} fields ({k.sum()})")
        print(
            f"{'  CP module CPU s/field':36s}{cp_modules[k].mean():13.2f}"
            f"{la_cpu[k].mean():10.3f}{cp_modules[k].mean() / la_cpu[k].mean():7.1f}x"
        )
        print(f"{'  nuclei F1 @IoU0.5, interior':36s}{cpf[1]:13.3f}{laf[1]:10.3f}")
        print(f"{'  nuclei F1 @IoU0.5, all nuclei':36s}{cpf[0]:13.3f}{laf[0]:10.3f}")
    print(f"{'locatlas crops (not in CP), CPU s':36s}{'':13s}{np.mean(crop_cpu):10.3f}")
    print(
        f"\nCellProfiler start-up (1-field run): {wall1:.1f} s wall, {cpu1:.1f} s CPU. "
        f"locatlas: {np.mean(n_cells):.0f} cells/field; times include reading both TIFFs."
    )


if __name__ == "__main__":
    main()
