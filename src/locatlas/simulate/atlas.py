"""Write a simulated atlas to disk in the Human Protein Atlas file layout.

::

    out_dir/samplesheet.csv
    out_dir/images/<plate>/<plate>_<well>_<field>_t<ttt>_{blue,red,yellow,green}.tif
    out_dir/truth/masks/<field_id>_{nuclei,cells}.tif
    out_dir/truth/cells.parquet
    out_dir/truth/proteins.csv
    out_dir/truth/widefield/<field_id>_stack.ome.tif, <field_id>_infocus.tif  (optional)
    out_dir/simulation.json

Every file is written atomically and byte-reproducibly: the same preset, seed
and overrides give identical bytes.
"""

from __future__ import annotations

import copy
import io
import json
import shutil
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from .. import ROLES, __version__
from ..atomic import atomic_path, write_parquet, write_text
from ..ids import make_field_id
from .camera import CAMERA
from .catalog import CORE_CLASSES, make_proteins, make_timelapse_proteins
from .field import SimulatedField, simulate_field
from .spec import ProteinSpec, join_labels

#: HPA file colour of each role.
COLOURS = {"nucleus": "blue", "microtubules": "red", "er": "yellow", "protein": "green"}
SHEET_COLUMNS = [
    "source",
    "format",
    "plate",
    "well",
    "field",
    "timepoint",
    "protein",
    "cell_line",
    "labels",
    "split",
    "pixel_size_um",
]
TRUTH_COLUMNS = [
    "field_id",
    "plate",
    "well",
    "field",
    "timepoint",
    "protein",
    "cell_id",
    "labels",
    "dna_content",
    "cycle_phase",
    "protein_level",
    "centroid_y",
    "centroid_x",
    "area_px",
    "nucleus_area_px",
    "touches_border",
    "mitotic",
]
PROTEIN_COLUMNS = [
    "protein",
    "cell_line",
    "labels",
    "cell_cycle_dependent",
    "cycle_effect",
    "variable",
    "variability",
    "translocation_from",
    "translocation_to",
    "onset_frame",
    "plates",
    "spatial_label",
    "cycle_label",
]

#: Presets. ``train`` / ``test``: labelled plates with disjoint proteins;
#: ``timelapse``: wells imaged over ``n_frames`` frames (translocations at known
#: onsets in the first ``n_translocating`` wells); ``zstack``: None or the
#: widefield options (see :func:`write_atlas`).
PRESETS: dict[str, dict] = {
    "tiny": {
        "shape": [512, 512],
        "pixel_size_um": 0.2,
        "classes": [0, 2, 7, 21, 23, 25],
        "cell_lines": ["U2OS-sim"],
        "train": {
            "plates": ["P01"],
            "n_proteins": 6,
            "fields_per_well": 1,
            "multi_fraction": 0.0,
            "specials": {"level": 1, "intensity": 1},
        },
        "test": {
            "plates": ["P02"],
            "n_proteins": 3,
            "fields_per_well": 1,
            "multi_fraction": 0.0,
            "specials": {},
        },
        "timelapse": {
            "plate": "P02",
            "n_wells": 2,
            "n_translocating": 1,
            "n_frames": 4,
            "onsets": [2],
            "fields_per_well": 1,
            "shape": [512, 512],
        },
        "zstack": None,
        "compression": "zstd",
    },
    "demo": {
        "shape": [1024, 1024],
        "pixel_size_um": 0.2,
        "classes": list(CORE_CLASSES),
        "cell_lines": ["U2OS-sim"],
        # many proteins with one small field each: what lets a model generalize to
        # proteins it never saw is many proteins per class, not many cells of each
        "train": {
            "plates": ["P01", "P04"],
            "n_proteins": 192,
            "fields_per_well": 1,
            "shape": [640, 640],
            "multi_fraction": 0.4,
            "specials": {"level": 2, "pattern": 1, "intensity": 2, "spatial": 2},
        },
        "test": {
            "plates": ["P02"],
            "n_proteins": 26,
            "fields_per_well": 1,
            "multi_fraction": 0.35,
            "specials": {"level": 1, "intensity": 1, "spatial": 1},
        },
        "timelapse": {
            "plate": "P03",
            "n_wells": 5,
            "n_translocating": 3,
            "n_frames": 8,
            "onsets": [3, 4, 5],
            "fields_per_well": 1,
            "shape": [512, 512],
        },
        "zstack": None,
        "compression": "zstd",
    },
    "benchmark": {
        "shape": [2048, 2048],
        "pixel_size_um": 0.2,
        "classes": list(CORE_CLASSES),
        "cell_lines": ["U2OS-sim"],
        "train": {
            "plates": ["P01"],
            "n_proteins": 2,
            "fields_per_well": 1,
            "multi_fraction": 0.0,
            "specials": {},
        },
        "test": {
            "plates": ["P02"],
            "n_proteins": 2,
            "fields_per_well": 1,
            "multi_fraction": 0.0,
            "specials": {},
        },
        "timelapse": None,
        "zstack": None,
        "compression": "zstd",
    },
}

