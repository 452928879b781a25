"""Reference channels: DAPI (nucleus), microtubules and ER.

Each function returns a dimensionless density (Y, X) float32 whose bright
structures are about 1 after the optical blur; the field multiplies by photons.
"""

from __future__ import annotations

import numpy as np

from .context import FieldContext
from .layout import nucleus_profile_sums
from .textures import polyline_points, splat


def dapi_density(ctx: FieldContext) -> np.ndarray:
    """Textured nuclei with dim nucleoli and a brighter heterochromatin rim.

    Each nucleus' integrated density is ``dna / 2 * (1 + eps)`` times a constant
    (a reference G1 nucleus of radius 1 µm integrates to 1 per µm²), so the
    integrated DAPI of a nucleus is proportional to its DNA content; nuclei cut
    by the field edge keep the density of the whole nucleus (their visible part
    integrates to less).
    """
    cell = ctx.cell
    nuc = ctx.nuclei
    inside = nuc > 0
    q = ctx.nucleus_q
    prof = np.where(inside, np.sqrt(np.clip(1.0 - q * q, 0.0, None)), 0.0).astype(np.float32)
    fine = ctx.texture(11, 0.22, 0.9)
    coarse = ctx.texture(12, 0.9, 3.0)
    mit = cell["mitotic"].astype(np.float32)[nuc]
    # Condensed mitotic chromosomes: much coarser, higher-contrast texture.
    mod = np.clip(1.0 + (0.22 + 0.35 * mit) * fine + 0.12 * coarse, 0.15, None)
    mod *= 1.0 - 0.68 * ctx.layout.nucleoli
    mod *= 1.0 + 0.3 * (1.0 - mit) * np.exp(-(1.0 - q) / 0.07)
    raw = prof * mod
    n1 = ctx.layout.n + 1
    flat = nuc.ravel()
    vis_prof = np.bincount(flat, weights=prof.ravel(), minlength=n1)
    vis_raw = np.bincount(flat, weights=raw.ravel(), minlength=n1)
    full_prof = nucleus_profile_sums(cell, ctx.ps)
    target = cell["dna"] / 2.0 * (1.0 + cell["dapi_eps"]) * (1.0 / ctx.ps**2)
    # Scale so the whole (unclipped) nucleus integrates to ``target``.
    factor = np.where(vis_raw > 0, target * (vis_prof / full_prof) / np.maximum(vis_raw, 1e-9), 0)
    factor[0] = 0.0
    return (raw * factor.astype(np.float32)[nuc]).astype(np.float32)


