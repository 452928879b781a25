"""Protein localisation patterns, one function per HPA class.

Every pattern has the signature ``pattern(ctx, coef, rng, style) -> (Y, X) float32``:
``coef`` (length n + 1) is each cell's amount of the protein at this location
(0 = none), ``style`` a per-protein generator (its own look, the same in every
field) and ``rng`` the per-field generator. The densities are dimensionless:
bright structures are about ``coef`` after the optical blur.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .context import FieldContext
from .textures import blobs, polyline_points, splat

Pattern = Callable[[FieldContext, np.ndarray, np.random.Generator, dict], np.ndarray]
PATTERNS: dict[int, Pattern] = {}


def _register(*classes: int):
    def deco(fn):
        for c in classes:
            PATTERNS[c] = fn
        return fn

    return deco


def _cmap(ctx: FieldContext, coef: np.ndarray) -> np.ndarray:
    return coef.astype(np.float32)[ctx.cells]


def _active(ctx: FieldContext, coef: np.ndarray) -> list[int]:
    return [int(i) for i in ctx.layout.present if coef[i] > 0]


def _cell_rng(ctx: FieldContext, i: int, key: int) -> np.random.Generator:
    """Per-cell generator, stable over time points (the cell keeps its structures)."""
    return np.random.default_rng([ctx.seed, int(ctx.cell["uid"][i]), key])


def _psf(ctx: FieldContext) -> float:
    return ctx.psf_sigma_px[3]


def _dots(ctx, coef, *, region, count, sigma_um, peak=1.0, weight=None, key, bright_sd=0.3):
    """Round dots per cell: ``count(rng, i)`` of them in ``region``."""
    ys, xs, ws = [], [], []
    for i in _active(ctx, coef):
        r = _cell_rng(ctx, i, key)
        n = int(count(r, i))
        y, x = ctx.sample_points(i, n, r, region=region, weight=weight and weight(i))
        ys.append(y)
        xs.append(x)
        ws.append(coef[i] * peak * np.exp(r.normal(0, bright_sd, len(y))))
    if not ys:
        return np.zeros(ctx.shape, np.float32)
    return blobs(
        ctx.shape,
        np.concatenate(ys),
        np.concatenate(xs),
        peak=np.concatenate(ws),
        sigma_px=sigma_um / ctx.ps,
        psf_sigma_px=_psf(ctx),
    )


def _perinuclear(ctx: FieldContext, scale_um: float):
    """Acceptance weight decaying with distance from the nuclear edge."""
    dn = ctx.layout.dn_um

    def make(_i):
        def w(ys, xs):
            d = dn[ys.astype(np.int64), xs.astype(np.int64)]
            return np.exp(-np.clip(d, 0, None) / scale_um)

        return w

    return make


def _cytosol_floor(ctx, coef, value):
    return value * _cmap(ctx, coef) * ctx.thickness * ctx.cytoplasm


# --- nucleus -------------------------------------------------------------------
@_register(0)
def nucleoplasm(ctx, coef, rng, style):
    """Diffuse nucleus, excluding nucleoli, with a fine granular texture."""
    q = ctx.nucleus_q
    tex = ctx.texture(101, 0.2, 0.8)
    dens = (0.85 + 0.12 * tex) * (1.0 - 0.9 * ctx.layout.nucleoli)
    dens *= np.sqrt(np.clip(1.0 - q**4, 0, None))
    return (0.75 * dens * coef.astype(np.float32)[ctx.nuclei] * (ctx.nuclei > 0)).astype(np.float32)


@_register(1)
def nuclear_membrane(ctx, coef, rng, style):
    """A thin rim at the nuclear envelope, slightly dotted (pores)."""
    dn = ctx.layout.dn_um
    rim = np.exp(-0.5 * ((dn + 0.12) / 0.22) ** 2)
    dots = 0.8 + 0.25 * ctx.texture(102, 0.12)
    return (rim * np.clip(dots, 0.3, None) * _cmap(ctx, coef)).astype(np.float32)


@_register(2)
def nucleoli(ctx, coef, rng, style):
    """The nucleoli, granular, with a faint nucleoplasmic pool.

    Dense compartments are bright: the nucleoli are ~2.5x the nucleoplasm's level, so
    that beside a nucleoplasmic component (a frequent HPA pair) they stay visibly
    enriched, as HPA annotates them only then (at 1x they merely filled the
    nucleoplasm's holes and the label was not observable)."""
    tex = 0.85 + 0.15 * ctx.texture(103, 0.25)
    nuc = coef.astype(np.float32)[ctx.nuclei]
    dense = 2.0 * ctx.layout.nucleoli * tex
    return (nuc * (dense + 0.04 * (ctx.nuclei > 0))).astype(np.float32)


@_register(3)
def fibrillar_centers(ctx, coef, rng, style):
    """Small dots (fibrillar centres) inside each nucleolus."""
    nl = ctx.layout.nucleolus_list
    ys, xs, ws = [], [], []
    for k in range(len(nl["owner"])):
        i = int(nl["owner"][k])
        if coef[i] <= 0 or not ctx.cell["present"][i]:
            continue
        r = _cell_rng(ctx, i, 300 + k)
        area = np.pi * nl["ra"][k] * nl["rb"][k] * ctx.ps**2
        m = int(np.clip(r.poisson(2 + 4 * area), 2, 12))
        rad = np.sqrt(r.uniform(0, 0.7, m))
        ang = r.uniform(-np.pi, np.pi, m)
        co, so = np.cos(nl["orient"][k]), np.sin(nl["orient"][k])
        u = rad * nl["ra"][k] * np.cos(ang)
        v = rad * nl["rb"][k] * np.sin(ang)
        ys.append(nl["y"][k] + u * so + v * co)
        xs.append(nl["x"][k] + u * co - v * so)
        ws.append(np.full(m, coef[i]) * np.exp(r.normal(0, 0.2, m)))
    out = np.zeros(ctx.shape, np.float32)
    if ys:
        out = blobs(
            ctx.shape,
            np.concatenate(ys),
            np.concatenate(xs),
            peak=np.concatenate(ws),
            sigma_px=0.12 / ctx.ps,
            psf_sigma_px=_psf(ctx),
        )
    nuc = coef.astype(np.float32)[ctx.nuclei]
    return out + 0.05 * nuc * (ctx.nuclei > 0)


@_register(4)
def nuclear_speckles(ctx, coef, rng, style):
    """20–50 irregular blobs in the nucleoplasm (not in nucleoli) + a faint pool."""
    lo, hi = style["speckle_range"]
    ys, xs, ws = [], [], []
    for i in _active(ctx, coef):
        r = _cell_rng(ctx, i, 40)
        n = int(r.integers(lo, hi + 1))
        y, x = ctx.sample_points(i, n, r, region="nucleoplasm")
        # Irregular shape: each speckle is 2–3 overlapping sub-blobs.
        k = r.integers(1, 4, len(y))
        yy = np.repeat(y, k) + r.normal(0, 0.22 / ctx.ps, k.sum())
        xx = np.repeat(x, k) + r.normal(0, 0.22 / ctx.ps, k.sum())
        ys.append(yy)
        xs.append(xx)
        ws.append(coef[i] * 0.7 * np.exp(r.normal(0, 0.3, len(yy))))
    out = np.zeros(ctx.shape, np.float32)
    if ys:
        out = blobs(
            ctx.shape,
            np.concatenate(ys),
            np.concatenate(xs),
            peak=np.concatenate(ws),
            sigma_px=0.28 / ctx.ps,
            psf_sigma_px=_psf(ctx),
        )
        out *= ctx.nuclei > 0
    pool = 0.1 * coef.astype(np.float32)[ctx.nuclei] * (1 - ctx.layout.nucleoli)
    return (out + pool * (ctx.nuclei > 0)).astype(np.float32)


@_register(5)
def nuclear_bodies(ctx, coef, rng, style):
    """2–8 round bright bodies in the nucleoplasm + a faint pool."""
    out = _dots(
        ctx,
        coef,
        region="nucleoplasm",
        count=lambda r, i: r.integers(2, 9),
        sigma_um=0.22,
        key=50,
    )
    pool = 0.07 * coef.astype(np.float32)[ctx.nuclei] * (ctx.nuclei > 0)
    return out + pool


# --- cytoplasm -----------------------------------------------------------------
@_register(6)
def endoplasmic_reticulum(ctx, coef, rng, style):
    """The ER network itself (correlated with the ER reference channel)."""
    # An ER protein need not fill the whole network evenly (sub-domains).
    patchy = np.clip(0.75 + 0.25 * ctx.texture(60 + style["variant"], 1.5), 0.3, None)
    return (0.8 * ctx.er_network * patchy * _cmap(ctx, coef)).astype(np.float32)


@_register(7)
def golgi(ctx, coef, rng, style):
    """A compact perinuclear ribbon on one side of the nucleus (the MTOC side)."""
    ps = ctx.ps
    ys, xs, ws = [], [], []
    for i in _active(ctx, coef):
        r = _cell_rng(ctx, i, 70)
        my, mx = ctx.mtoc(i)
        ncy, ncx = ctx.cell["ncy_t"][i], ctx.cell["ncx_t"][i]
        base = np.arctan2(my - ncy, mx - ncx)
        dist = np.hypot(my - ncy, mx - ncx)
        span = np.deg2rad(style["golgi_span_deg"]) * r.uniform(0.7, 1.3)
        m = int(r.integers(18, 40))
        ang = base + r.uniform(-span / 2, span / 2, m)
        rad = dist + r.normal(0.3, 0.45, m) / ps
        y = ncy + rad * np.sin(ang)
        x = ncx + rad * np.cos(ang)
        # Short stacks: elongate along the arc.
        t = r.uniform(-0.5, 0.5, (m, 3)) / ps
        ys.append((y[:, None] + t * np.cos(ang)[:, None]).ravel())
        xs.append((x[:, None] - t * np.sin(ang)[:, None]).ravel())
        ws.append(np.repeat(coef[i] * 0.45 * np.exp(r.normal(0, 0.3, m)), 3))
    out = np.zeros(ctx.shape, np.float32)
    if ys:
        out = blobs(
            ctx.shape,
            np.concatenate(ys),
            np.concatenate(xs),
            peak=np.concatenate(ws),
            sigma_px=0.28 / ps,
            psf_sigma_px=_psf(ctx),
        )
        out *= ctx.cells > 0
    return out + _cytosol_floor(ctx, coef, 0.015)


@_register(8)
def peroxisomes(ctx, coef, rng, style):
    """Many tiny uniform dots throughout the cytoplasm."""
    return _dots(
        ctx,
        coef,
        region="cytoplasm",
        count=lambda r, i: r.integers(60, 160),
        sigma_um=0.05,
        peak=0.7,
        key=80,
        bright_sd=0.15,
    ) + _cytosol_floor(ctx, coef, 0.03)


@_register(9)
def endosomes(ctx, coef, rng, style):
    """Many small, unequal vesicles, slightly perinuclear."""
    return _dots(
        ctx,
        coef,
        region="cytoplasm",
        count=lambda r, i: r.integers(40, 110),
        sigma_um=0.12,
        peak=0.6,
        key=90,
        bright_sd=0.5,
        weight=_perinuclear(ctx, 12.0),
    ) + _cytosol_floor(ctx, coef, 0.05)


@_register(10)
def lysosomes(ctx, coef, rng, style):
    """Larger vesicles clustered around the nucleus."""
    return _dots(
        ctx,
        coef,
        region="cytoplasm",
        count=lambda r, i: r.integers(30, 80),
        sigma_um=0.25,
        peak=0.8,
        key=100,
        bright_sd=0.35,
        weight=_perinuclear(ctx, 4.0),
    ) + _cytosol_floor(ctx, coef, 0.03)


@_register(11)
def intermediate_filaments(ctx, coef, rng, style):
    """Long wavy filaments forming a cage around the nucleus."""
    ps = ctx.ps
    ys_all, xs_all, ws_all = [], [], []
    step = 0.7
    for i in _active(ctx, coef):
        r = _cell_rng(ctx, i, 110)
        n = int(r.integers(25, 45))
        ncy, ncx = ctx.cell["ncy_t"][i], ctx.cell["ncx_t"][i]
        a = r.uniform(-np.pi, np.pi, n)
        rad = (ctx.cell["r_nuc_um"][i] + r.uniform(0.3, 4.0, n)) / ps
        y0 = ncy + rad * np.sin(a)
        x0 = ncx + rad * np.cos(a)
        heading = a + np.pi / 2 * r.choice([-1, 1], n) + r.normal(0, 0.5, n)
        n_steps = int(r.uniform(12, 25) / ps / step)
        ys, xs = polyline_points(
            y0,
            x0,
            heading,
            n_steps=n_steps,
            step_px=step,
            curvature_sd=float(np.sqrt(step * ps / 4.0)),
            rng=r,
        )
        yi = np.clip(ys.astype(np.int64), 0, ctx.shape[0] - 1)
        xi = np.clip(xs.astype(np.int64), 0, ctx.shape[1] - 1)
        ok = (ctx.cells[yi, xi] == i) & (ctx.nuclei[yi, xi] == 0)
        ok &= (ys >= 0) & (ys < ctx.shape[0]) & (xs >= 0) & (xs < ctx.shape[1])
        ys_all.append(ys[ok])
        xs_all.append(xs[ok])
        ws_all.append(np.full(int(ok.sum()), coef[i]))
    out = np.zeros(ctx.shape, np.float32)
    if ys_all:
        per = step * np.sqrt(2 * np.pi) * max(_psf(ctx), 0.5) * 0.45
        out = splat(
            ctx.shape, np.concatenate(ys_all), np.concatenate(xs_all), np.concatenate(ws_all) * per
        )
    return out + _cytosol_floor(ctx, coef, 0.05)


@_register(12)
def actin(ctx, coef, rng, style):
    """Stress fibres (straight parallel bundles along the cell axis) plus cortex."""
    ps = ctx.ps
    step = 0.7
    ys_all, xs_all, ws_all = [], [], []
    for i in _active(ctx, coef):
        r = _cell_rng(ctx, i, 120)
        fibres = getattr(ctx, "stress_fibres", 1.0)
        n = max(2, int(round(r.integers(6, 16) * fibres)))
        if ctx.cell["mitotic"][i]:
            n = 0  # rounded mitotic cells lose their stress fibres
        th = ctx.cell["orient"][i] + r.normal(0, 0.06) + r.normal(0, 0.05, n)
        cy, cx = ctx.cell["cy_t"][i], ctx.cell["cx_t"][i]
        half = ctx.cell["radius_um"][i] * np.sqrt(ctx.cell["elong"][i]) * 1.4 / ps
        minor = ctx.cell["radius_um"][i] / np.sqrt(ctx.cell["elong"][i]) / ps
        off = r.uniform(-0.8, 0.8, n) * minor
        t = np.arange(-half, half, step)
        # Each fibre covers part of the cell, tapering over ~2 µm at its ends.
        centre = r.uniform(-0.3, 0.3, (n, 1)) * half
        length = r.uniform(0.35, 0.9, (n, 1)) * half
        taper = np.clip((length - np.abs(t[None, :] - centre)) / (2.0 / ps), 0.0, 1.0)
        ys = cy + off[:, None] * np.cos(th)[:, None] + t[None, :] * np.sin(th)[:, None]
        xs = cx - off[:, None] * np.sin(th)[:, None] + t[None, :] * np.cos(th)[:, None]
        yi = np.clip(ys.astype(np.int64), 0, ctx.shape[0] - 1)
        xi = np.clip(xs.astype(np.int64), 0, ctx.shape[1] - 1)
        ok = (ctx.cells[yi, xi] == i) & (ys >= 0) & (ys < ctx.shape[0])
        ok &= (xs >= 0) & (xs < ctx.shape[1]) & (taper > 0)
        w = np.exp(r.normal(0, 0.3, (n, 1))) * taper
        ys_all.append(ys[ok])
        xs_all.append(xs[ok])
        ws_all.append(coef[i] * w[ok])
    out = np.zeros(ctx.shape, np.float32)
    if ys_all:
        per = step * np.sqrt(2 * np.pi) * max(_psf(ctx), 0.5) * 0.8
        out = splat(
            ctx.shape, np.concatenate(ys_all), np.concatenate(xs_all), np.concatenate(ws_all) * per
        )
    cortex = (0.75 - 0.3 * getattr(ctx, "stress_fibres", 1.0)) * ctx.boundary * _cmap(ctx, coef)
    return out + cortex + _cytosol_floor(ctx, coef, 0.08)


@_register(13)
def focal_adhesions(ctx, coef, rng, style):
    """Short elongated streaks at the cell periphery, pointing outwards."""
    ps = ctx.ps
    ext = ctx.cell["ext"]
    rho = ctx.layout.rho
    ys_all, xs_all, ws_all = [], [], []
    for i in _active(ctx, coef):
        r = _cell_rng(ctx, i, 130)

        def w(ys, xs, i=i):
            return (rho[ys.astype(np.int64), xs.astype(np.int64)] > 0.7 * ext[i]).astype(float)

        y, x = ctx.sample_points(i, int(r.integers(12, 40)), r, region="cytoplasm", weight=None)
        keep = w(y, x) > 0
        y, x = y[keep], x[keep]
        a = np.arctan2(y - ctx.cell["cy_t"][i], x - ctx.cell["cx_t"][i])
        t = np.linspace(-0.8, 0.8, 6)[None, :] / ps * r.uniform(0.6, 1.4, (len(y), 1))
        ys_all.append((y[:, None] + t * np.sin(a)[:, None]).ravel())
        xs_all.append((x[:, None] + t * np.cos(a)[:, None]).ravel())
        ws_all.append(np.repeat(coef[i] * 0.35 * np.exp(r.normal(0, 0.3, len(y))), 6))
    out = np.zeros(ctx.shape, np.float32)
    if ys_all:
        out = blobs(
            ctx.shape,
            np.concatenate(ys_all),
            np.concatenate(xs_all),
            peak=np.concatenate(ws_all),
            sigma_px=0.15 / ps,
            psf_sigma_px=_psf(ctx),
        )
        out *= ctx.cells > 0
    return out + _cytosol_floor(ctx, coef, 0.06)


@_register(14)
def microtubules(ctx, coef, rng, style):
    """The microtubule filaments of the reference channel, plus a soluble pool."""
    # A microtubule-associated protein decorates the lattice unevenly.
    patchy = np.clip(0.75 + 0.25 * ctx.texture(140 + style["variant"], 1.0), 0.3, None)
    return (
        (0.9 * ctx.mt_filaments * patchy + 0.06 * ctx.thickness * (ctx.cells > 0))
        * _cmap(ctx, coef)
    ).astype(np.float32)


@_register(18)
def mtoc(ctx, coef, rng, style):
    """One bright focus at the MTOC with a halo."""
    ys, xs, ws = [], [], []
    for i in _active(ctx, coef):
        y, x = ctx.mtoc(i)
        ys.append(y)
        xs.append(x)
        ws.append(coef[i])
    out = np.zeros(ctx.shape, np.float32)
    if ys:
        out = blobs(
            ctx.shape,
            np.array(ys),
            np.array(xs),
            peak=0.9 * np.array(ws),
            sigma_px=0.45 / ctx.ps,
            psf_sigma_px=_psf(ctx),
        )
        out += blobs(
            ctx.shape, np.array(ys), np.array(xs), peak=0.08 * np.array(ws), sigma_px=2.5 / ctx.ps
        )
        out *= ctx.cells > 0
    return out + _cytosol_floor(ctx, coef, 0.04)


@_register(19)
def centrosome(ctx, coef, rng, style):
    """1 dot (G1) or 2 dots (after duplication: S, G2) beside the nucleus."""
    ps = ctx.ps
    ys, xs, ws = [], [], []
    for i in _active(ctx, coef):
        r = _cell_rng(ctx, i, 190)
        y, x = ctx.mtoc(i)
        if ctx.cell["mitotic"][i]:
            (ay, ax), (by, bx) = ctx.poles(i)
            ys += [ay, by]
            xs += [ax, bx]
            ws += [coef[i], coef[i]]
        elif ctx.cell["dna"][i] > 2.6:
            a = r.uniform(-np.pi, np.pi)
            d = r.uniform(0.5, 1.8) / ps / 2
            ys += [y + d * np.sin(a), y - d * np.sin(a)]
            xs += [x + d * np.cos(a), x - d * np.cos(a)]
            ws += [coef[i], coef[i] * r.uniform(0.6, 1.0)]
        else:
            ys.append(y)
            xs.append(x)
            ws.append(coef[i])
    out = np.zeros(ctx.shape, np.float32)
    if ys:
        # Centrioles (diffraction-limited) inside a pericentriolar cloud.
        out = blobs(
            ctx.shape,
            np.array(ys),
            np.array(xs),
            peak=2.0 * np.array(ws),
            sigma_px=0.08 / ps,
            psf_sigma_px=_psf(ctx),
        )
        out += blobs(
            ctx.shape,
            np.array(ys),
            np.array(xs),
            peak=0.5 * np.array(ws),
            sigma_px=0.3 / ps,
            psf_sigma_px=_psf(ctx),
        )
    return out + _cytosol_floor(ctx, coef, 0.01)


@_register(20)
def lipid_droplets(ctx, coef, rng, style):
    """Rings (coated droplet surfaces) 0.4–1 µm in radius in the cytoplasm."""
    ps = ctx.ps
    ys_all, xs_all, ws_all = [], [], []
    for i in _active(ctx, coef):
        r = _cell_rng(ctx, i, 200)
        y, x = ctx.sample_points(i, int(r.integers(5, 25)), r, region="cytoplasm")
        rad = r.uniform(0.4, 1.0, len(y)) / ps
        m = 24
        a = np.linspace(0, 2 * np.pi, m, endpoint=False)[None, :]
        ys_all.append((y[:, None] + rad[:, None] * np.sin(a)).ravel())
        xs_all.append((x[:, None] + rad[:, None] * np.cos(a)).ravel())
        per = (2 * np.pi * rad / m)[:, None] * np.ones((1, m))
        ws_all.append((coef[i] * per).ravel())
    out = np.zeros(ctx.shape, np.float32)
    if ys_all:
        k = np.sqrt(2 * np.pi) * max(_psf(ctx), 0.5) * 0.8
        out = splat(
            ctx.shape, np.concatenate(ys_all), np.concatenate(xs_all), np.concatenate(ws_all) * k
        )
        out *= ctx.cells > 0
    return out + _cytosol_floor(ctx, coef, 0.03)


@_register(21)
def plasma_membrane(ctx, coef, rng, style):
    """The cell rim (both sides of a contact), slightly ruffled."""
    ruffle = np.clip(0.75 + 0.4 * ctx.texture(210, 0.6), 0.2, None)
    rim = ctx.boundary * ruffle * _cmap(ctx, coef)
    return rim.astype(np.float32) + _cytosol_floor(ctx, coef, 0.04)


@_register(22)
def cell_junctions(ctx, coef, rng, style):
    """Only the boundaries where two cells touch."""
    rim = ctx.contact * _cmap(ctx, coef) * 1.1
    return rim.astype(np.float32) + _cytosol_floor(ctx, coef, 0.03)


@_register(23)
def mitochondria(ctx, coef, rng, style):
    """Many short tubules in the cytoplasm, denser around the nucleus."""
    ps = ctx.ps
    step = 0.7
    ys_all, xs_all, ws_all = [], [], []
    weight = _perinuclear(ctx, 9.0)
    lo, hi = style["mito_range"]
    for i in _active(ctx, coef):
        r = _cell_rng(ctx, i, 230)
        area = (ctx.cell["radius_um"][i] / 15.0) ** 2
        y, x = ctx.sample_points(
            i, int(r.integers(lo, hi) * area), r, region="cytoplasm", weight=weight(i)
        )
        n = len(y)
        if n == 0:
            continue
        length = r.uniform(0.8, 3.5, n) / ps
        n_steps = int(3.5 / ps / step) + 1
        ys, xs = polyline_points(
            y,
            x,
            r.uniform(-np.pi, np.pi, n),
            n_steps=n_steps,
            step_px=step,
            curvature_sd=float(np.sqrt(step * ps / 2.0)),
            rng=r,
        )
        along = np.arange(n_steps + 1)[None, :] * step
        ok = along < length[:, None]
        yi = np.clip(ys.astype(np.int64), 0, ctx.shape[0] - 1)
        xi = np.clip(xs.astype(np.int64), 0, ctx.shape[1] - 1)
        ok &= (ctx.cells[yi, xi] == i) & (ctx.nuclei[yi, xi] == 0)
        w = np.exp(r.normal(0, 0.25, (n, 1))) * np.ones_like(ys)
        ys_all.append(ys[ok])
        xs_all.append(xs[ok])
        ws_all.append(coef[i] * w[ok])
    out = np.zeros(ctx.shape, np.float32)
    if ys_all:
        per = step * np.sqrt(2 * np.pi) * np.hypot(_psf(ctx), 0.1 / ps) * 0.7
        out = splat(
            ctx.shape, np.concatenate(ys_all), np.concatenate(xs_all), np.concatenate(ws_all) * per
        )
        from scipy import ndimage

        out = ndimage.gaussian_filter(out, 0.1 / ps, mode="constant")
    return out + _cytosol_floor(ctx, coef, 0.04)


@_register(24)
def aggresome(ctx, coef, rng, style):
    """One large perinuclear inclusion at the MTOC plus a diffuse pool."""
    ys, xs, ws = [], [], []
    for i in _active(ctx, coef):
        y, x = ctx.mtoc(i)
        ys.append(y)
        xs.append(x)
        ws.append(coef[i])
    out = np.zeros(ctx.shape, np.float32)
    if ys:
        out = blobs(
            ctx.shape,
            np.array(ys),
            np.array(xs),
            peak=0.9 * np.array(ws),
            sigma_px=0.9 / ctx.ps,
            psf_sigma_px=_psf(ctx),
        )
        out *= ctx.cells > 0
    return out + _cytosol_floor(ctx, coef, 0.1)


@_register(25)
def cytosol(ctx, coef, rng, style):
    """Diffuse cytoplasm (thicker near the nucleus), largely excluded from the nucleus."""
    tex = 0.92 + 0.08 * ctx.texture(250, 0.8)
    c = _cmap(ctx, coef)
    dens = 0.5 * ctx.thickness * tex * np.where(ctx.nuclei > 0, 0.08, 1.0)
    return (dens * c * (ctx.cells > 0)).astype(np.float32)


@_register(26)
def cytoplasmic_bodies(ctx, coef, rng, style):
    """10–40 small bright dots throughout the cytoplasm."""
    return _dots(
        ctx,
        coef,
        region="cytoplasm",
        count=lambda r, i: r.integers(10, 41),
        sigma_um=0.2,
        peak=1.2,
        key=260,
        bright_sd=0.3,
    ) + _cytosol_floor(ctx, coef, 0.015)


@_register(27)
def rods_rings(ctx, coef, rng, style):
    """1–4 rods (2–5 µm) and rings (1–1.5 µm radius) in the cytoplasm."""
    ps = ctx.ps
    ys_all, xs_all, ws_all = [], [], []
    for i in _active(ctx, coef):
        r = _cell_rng(ctx, i, 270)
        y, x = ctx.sample_points(i, int(r.integers(1, 5)), r, region="cytoplasm")
        for yy, xx in zip(y, x, strict=True):
            if r.uniform() < 0.6:
                t = np.arange(-1, 1, 0.05) * r.uniform(1.0, 2.5) / ps
                a = r.uniform(-np.pi, np.pi)
                ys_all.append(yy + t * np.sin(a))
                xs_all.append(xx + t * np.cos(a))
            else:
                a = np.linspace(0, 2 * np.pi, 60, endpoint=False)
                rad = r.uniform(1.0, 1.5) / ps
                ys_all.append(yy + rad * np.sin(a))
                xs_all.append(xx + rad * np.cos(a))
            step = np.hypot(np.diff(ys_all[-1][:2]), np.diff(xs_all[-1][:2]))[0]
            ws_all.append(np.full(len(ys_all[-1]), coef[i] * step))
    out = np.zeros(ctx.shape, np.float32)
    if ys_all:
        k = np.sqrt(2 * np.pi) * max(_psf(ctx), 0.5) * 0.9
        out = splat(
            ctx.shape, np.concatenate(ys_all), np.concatenate(xs_all), np.concatenate(ws_all) * k
        )
        out *= ctx.cells > 0
    return out + _cytosol_floor(ctx, coef, 0.04)


def protein_style(seed: int) -> dict:
    """A protein's own look, drawn from its name's seed."""
    r = np.random.default_rng([seed, 99])
    lo = int(r.integers(20, 31))
    return {
        "speckle_range": (lo, int(r.integers(lo + 10, 51))),
        "golgi_span_deg": float(r.uniform(50, 110)),
        "mito_range": (int(r.integers(50, 90)), int(r.integers(120, 200))),
        "variant": int(r.integers(0, 8)),
    }