#: Default widefield options when ``zstack=True``.
ZSTACK_DEFAULTS = {
    "n_z": 9,
    "z_step_um": 0.4,
    "na": 0.95,
    "immersion_index": 1.0,
    "max_fields": 2,
}
_EMISSION_UM = {"nucleus": 0.46, "microtubules": 0.67, "er": 0.58, "protein": 0.52}
_NOT_PARAMETERS = ("workers",)  # do not change the output


def _resolve(preset: str, overrides: dict) -> dict:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    params = copy.deepcopy(PRESETS[preset])
    params["workers"] = 1
    for key, value in overrides.items():
        if key not in params:
            raise ValueError(f"unknown simulate option {key!r}; known: {sorted(params)}")
        if isinstance(params[key], dict) and isinstance(value, dict):
            params[key] = {**params[key], **value}
        else:
            params[key] = copy.deepcopy(value)
    if params["zstack"] is True:
        params["zstack"] = dict(ZSTACK_DEFAULTS)
    elif isinstance(params["zstack"], dict):
        params["zstack"] = {**ZSTACK_DEFAULTS, **params["zstack"]}
    elif params["zstack"] not in (None, False):
        raise ValueError(f"zstack must be None, True or a dict, got {params['zstack']!r}")
    params["shape"] = [int(v) for v in params["shape"]]
    if params["compression"] not in ("zstd", None, "none"):
        raise ValueError(f"compression must be 'zstd' or None, got {params['compression']!r}")
    return params


def _well(k: int, plate: str) -> str:
    """The ``k``-th well (from 0) used on a 96-well plate: inner wells in reading order
    (B02..G11), then the edges."""
    inner = [f"{r}{c:02d}" for r in "BCDEFG" for c in range(2, 12)]
    outer = [f"{r}{c:02d}" for r in "ABCDEFGH" for c in range(1, 13) if f"{r}{c:02d}" not in inner]
    wells = inner + outer
    if k >= len(wells):
        raise ValueError(
            f"plate {plate}: {k + 1} wells do not fit on a 96-well plate (one protein per "
            "well: lower n_proteins or add plates; fields_per_well gives each protein more "
            "fields)"
        )
    return wells[k]


def field_seed(seed: int, plate: str, well: str, field: int) -> int:
    """A field's seed from the atlas seed and where the field is (stable)."""
    key = [int(seed), *(ord(ch) for ch in plate), 0, *(ord(ch) for ch in well), int(field)]
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def plate_shading_seed(seed: int, plate: str) -> int:
    return int(
        np.random.SeedSequence([int(seed), 17, *(ord(ch) for ch in plate)]).generate_state(1)[0]
    )


def _plan(params: dict, seed: int) -> tuple[list[dict], list[ProteinSpec], dict[str, list[str]]]:
    """Every field to simulate, the proteins and the plates each protein is on."""
    jobs: list[dict] = []
    plates_of: dict[str, list[str]] = {}
    proteins: list[ProteinSpec] = []
    classes = params["classes"]
    lines = tuple(params["cell_lines"])
    wells_used: dict[str, int] = {}

    def add(protein, plate, split, fields, frames=1, shape=None):
        shape = [int(v) for v in (shape or params["shape"])]
        k = wells_used.get(plate, 0)
        wells_used[plate] = k + 1
        well = _well(k, plate)
        plates_of.setdefault(protein.name, [])
        if plate not in plates_of[protein.name]:
            plates_of[protein.name].append(plate)
        for f in range(1, fields + 1):
            for t in range(frames):
                jobs.append(
                    {
                        "protein": protein,
                        "plate": plate,
                        "well": well,
                        "field": f,
                        "timepoint": t,
                        "n_timepoints": frames,
                        "split": split,
                        "seed": field_seed(seed, plate, well, f),
                        "shape": shape,
                        "shading_seed": plate_shading_seed(seed, plate),
                    }
                )

    for split, prefix, offset in (("train", "SIMP", 0), ("test", "SIMQ", 5)):
        spec = params.get(split)
        if not spec or not spec.get("n_proteins"):
            continue
        prots = make_proteins(
            int(spec["n_proteins"]),
            seed=seed,
            prefix=prefix,
            classes=classes,
            multi_fraction=float(spec.get("multi_fraction", 0.4)),
            specials=spec.get("specials") or {},
            cell_lines=lines,
            offset=offset,
        )
        plates = list(spec["plates"])
        for k, p in enumerate(prots):
            proteins.append(p)
            add(
                p,
                plates[k % len(plates)],
                split,
                int(spec.get("fields_per_well", 1)),
                shape=spec.get("shape"),
            )
    tl = params.get("timelapse")
    if tl and tl.get("n_wells"):
        prots = make_timelapse_proteins(
            int(tl["n_wells"]),
            int(tl.get("n_translocating", 0)),
            list(tl.get("onsets") or [1]),
            prefix="SIMT",
            cell_line=lines[0],
        )
        for p in prots:
            if p.translocates and p.onset_frame >= int(tl["n_frames"]):
                raise ValueError(
                    f"timelapse onset frame {p.onset_frame} >= n_frames {tl['n_frames']}"
                )
            proteins.append(p)
            add(
                p,
                tl["plate"],
                "test",
                int(tl.get("fields_per_well", 1)),
                int(tl["n_frames"]),
                shape=tl.get("shape"),
            )
    return jobs, proteins, plates_of


