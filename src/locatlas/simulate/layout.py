"""Cell layout: where the cells are, their shapes, nuclei, nucleoli and cell cycle.

Cells are an anisotropic power diagram (Laguerre tessellation) around jittered
cell-body centres: each cell owns the pixels where its power distance is the
smallest, out to an irregular maximum extent, so neighbours touch along
straight-ish boundaries and background gaps open where no cell reaches. A smooth
random warp of the coordinates makes the boundaries wavy. Every per-cell
computation runs on that cell's bounding-box crop.

Per-cell parameters come from the field seed only; the time point only moves the
cells (persistent random walk plus stage drift), so a time-lapse keeps its cells.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .spec import CellLine
from .textures import fourier_noise

# Cell-cycle mixture: fraction of cells in G1 / S / G2 (asynchronous culture).
PHASE_FRACTIONS = {"G1": 0.55, "S": 0.27, "G2": 0.18}
_N_HARM = 5  # boundary harmonics k = 2..6


@dataclass
class Layout:
    """Label maps and per-cell geometry of one field at one time point.

    Arrays indexed by cell id have length ``n + 1`` (index 0 is unused/background).
    Positions are in pixels (y, x) at this time point.
    """

    shape: tuple[int, int]
    pixel_size_um: float
    n: int
    cells: np.ndarray  # int32 (Y, X)
    nuclei: np.ndarray  # int32 (Y, X)
    nucleoli: np.ndarray  # float32 (Y, X) in [0, 1], soft nucleolus mask
    rho: np.ndarray  # float32 (Y, X): normalised distance from the cell-body centre
    dn_um: np.ndarray  # float32 (Y, X): distance to the nuclear edge, µm (< 0 inside)
    cell: dict[str, np.ndarray]  # per-cell parameters
    nucleolus_list: dict[str, np.ndarray] = field(default_factory=dict)
    shift_px: np.ndarray | None = None  # (n + 1, 2) integer motion since time 0

    @property
    def present(self) -> np.ndarray:
        """Ids of the cells present in the field (nucleus visible)."""
        return np.flatnonzero(self.cell["present"])


def draw_cells(
    shape: tuple[int, int],
    pixel_size_um: float,
    line: CellLine,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Draw the cells of a field at time 0: positions, sizes, cycle, shapes.

    Returns per-cell arrays of length ``n + 1`` (index 0 unused), lengths in µm
    and positions in pixels.
    """
    ps = pixel_size_um
    ny, nx = shape
    conf = rng.uniform(*line.confluence)
    # Colonies: cells only where a smooth random field is high -> background gaps.
    # Both fields live on a coarse grid, sampled at the candidate positions only.
    grid = 16
    gshape = (max(4, -(-ny // grid)), max(4, -(-nx // grid)))
    colony = fourier_noise(gshape, rng, scale_px=30.0 / ps / grid)
    thr = float(np.quantile(colony, 1.0 - conf))
    orient_field = fourier_noise(gshape, rng, scale_px=40.0 / ps / grid)

    area_um2 = ny * nx * ps * ps
    n_max = int(1.4 * area_um2 * conf / (np.pi * line.cell_radius_um**2)) + 3
    acc_y = np.zeros(0)
    acc_x = np.zeros(0)
    acc_r = np.zeros(0)
    fails = 0
    batch = 512
    while len(acc_y) < n_max and fails < 8:
        cand_y = rng.uniform(0, ny, batch)
        cand_x = rng.uniform(0, nx, batch)
        cand_r = line.cell_radius_um * np.exp(rng.normal(0, line.cell_radius_cv, batch))
        ok = colony[(cand_y / grid).astype(int), (cand_x / grid).astype(int)] >= thr
        if len(acc_y):
            d = np.hypot(cand_y[:, None] - acc_y[None, :], cand_x[:, None] - acc_x[None, :]) * ps
            ok &= ~np.any(d < 0.8 * (cand_r[:, None] + acc_r[None, :]), axis=1)
        got = 0
        new_y: list[float] = []
        new_x: list[float] = []
        new_r: list[float] = []
        for cy, cx, cr in zip(cand_y[ok], cand_x[ok], cand_r[ok], strict=True):
            if new_y:
                d = np.hypot(np.array(new_y) - cy, np.array(new_x) - cx) * ps
                if np.any(d < 0.8 * (np.array(new_r) + cr)):
                    continue
            new_y.append(cy)
            new_x.append(cx)
            new_r.append(cr)
            got += 1
            if len(acc_y) + got >= n_max:
                break
        acc_y = np.concatenate([acc_y, new_y])
        acc_x = np.concatenate([acc_x, new_x])
        acc_r = np.concatenate([acc_r, new_r])
        fails = fails + 1 if got == 0 else 0
    ys, xs, rs = list(acc_y), list(acc_x), list(acc_r)
    n = len(ys)
    if n == 0:  # a field must have cells: put one in the middle
        ys, xs, rs = [ny / 2.0], [nx / 2.0], [line.cell_radius_um]
        n = 1

    def pad(a) -> np.ndarray:
        return np.concatenate([[0.0], np.asarray(a, dtype=np.float64)])

    cy = pad(ys)
    cx = pad(xs)
    radius = pad(rs)
    elong = pad(1.0 + (line.elongation_max - 1.0) * rng.beta(1.3, 2.5, n))
    # Neighbouring cells tend to align (a smooth orientation field) plus jitter.
    orient = pad(
        np.pi * orient_field[(cy[1:] / grid).astype(int), (cx[1:] / grid).astype(int)]
        + rng.normal(0, 0.35, n)
    )
    ext = pad(rng.uniform(1.1, 1.4, n))
    harm = np.zeros((n + 1, _N_HARM, 2))
    harm[1:] = rng.normal(0, 1, (n, _N_HARM, 2)) * (0.09 / np.arange(1, _N_HARM + 1))[None, :, None]

    # Cell cycle: DNA content from a G1 / S / G2 mixture, 2N..4N.
    phases = np.array(list(PHASE_FRACTIONS))
    phase = rng.choice(len(phases), size=n, p=list(PHASE_FRACTIONS.values()))
    dna = np.where(
        phase == 0,
        rng.normal(2.0, 0.05, n),
        np.where(phase == 1, rng.uniform(2.15, 3.85, n), rng.normal(4.0, 0.07, n)),
    )
    dna = np.clip(dna, 2.0, 4.0)
    # A few G2 (4N) cells are in mitosis: rounded up, chromatin condensed in a plate.
    p_mit = min(1.0, line.mitotic_fraction / PHASE_FRACTIONS["G2"])
    mitotic = (phase == 2) & (rng.uniform(0, 1, n) < p_mit)

    # Nucleus: area grows with DNA content (volume ∝ DNA -> radius ∝ DNA^1/3).
    r_nuc = line.nucleus_radius_um * np.exp(rng.normal(0, line.nucleus_radius_cv, n))
    r_nuc = r_nuc * (dna / 2.0) ** (1.0 / 3.0)
    r_nuc = np.minimum(r_nuc, 0.5 * radius[1:])
    nuc_elong = 1.0 + 0.45 * (elong[1:] - 1.0) + np.abs(rng.normal(0, 0.08, n))
    nuc_orient = orient[1:] + rng.normal(0, 0.25, n)
    nuc_harm = rng.normal(0, 1, (n, 3, 2)) * np.array([0.035, 0.02, 0.012])[None, :, None]
    off_d = rng.uniform(0.0, 0.16, n) * radius[1:]  # µm
    off_a = rng.uniform(-np.pi, np.pi, n)
    if mitotic.any():
        m = np.flatnonzero(mitotic)
        radius[m + 1] *= 0.62
        elong[m + 1] = 1.0 + np.abs(rng.normal(0, 0.05, len(m)))
        ext[m + 1] = 1.05
        harm[m + 1] *= 0.25
        nuc_elong[m] = rng.uniform(2.2, 3.0, len(m))
        r_nuc[m] = np.minimum(0.7 * r_nuc[m], 0.55 * radius[m + 1] / np.sqrt(nuc_elong[m]))
        nuc_orient[m] = rng.uniform(-np.pi, np.pi, len(m))
        nuc_harm[m] *= 0.5
        off_d[m] = 0.0
    # The MTOC and the Golgi sit on the side of the nucleus with more cytoplasm.
    polarity = off_a + np.pi + rng.normal(0, 0.5, n)

    cell = {
        "cy": cy,
        "cx": cx,
        "radius_um": radius,
        "elong": elong,
        "orient": orient,
        "ext": ext,
        "harm": harm,
        "dna": pad(dna),
        "phase": np.concatenate([[-1], phase]).astype(np.int64),
        "mitotic": np.concatenate([[False], mitotic]),
        "r_nuc_um": pad(r_nuc),
        "nuc_elong": pad(nuc_elong),
        "nuc_orient": pad(nuc_orient),
        "nuc_harm": np.concatenate([np.zeros((1, 3, 2)), nuc_harm]),
        "nuc_dy": pad(off_d * np.sin(off_a) / ps),
        "nuc_dx": pad(off_d * np.cos(off_a) / ps),
        "polarity": pad(polarity),
        # Per-cell brightness of the reference stains (staining varies cell to cell).
        "dapi_eps": pad(rng.normal(0, 0.035, n)),
        "mt_bright": pad(np.exp(rng.normal(0, 0.25, n))),
        "er_bright": pad(np.exp(rng.normal(0, 0.25, n))),
        # Motion: persistent velocity (µm / frame) for time-lapse.
        "vy": pad(rng.normal(0, 0.25, n)),
        "vx": pad(rng.normal(0, 0.25, n)),
        "uid": pad(rng.integers(0, 2**31, n)),
    }
    cell["uid"] = cell["uid"].astype(np.int64)
    # Nucleoli: 1–4 per nucleus, in the inner part of the nucleus.
    counts = np.where(mitotic, 0, np.clip(rng.poisson(1.6, n) + 1, 1, 4))
    owner = np.repeat(np.arange(1, n + 1), counts)
    m = len(owner)
    pos_r = np.sqrt(rng.uniform(0, 1, m)) * 0.5
    pos_a = rng.uniform(-np.pi, np.pi, m)
    size = rng.uniform(0.65, 1.4, m) * (cell["dna"][owner] / 2.0) ** 0.25
    cell["nucleoli"] = np.stack(
        [owner, pos_r, pos_a, size, rng.uniform(1.0, 1.6, m), rng.uniform(0, np.pi, m)], axis=1
    )
    return cell


def cell_shifts_um(cell: dict[str, np.ndarray], seed: int, timepoint: int) -> np.ndarray:
    """Displacement (µm, (n + 1, 2) as dy, dx) of every cell from time 0 to ``timepoint``.

    Persistent velocity plus a random walk plus a common stage drift; each frame's
    steps come from their own seed, so frame t does not depend on how many
    frames a series has.
    """
    n1 = len(cell["cy"])
    out = np.zeros((n1, 2))
    for t in range(1, int(timepoint) + 1):
        r = np.random.default_rng([seed, 1009, t])
        steps = r.normal(0, 0.3, (n1, 2))
        drift = r.normal(0, 0.15, 2)
        out += np.stack([cell["vy"], cell["vx"]], axis=1) + steps + drift
    out[0] = 0.0
    return out


def _harmonic_factor(c: np.ndarray, s: np.ndarray, harm: np.ndarray, k0: int) -> np.ndarray:
    """1 + sum_k (a_k cos kθ + b_k sin kθ) for k = k0.., from cos θ and sin θ."""
    out = np.ones_like(c)
    ck, sk = c, s
    for _ in range(1, k0):
        ck, sk = ck * c - sk * s, sk * c + ck * s
    for a, b in harm:
        out += float(a) * ck + float(b) * sk
        ck, sk = ck * c - sk * s, sk * c + ck * s
    return out


def _ellipse_norm(
    dy: np.ndarray, dx: np.ndarray, radius: float, elong: float, orient: float, harm, k0: int
) -> np.ndarray:
    """Normalised anisotropic distance: 1 on the (perturbed) ellipse boundary."""
    co, so = float(np.cos(orient)), float(np.sin(orient))
    u = dx * co + dy * so
    v = -dx * so + dy * co
    se = float(np.sqrt(elong))
    d = np.sqrt((u / se) ** 2 + (v * se) ** 2) + 1e-6
    f = _harmonic_factor(u / se / d, v * se / d, harm, k0)
    return (d / (float(radius) * np.maximum(f, np.float32(0.3)))).astype(np.float32)


def _bbox(cy, cx, a, b, orient, shape, margin):
    hx = np.sqrt((a * np.cos(orient)) ** 2 + (b * np.sin(orient)) ** 2) + margin
    hy = np.sqrt((a * np.sin(orient)) ** 2 + (b * np.cos(orient)) ** 2) + margin
    y0 = max(int(np.floor(cy - hy)), 0)
    y1 = min(int(np.ceil(cy + hy)) + 1, shape[0])
    x0 = max(int(np.floor(cx - hx)), 0)
    x1 = min(int(np.ceil(cx + hx)) + 1, shape[1])
    return y0, y1, x0, x1


def nucleus_radius_px_towards(cell: dict, i: int, angle: float, pixel_size_um: float) -> float:
    """Distance (px) from the nucleus centre of cell ``i`` to its edge along ``angle``."""
    r = cell["r_nuc_um"][i] / pixel_size_um
    se = np.sqrt(cell["nuc_elong"][i])
    a, b = r * se, r / se
    t = angle - cell["nuc_orient"][i]
    return float(a * b / np.hypot(b * np.cos(t), a * np.sin(t)))


def build_layout(
    cell: dict[str, np.ndarray],
    shape: tuple[int, int],
    pixel_size_um: float,
    *,
    seed: int,
    timepoint: int = 0,
) -> Layout:
    """Rasterise cells, nuclei and nucleoli of a field at ``timepoint``.

    Guarantees: nucleus k lies inside cell k; every cell present has a nucleus and
    is one connected piece; 0 is background in all label maps.
    """
    ps = pixel_size_um
    ny, nx = shape
    n = len(cell["cy"]) - 1
    shift_um = cell_shifts_um(cell, seed, timepoint)
    shift_px = np.rint(shift_um / ps).astype(np.int64)
    cy = cell["cy"] + shift_um[:, 0] / ps
    cx = cell["cx"] + shift_um[:, 1] / ps
    ncy = cy + cell["nuc_dy"]
    ncx = cx + cell["nuc_dx"]

    # Smooth warp of the coordinates: wavy, irregular cell boundaries.
    wrng = np.random.default_rng([seed, 2003])
    warp_amp = 1.3 / ps
    wy = fourier_noise(shape, wrng, scale_px=2.5 / ps) * np.float32(warp_amp)
    wx = fourier_noise(shape, wrng, scale_px=2.5 / ps) * np.float32(warp_amp)

    best = np.full(shape, np.inf, dtype=np.float32)
    cells = np.zeros(shape, dtype=np.int32)
    rho = np.zeros(shape, dtype=np.float32)
    dn_cell = np.zeros(shape, dtype=np.float32)
    nbest = np.full(shape, np.inf, dtype=np.float32)
    nuclei = np.zeros(shape, dtype=np.int32)

    for i in range(1, n + 1):
        r_px = cell["radius_um"][i] / ps
        se = np.sqrt(cell["elong"][i])
        reach = cell["ext"][i] * (1.0 + np.abs(cell["harm"][i]).sum())
        y0, y1, x0, x1 = _bbox(
            cy[i],
            cx[i],
            r_px * se * reach,
            r_px / se * reach,
            cell["orient"][i],
            shape,
            warp_amp * 2.5,
        )
        if y1 <= y0 or x1 <= x0:
            continue
        sl = (slice(y0, y1), slice(x0, x1))
        yy = np.arange(y0, y1, dtype=np.float32)[:, None]
        xx = np.arange(x0, x1, dtype=np.float32)[None, :]
        q = _ellipse_norm(
            yy + wy[sl] - np.float32(cy[i]),
            xx + wx[sl] - np.float32(cx[i]),
            r_px,
            cell["elong"][i],
            cell["orient"][i],
            cell["harm"][i],
            2,
        )
        # Power distance (px²) scaled by the cell's own size: bigger cells win more.
        score = (q * q - 1.0) * np.float32(r_px * r_px)
        rn_px = cell["r_nuc_um"][i] / ps
        qn = _ellipse_norm(
            yy - np.float32(ncy[i]),
            xx - np.float32(ncx[i]),
            rn_px,
            cell["nuc_elong"][i],
            cell["nuc_orient"][i],
            cell["nuc_harm"][i],
            2,
        )
        take = (q < cell["ext"][i]) & (score < best[sl])
        best[sl][take] = score[take]
        cells[sl][take] = i
        rho[sl][take] = q[take]
        dn_cell[sl][take] = (qn[take] - 1.0) * np.float32(cell["r_nuc_um"][i])
        ntake = (qn < 1.0) & (qn < nbest[sl])
        nbest[sl][ntake] = qn[ntake]
        nuclei[sl][ntake] = i

    # A nucleus always belongs to its own cell.
    innuc = nuclei > 0
    cells[innuc] = nuclei[innuc]
    nq = np.where(innuc, nbest, 1.0)
    dn_um = np.where(innuc, (nq - 1.0) * cell["r_nuc_um"][nuclei].astype(np.float32), dn_cell)
    rho[innuc] = np.minimum(rho[innuc], 0.6)

    # Keep only the piece of each cell that holds its nucleus; drop cells without one.
    present = np.zeros(n + 1, dtype=bool)
    nuc_slices = ndimage.find_objects(nuclei, max_label=n)
    for i, sl in enumerate(ndimage.find_objects(cells, max_label=n), start=1):
        if sl is None:
            continue
        if nuc_slices[i - 1] is None:
            sub = cells[sl]
            sub[sub == i] = 0
            continue
        sub = cells[sl]
        mine = sub == i
        lab, k = ndimage.label(mine)
        if k > 1:
            keep = np.bincount(lab[nuclei[sl] == i], minlength=k + 1)
            keep[0] = 0
            sub[mine & (lab != int(np.argmax(keep)))] = 0
        present[i] = True
    # Nuclei whose own cell piece was lost are impossible (the override above), but
    # a nucleus may have been split by a neighbour's: keep its largest piece.
    for i, sl in enumerate(nuc_slices, start=1):
        if sl is None:
            continue
        sub = nuclei[sl]
        mine = sub == i
        lab, k = ndimage.label(mine)
        if k > 1:
            sizes = np.bincount(lab.ravel(), minlength=k + 1)
            sizes[0] = 0
            lost = mine & (lab != int(np.argmax(sizes)))
            sub[lost] = 0
    bg = cells == 0
    rho[bg] = 0.0
    dn_um[bg] = 0.0

    nucleoli, nlist = _nucleoli(cell, nuclei, ncy, ncx, ps)
    cell = dict(cell)
    cell["present"] = present
    cell["cy_t"], cell["cx_t"] = cy, cx
    cell["ncy_t"], cell["ncx_t"] = ncy, ncx
    return Layout(
        shape=(ny, nx),
        pixel_size_um=ps,
        n=n,
        cells=cells,
        nuclei=nuclei,
        nucleoli=nucleoli,
        rho=rho,
        dn_um=dn_um.astype(np.float32),
        cell=cell,
        nucleolus_list=nlist,
        shift_px=shift_px,
    )


def _nucleoli(cell, nuclei, ncy, ncx, ps):
    """Soft nucleolus map (float32 in [0, 1]) restricted to each own nucleus."""
    shape = nuclei.shape
    out = np.zeros(shape, dtype=np.float32)
    rows = cell["nucleoli"]
    ys, xs, ras, rbs, ors, owners = [], [], [], [], [], []
    for owner, pr, pa, size, el, orr in rows:
        i = int(owner)
        rn = cell["r_nuc_um"][i] / ps
        se = np.sqrt(cell["nuc_elong"][i])
        # Position in the nucleus frame (pr is a fraction of the nucleus radius).
        u = pr * rn * se * np.cos(pa)
        v = pr * rn / se * np.sin(pa)
        co, so = np.cos(cell["nuc_orient"][i]), np.sin(cell["nuc_orient"][i])
        y = ncy[i] + u * so + v * co
        x = ncx[i] + u * co - v * so
        a = size / ps * np.sqrt(el)
        b = size / ps / np.sqrt(el)
        ys.append(y)
        xs.append(x)
        ras.append(a)
        rbs.append(b)
        ors.append(orr)
        owners.append(i)
        y0, y1, x0, x1 = _bbox(y, x, a, b, orr, shape, 3)
        if y1 <= y0 or x1 <= x0:
            continue
        sl = (slice(y0, y1), slice(x0, x1))
        yy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(y)
        xx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(x)
        q = _ellipse_norm(yy, xx, size / ps, el, orr, np.zeros((0, 2)), 2)
        soft = 1.0 / (1.0 + np.exp((q - 1.0) / 0.12))
        soft = np.where(nuclei[sl] == i, soft, 0.0)
        np.maximum(out[sl], soft.astype(np.float32), out=out[sl])
    nlist = {
        "owner": np.asarray(owners, dtype=np.int64),
        "y": np.asarray(ys),
        "x": np.asarray(xs),
        "ra": np.asarray(ras),
        "rb": np.asarray(rbs),
        "orient": np.asarray(ors),
    }
    return out, nlist


def nucleus_profile_sums(cell: dict[str, np.ndarray], pixel_size_um: float) -> np.ndarray:
    """Sum over each *whole* nucleus (unclipped by the field edge) of the DAPI
    thickness profile ``sqrt(1 - q²)``, in px. Used to normalise DAPI so that a
    nucleus' integrated intensity is proportional to its DNA content."""
    n1 = len(cell["cy"])
    out = np.ones(n1)
    for i in range(1, n1):
        rn = cell["r_nuc_um"][i] / pixel_size_um
        h = int(np.ceil(rn * np.sqrt(cell["nuc_elong"][i]) * 1.2)) + 2
        yy = np.arange(-h, h + 1, dtype=np.float32)[:, None]
        xx = np.arange(-h, h + 1, dtype=np.float32)[None, :]
        q = _ellipse_norm(
            yy, xx, rn, cell["nuc_elong"][i], cell["nuc_orient"][i], cell["nuc_harm"][i], 2
        )
        out[i] = float(np.sqrt(np.clip(1.0 - q * q, 0.0, None)).sum())
    return out


def fourier_texture(shape, seed: int, key: int, *, scale_px: float, highpass_px=None):
    """A band-pass texture fixed to the field at time 0, seeded by (seed, key)."""
    return fourier_noise(
        shape, np.random.default_rng([seed, key]), scale_px=scale_px, highpass_px=highpass_px
    )
