"""One simulated field of view: image, truth masks and the per-cell truth table."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .. import ROLES
from . import camera
from .context import FieldContext
from .layout import build_layout, draw_cells
from .patterns import PATTERNS, protein_style
from .reference import (
    dapi_density,
    er_density,
    er_network,
    microtubule_density,
    microtubule_filaments,
)
from .spec import CELL_LINES, ProteinSpec, join_labels, translocated_fraction

#: Mean photo-electrons of a G1 nucleus (DAPI) and peak of bright structures per channel.
PHOTONS = {"nucleus": 1100.0, "microtubules": 900.0, "er": 700.0, "protein": 1500.0}
#: Background (medium, out-of-focus light) per channel, photo-electrons.
BACKGROUND = {"nucleus": 12.0, "microtubules": 22.0, "er": 20.0, "protein": 16.0}
PHASE_NAMES = ("G1", "S", "G2")
#: Protein signal everywhere in cells from unspecific antibody binding (fraction of peak).
UNSPECIFIC = 0.003

TABLE_COLUMNS = [
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


@dataclass
class SimulatedField:
    """A simulated field with its ground truth.

    Attributes
    ----------
    image
        uint16 (4, Y, X), channels in ``locatlas.ROLES`` order
        (nucleus, microtubules, er, protein), camera ADU (offset 100).
    nuclei, cells
        int32 (Y, X) truth labels; cell k contains nucleus k; 0 is background.
        Ids are stable over the time points of a field (a cell that leaves the
        field leaves a gap in the ids).
    cells_table
        One row per cell present (see ``TABLE_COLUMNS``); ``labels`` are that
        cell's true locations (';'-joined class indices).
    pixel_size_um
        Pixel size in µm.
    expected
        float32 (4, Y, X): noise-free photo-electrons (after blur, shading and
        background); the mean of ``(image - offset) / gain``.
    object
        float32 (4, Y, X): the in-focus fluorophore density in photo-electrons
        before optics and background (input for z-stack simulation).
    nucleoli
        bool (Y, X): truth nucleoli (inside the nuclei).
    """

    image: np.ndarray
    nuclei: np.ndarray
    cells: np.ndarray
    cells_table: pd.DataFrame
    pixel_size_um: float
    protein: ProteinSpec
    timepoint: int = 0
    seed: int = 0
    cell_line: str = "U2OS-sim"
    expected: np.ndarray | None = None
    object: np.ndarray | None = None
    nucleoli: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    @property
    def roles(self) -> tuple[str, ...]:
        return ROLES


def _cell_protein_state(protein: ProteinSpec, cell: dict, seed: int, timepoint: int):
    """Per-cell protein level, per-class amounts and truth labels."""
    n1 = len(cell["cy"])
    level = np.zeros(n1)
    u_spatial = np.zeros(n1)
    sigma = protein.variable_sigma if protein.variability == "intensity" else 0.15
    for i in range(1, n1):
        r = np.random.default_rng([seed, int(cell["uid"][i]), 404])
        z = r.standard_normal()
        level[i] = protein.level * np.exp(sigma * z - 0.5 * sigma * sigma)
        u_spatial[i] = r.uniform()
    if protein.cycle_effect == "level":
        level *= 1.0 + (protein.cycle_fold - 1.0) * (np.clip(cell["dna"], 2, 4) - 2.0) / 2.0
    level[0] = 0.0

    wmax = max(protein.weights)
    coefs: dict[int, np.ndarray] = {
        k: level * (w / wmax) for k, w in zip(protein.labels, protein.weights, strict=True)
    }
    moved = None
    if protein.translocates and timepoint >= protein.onset_frame:
        # The moved amount, per cell, to be rescaled by the caller so that the
        # protein is conserved (see ``_conserve_amount``).
        w_from = dict(zip(protein.labels, protein.weights, strict=True))[protein.translocation_from]
        frac = translocated_fraction(timepoint - protein.onset_frame)
        coefs[protein.translocation_from] = level * (w_from / wmax) * (1.0 - frac)
        moved = level * (w_from / wmax) * frac
    base_labels = set(protein.labels_at(timepoint))
    extra = [set() for _ in range(n1)]
    if protein.variability == "spatial":
        sel = u_spatial < protein.spatial_fraction
        sel[0] = False
        k = protein.spatial_label
        coefs[k] = coefs.get(k, np.zeros(n1)) + np.where(sel, level, 0.0)
        for i in np.flatnonzero(sel):
            extra[i].add(k)
    if protein.cycle_effect == "pattern":
        sel = cell["dna"] > 3.0
        sel[0] = False
        k = protein.cycle_label
        coefs[k] = coefs.get(k, np.zeros(n1)) + np.where(sel, level, 0.0)
        for i in np.flatnonzero(sel):
            extra[i].add(k)
    labels = [join_labels(base_labels | e) for e in extra]
    return level, coefs, labels, moved


def _per_cell(img: np.ndarray, cells: np.ndarray, n1: int) -> np.ndarray:
    return np.bincount(cells.ravel(), weights=img.ravel(), minlength=n1)[:n1]


def simulate_field(
    proteins: ProteinSpec,
    *,
    shape: tuple[int, int] = (1024, 1024),
    pixel_size_um: float = 0.2,
    seed: int = 0,
    timepoint: int = 0,
    n_timepoints: int = 1,
    cell_line: str = "U2OS-sim",
    shading_seed: int = 0,
) -> SimulatedField:
    """Simulate one HPA-style 4-channel field of cells stained for one protein.

    Parameters
    ----------
    proteins
        The protein stained in this field (one antibody per well, as in the HPA).
    shape
        (Y, X) in pixels.
    pixel_size_um
        Pixel size in µm; all biology is specified in µm, so any size works.
    seed
        Field seed: the cell layout, cycle phases and textures.
    timepoint, n_timepoints
        Frame of a time-lapse (0-based): the same ``seed`` gives the same cells,
        moved by ``timepoint`` frames of motion; a translocation shows from the
        protein's ``onset_frame`` on.
    cell_line
        One of ``CELL_LINES`` (cell and nucleus size, shape, confluence).
    shading_seed
        Seed of the microscope's illumination shading (same for every field of
        a plate).

    Returns
    -------
    SimulatedField
    """
    if not isinstance(proteins, ProteinSpec):
        raise TypeError(f"proteins must be a ProteinSpec, got {type(proteins).__name__}")
    if cell_line not in CELL_LINES:
        raise ValueError(f"unknown cell_line {cell_line!r}; known: {sorted(CELL_LINES)}")
    shape = (int(shape[0]), int(shape[1]))
    if min(shape) < 64 or max(shape) > 8192:
        raise ValueError(f"shape {shape} must be between 64 and 8192 px per side")
    if not 0.02 <= pixel_size_um <= 2.0:
        raise ValueError(f"pixel_size_um {pixel_size_um} must be in [0.02, 2] µm")
    if not 0 <= timepoint < max(n_timepoints, 1):
        raise ValueError(f"timepoint {timepoint} outside 0..{n_timepoints - 1}")
    line = CELL_LINES[cell_line]
    seed = int(seed)

    cell = draw_cells(shape, pixel_size_um, line, np.random.default_rng([seed, 1]))
    layout = build_layout(cell, shape, pixel_size_um, seed=seed, timepoint=timepoint)
    psf = camera.psf_sigma_px(pixel_size_um)
    ctx = FieldContext(layout, seed=seed, psf_sigma_px=psf)
    ctx.stress_fibres = line.stress_fibres
    ctx.mt_filaments = microtubule_filaments(ctx)
    ctx.er_network = er_network(ctx)

    level, coefs, cell_labels, moved = _cell_protein_state(proteins, layout.cell, seed, timepoint)
    present = layout.cell["present"]
    style = protein_style(proteins.style_seed)
    n1 = layout.n + 1

    def draw(k: int, coef: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng([seed, 7000 + k, timepoint])
        return PATTERNS[k](ctx, np.where(present, coef, 0.0), rng, style)

    prot = UNSPECIFIC * ctx.thickness
    for k in sorted(coefs):
        if np.any(np.where(present, coefs[k], 0.0) > 0):
            prot = prot + draw(k, coefs[k])
    if moved is not None:
        # A translocation conserves the protein: the amount that left one
        # compartment arrives in the other, whatever their sizes.
        src, dst = proteins.translocation_from, proteins.translocation_to
        unit = np.where(present, 1.0, 0.0)
        a_src = _per_cell(draw(src, unit), layout.cells, n1)
        dst_img = draw(dst, unit)
        a_dst = _per_cell(dst_img, layout.cells, n1)
        scale = np.where(a_dst > 0, moved * a_src / np.maximum(a_dst, 1e-9), 0.0)
        prot = prot + dst_img * scale.astype(np.float32)[layout.cells]

    dapi_scale = PHOTONS["nucleus"] * np.pi * line.nucleus_radius_um**2
    dens = (
        dapi_density(ctx) * dapi_scale,
        microtubule_density(ctx, ctx.mt_filaments) * PHOTONS["microtubules"],
        er_density(ctx, ctx.er_network) * PHOTONS["er"],
        prot * PHOTONS["protein"],
    )
    obj = np.stack([d.astype(np.float32) for d in dens])
    noise_rng = np.random.default_rng([seed, 9001, timepoint])
    # Field to field the stain and the focus vary a little (fixed over a time-lapse).
    frng = np.random.default_rng([seed, 9300])
    exposure = np.exp(frng.normal(0.0, 0.08, len(ROLES)))
    defocus_px = frng.uniform(0.0, 0.1) / pixel_size_um
    expected = np.empty_like(obj)
    for c, role in enumerate(ROLES):
        sh = camera.shading(shape, shading_seed, c)
        bg = camera.background(shape, np.random.default_rng([seed, 9100, c]), BACKGROUND[role])
        sigma = float(np.hypot(psf[c], defocus_px))
        expected[c] = sh * (camera.blur(obj[c], sigma) * np.float32(exposure[c]) + bg)
    image = camera.expose(expected, noise_rng)

    table = _cells_table(layout, level, cell_labels)
    return SimulatedField(
        image=image,
        nuclei=layout.nuclei,
        cells=layout.cells,
        cells_table=table,
        pixel_size_um=float(pixel_size_um),
        protein=proteins,
        timepoint=int(timepoint),
        seed=seed,
        cell_line=cell_line,
        expected=expected,
        object=obj,
        nucleoli=layout.nucleoli > 0.5,
        meta={
            "psf_sigma_px": psf,
            "defocus_sigma_px": float(defocus_px),
            "exposure": [float(v) for v in exposure],
            "shading_seed": int(shading_seed),
            "camera": dict(camera.CAMERA),
        },
    )


def _cells_table(layout, level, labels) -> pd.DataFrame:
    cells = layout.cells
    n1 = layout.n + 1
    flat = cells.ravel()
    area = np.bincount(flat, minlength=n1)
    yy, xx = np.indices(cells.shape)
    sy = np.bincount(flat, weights=yy.ravel(), minlength=n1)
    sx = np.bincount(flat, weights=xx.ravel(), minlength=n1)
    narea = np.bincount(layout.nuclei.ravel(), minlength=n1)
    edge = np.zeros(n1, dtype=bool)
    for border in (cells[0], cells[-1], cells[:, 0], cells[:, -1]):
        edge[np.unique(border)] = True
    ids = np.flatnonzero(layout.cell["present"] & (area > 0))
    phase = layout.cell["phase"]
    return pd.DataFrame(
        {
            "cell_id": ids.astype(np.int64),
            "labels": [labels[i] for i in ids],
            "dna_content": layout.cell["dna"][ids].astype(np.float64),
            "cycle_phase": [PHASE_NAMES[phase[i]] for i in ids],
            "protein_level": level[ids].astype(np.float64),
            "centroid_y": sy[ids] / area[ids],
            "centroid_x": sx[ids] / area[ids],
            "area_px": area[ids].astype(np.int64),
            "nucleus_area_px": narea[ids].astype(np.int64),
            "touches_border": edge[ids],
            "mitotic": layout.cell["mitotic"][ids].astype(bool),
        },
        columns=TABLE_COLUMNS,
    )