def _write_tif(path: Path, array: np.ndarray, compression) -> None:
    import tifffile

    comp = None if compression in (None, "none") else compression
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, array, compression=comp, photometric="minisblack", metadata=None)


def _simulate_job(job: dict, params: dict, out_dir: str) -> dict:
    out = Path(out_dir)
    p: ProteinSpec = job["protein"]
    sim = simulate_field(
        p,
        shape=tuple(job["shape"]),
        pixel_size_um=float(params["pixel_size_um"]),
        seed=job["seed"],
        timepoint=job["timepoint"],
        n_timepoints=job["n_timepoints"],
        cell_line=p.cell_line,
        shading_seed=job["shading_seed"],
    )
    fid = make_field_id(job["plate"], job["well"], job["field"], job["timepoint"])
    stem = f"images/{job['plate']}/{fid}"
    for c, role in enumerate(ROLES):
        _write_tif(out / f"{stem}_{COLOURS[role]}.tif", sim.image[c], params["compression"])
    masks = out / "truth" / "masks"
    _write_tif(masks / f"{fid}_nuclei.tif", sim.nuclei, params["compression"])
    _write_tif(masks / f"{fid}_cells.tif", sim.cells, params["compression"])
    if job.get("zstack"):
        _write_zstack(sim, fid, out / "truth" / "widefield", params)
    table = sim.cells_table.copy()
    table.insert(0, "field_id", fid)
    table.insert(1, "plate", job["plate"])
    table.insert(2, "well", job["well"])
    table.insert(3, "field", job["field"])
    table.insert(4, "timepoint", job["timepoint"])
    table.insert(5, "protein", p.name)
    row = {
        "source": stem,
        "format": "hpa",
        "plate": job["plate"],
        "well": job["well"],
        "field": job["field"],
        "timepoint": job["timepoint"],
        "protein": p.name,
        "cell_line": p.cell_line,
        "labels": join_labels(p.labels_at(job["timepoint"])),
        "split": job["split"],
        "pixel_size_um": float(params["pixel_size_um"]),
    }
    return {"row": row, "cells": table[TRUTH_COLUMNS]}


def _write_zstack(sim: SimulatedField, fid: str, folder: Path, params: dict) -> None:
    try:
        from .widefield import simulate_widefield_stack
    except ImportError as err:
        raise ImportError(
            "z-stacks need locatlas.simulate.widefield.simulate_widefield_stack, which is "
            f"not available yet ({err}); write the atlas without zstack"
        ) from err
    import tifffile

    z = params["zstack"]
    stacks, infocus, metas = [], [], []
    for c, role in enumerate(ROLES):
        # The widefield model wants an object in ~[0, 1] and photons per unit.
        scale = max(float(np.percentile(sim.object[c], 99.9)), 1.0)
        stack, focus, meta = simulate_widefield_stack(
            sim.object[c] / np.float32(scale),
            photons=scale,
            offset_adu=float(CAMERA["offset_adu"]),
            gain=float(CAMERA["gain_adu_per_e"]),
            read_noise_e=float(CAMERA["read_noise_e"]),
            n_z=int(z["n_z"]),
            z_step_um=float(z["z_step_um"]),
            pixel_size_um=sim.pixel_size_um,
            na=float(z["na"]),
            wavelength_um=_EMISSION_UM[role],
            immersion_index=float(z["immersion_index"]),
            seed=int(sim.seed) + c,
        )
        stacks.append(np.asarray(stack, dtype=np.uint16))
        infocus.append(np.asarray(focus, dtype=np.float32))
        metas.append({"role": role, **{k: _jsonable(v) for k, v in dict(meta).items()}})
    stack = np.stack(stacks, axis=1)  # (Z, C, Y, X)
    ps = sim.pixel_size_um
    with atomic_path(folder / f"{fid}_stack.ome.tif") as tmp:
        tifffile.imwrite(
            tmp,
            stack,
            ome=True,
            photometric="minisblack",
            compression="zstd",
            metadata={
                # A fixed UUID (tifffile draws a time-based one): byte-identical reruns.
                "UUID": str(uuid.uuid5(uuid.NAMESPACE_URL, f"locatlas-simulate/{fid}/{sim.seed}")),
                "axes": "ZCYX",
                "PhysicalSizeX": ps,
                "PhysicalSizeY": ps,
                "PhysicalSizeZ": float(z["z_step_um"]),
                "Channel": {"Name": list(ROLES)},
            },
        )
    _write_tif(folder / f"{fid}_infocus.tif", np.stack(infocus), "zstd")
    write_text(json.dumps(metas, indent=2, sort_keys=True) + "\n", folder / f"{fid}_meta.json")