def microtubule_filaments(ctx: FieldContext) -> np.ndarray:
    """Microtubules radiating from each cell's MTOC, ending at the cell edge.

    Returns the filament density (peak about 1 after blur), without the diffuse
    tubulin pool; filaments over the nucleus are dimmer (out of the focal plane).
    """
    ps = ctx.ps
    sig = ctx.psf_sigma_px[1]
    step = 1.0  # px between points along a filament (the blur fills the gaps)
    lp_um = 8.0  # apparent persistence length (2D projection of curved filaments)
    cells = ctx.cells
    ny, nx = ctx.shape
    out = np.zeros(ctx.shape, dtype=np.float32)
    per_point = step * np.sqrt(2 * np.pi) * max(sig, 0.5) * 0.6
    for i in ctx.layout.present:
        rng = np.random.default_rng([ctx.seed, int(ctx.cell["uid"][i]), 31])
        r_um = ctx.cell["radius_um"][i]
        reach = r_um * np.sqrt(ctx.cell["elong"][i]) * ctx.cell["ext"][i] * 1.6 / ps
        if ctx.cell["mitotic"][i]:
            y0, x0, a0, max_len = _spindle(ctx, i, rng)
        else:
            n_fil = int(40 + 50 * (r_um / 15.0) ** 2)
            my, mx = ctx.mtoc(i)
            a0 = rng.uniform(-np.pi, np.pi, n_fil)
            start = rng.uniform(0.0, 1.0, n_fil) / ps
            y0 = my + start * np.sin(a0)
            x0 = mx + start * np.cos(a0)
            # About a third are non-centrosomal: they start anywhere in the cytoplasm.
            fy, fx = ctx.sample_points(i, n_fil // 3, rng, region="cytoplasm")
            y0[: len(fy)] = fy
            x0[: len(fx)] = fx
            max_len = np.full(n_fil, reach)
        n_fil = len(y0)
        n_steps = int(min(reach, max_len.max()) / step) + 1
        ys, xs = polyline_points(
            y0,
            x0,
            a0,
            n_steps=n_steps,
            step_px=step,
            curvature_sd=float(np.sqrt(step * ps / lp_um)),
            rng=rng,
        )
        yi = np.clip(ys.astype(np.int64), 0, ny - 1)
        xi = np.clip(xs.astype(np.int64), 0, nx - 1)
        onimg = (ys >= 0) & (ys < ny) & (xs >= 0) & (xs < nx)
        inside = onimg & (cells[yi, xi] == i)
        alive = np.logical_and.accumulate(inside | (np.arange(ys.shape[1]) < 4)[None, :], axis=1)
        alive &= inside & (np.arange(ys.shape[1])[None, :] * step < max_len[:, None])
        over_nucleus = 0.45 if not ctx.cell["mitotic"][i] else 1.0
        w = np.where(ctx.nuclei[yi, xi] == i, over_nucleus, 1.0)
        w = w * np.exp(rng.normal(0, 0.2, (n_fil, 1)))  # bundles vary
        # Splat into the cell's own bounding box (+1 px for the bilinear weights).
        sl = ctx.slices[i - 1]
        y0c, x0c = max(sl[0].start - 1, 0), max(sl[1].start - 1, 0)
        y1c, x1c = min(sl[0].stop + 1, ny), min(sl[1].stop + 1, nx)
        crop = splat((y1c - y0c, x1c - x0c), ys[alive] - y0c, xs[alive] - x0c, w[alive])
        out[y0c:y1c, x0c:x1c] += crop * np.float32(per_point)
    return out


def _spindle(ctx: FieldContext, i: int, rng: np.random.Generator):
    """Mitotic spindle: kinetochore fibres from both poles to the chromatin plate,
    plus short astral microtubules. Returns start y, x, angle and max length (px)."""
    ps = ctx.ps
    ys, xs, angs, lens = [], [], [], []
    cy, cx = ctx.cell["ncy_t"][i], ctx.cell["ncx_t"][i]
    for py, px in ctx.poles(i):
        to_plate = np.arctan2(cy - py, cx - px)
        d = np.hypot(cy - py, cx - px)
        k = 45
        a = to_plate + rng.normal(0, 0.4, k)
        ys.append(np.full(k, py))
        xs.append(np.full(k, px))
        angs.append(a)
        lens.append(d * rng.uniform(0.85, 1.1, k) / np.maximum(np.cos(a - to_plate), 0.5))
        m = 20
        ys.append(np.full(m, py))
        xs.append(np.full(m, px))
        angs.append(to_plate + np.pi + rng.normal(0, 1.1, m))
        lens.append(rng.uniform(1.0, 4.0, m) / ps)
    return np.concatenate(ys), np.concatenate(xs), np.concatenate(angs), np.concatenate(lens)


def microtubule_density(ctx: FieldContext, filaments: np.ndarray) -> np.ndarray:
    """Tubulin channel: filaments plus a diffuse cytoplasmic pool, per-cell brightness."""
    b = ctx.cell["mt_bright"].astype(np.float32)[ctx.cells]
    diffuse = 0.12 * ctx.thickness * np.where(ctx.nuclei > 0, 0.6, 1.0)
    return ((filaments + diffuse) * b).astype(np.float32)


def er_network(ctx: FieldContext) -> np.ndarray:
    """Reticular ER: a tubular network, denser near the nucleus, plus perinuclear
    sheets and the nuclear envelope (continuous with the ER). Unit brightness."""
    tex = ctx.texture(21, 0.3, 1.1)
    tubes = np.exp(-((tex / 0.5) ** 2))
    dn = ctx.layout.dn_um
    dpos = np.clip(dn, 0.0, None)
    env = 0.3 + 0.7 * np.exp(-dpos / 6.0)
    sheet = 0.55 * np.exp(-dpos / 1.5)
    cyto = ctx.cytoplasm
    dens = np.where(cyto, (0.12 + 0.88 * tubes) * env + sheet, 0.0) * ctx.thickness
    rim = 0.45 * np.exp(-0.5 * ((dn + 0.05) / 0.3) ** 2) * (ctx.cells > 0)
    return (dens + rim).astype(np.float32)


def er_density(ctx: FieldContext, network: np.ndarray) -> np.ndarray:
    """ER reference channel: the network with per-cell staining brightness."""
    return (network * ctx.cell["er_bright"].astype(np.float32)[ctx.cells]).astype(np.float32)