def _jsonable(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v


def _proteins_table(proteins: list[ProteinSpec], plates_of: dict[str, list[str]]) -> pd.DataFrame:
    def opt(v):
        return "" if v is None else str(int(v))

    rows = [
        {
            "protein": p.name,
            "cell_line": p.cell_line,
            "labels": p.labels_str,
            "cell_cycle_dependent": bool(p.cycle_effect),
            "cycle_effect": p.cycle_effect,
            "variable": bool(p.variability),
            "variability": p.variability,
            "translocation_from": opt(p.translocation_from),
            "translocation_to": opt(p.translocation_to),
            "onset_frame": opt(p.onset_frame),
            "plates": ";".join(plates_of.get(p.name, [])),
            # Extra location of the variable subset / of late-cycle cells.
            "spatial_label": opt(p.spatial_label if p.variability == "spatial" else None),
            "cycle_label": opt(p.cycle_label if p.cycle_effect == "pattern" else None),
        }
        for p in proteins
    ]
    return pd.DataFrame(rows, columns=PROTEIN_COLUMNS)


def _csv(df: pd.DataFrame) -> str:
    buf = io.StringIO()
    df.to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue()


def write_atlas(out_dir, *, preset: str = "demo", seed: int = 7, **overrides) -> Path:
    """Simulate a whole atlas and write it in the HPA file layout.

    Parameters
    ----------
    out_dir
        Output folder (created). Folders ``images/`` and ``truth/`` of an earlier
        simulation there (one with ``simulation.json``) are replaced.
    preset
        ``'tiny'`` (workflow test), ``'demo'`` (``make demo``) or ``'benchmark'``;
        see :data:`PRESETS`.
    seed
        Atlas seed; the same preset, seed and overrides give identical files.
    **overrides
        Replace preset keys: ``shape``, ``pixel_size_um``, ``classes``,
        ``cell_lines``, ``train`` / ``test`` / ``timelapse`` (dicts, merged),
        ``zstack`` (True or dict with n_z, z_step_um, na, immersion_index,
        max_fields: widefield stacks of the first ``max_fields`` fields),
        ``compression`` ('zstd' or None) and ``workers`` (processes; does not
        change the output).

    Returns
    -------
    Path of ``samplesheet.csv``.
    """
    params = _resolve(preset, overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "simulation.json").exists():
        for sub in ("images", "truth"):
            shutil.rmtree(out / sub, ignore_errors=True)
    jobs, proteins, plates_of = _plan(params, int(seed))
    if params["zstack"]:
        statics = [j for j in jobs if j["n_timepoints"] == 1]
        for j in statics[: int(params["zstack"]["max_fields"])]:
            j["zstack"] = True
    workers = max(1, int(params.get("workers") or 1))
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(
                pool.map(_simulate_job, jobs, [params] * len(jobs), [str(out)] * len(jobs))
            )
    else:
        results = [_simulate_job(j, params, str(out)) for j in jobs]

    sheet = pd.DataFrame([r["row"] for r in results], columns=SHEET_COLUMNS)
    cells = pd.concat([r["cells"] for r in results], ignore_index=True)
    write_parquet(cells, out / "truth" / "cells.parquet")
    write_text(_csv(_proteins_table(proteins, plates_of)), out / "truth" / "proteins.csv")
    sheet_path = out / "samplesheet.csv"
    write_text(_csv(sheet), sheet_path)
    record = {
        "preset": preset,
        "seed": int(seed),
        "parameters": {k: v for k, v in params.items() if k not in _NOT_PARAMETERS},
        "package": "locatlas",
        "version": __version__,
        "n_fields": len(jobs),
        "n_cells": int(len(cells)),
    }
    write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", out / "simulation.json")
    return sheet_path
