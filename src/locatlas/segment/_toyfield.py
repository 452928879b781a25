"""A small, self-contained synthetic field with ground truth, for tests and benchmarks
of this package when :mod:`locatlas.simulate` is not available.

Not a realistic simulator: elliptical nuclei of varying size and brightness (some
small and bright, like mitotic figures), Voronoi-like cells capped at a radius,
a filamentous cytoplasm stain that is dimmer at cell borders, a few debris specks,
uneven illumination, optical blur and Poisson + read noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


@dataclass(frozen=True)
class ToyField:
    """image (C, Y, X) uint16 in ``roles`` order; nuclei, cells (Y, X) int32 truth."""

    image: np.ndarray
    nuclei: np.ndarray
    cells: np.ndarray
    roles: tuple[str, ...]
    pixel_size_um: float


def toy_field(
    shape: tuple[int, int] = (512, 512),
    *,
    pixel_size_um: float = 0.2,
    n_cells: int | None = None,
    nucleus_diameter_um: float = 10.0,
    cell_radius_um: float = 14.0,
    roles: tuple[str, ...] = ("nucleus", "microtubules"),
    seed: int = 0,
) -> ToyField:
    """Make a synthetic field with ground-truth nuclei and cells.

    Parameters
    ----------
    shape : (Y, X)
        Field size in pixels.
    pixel_size_um : float
        Pixel size (µm).
    n_cells : int or None
        Number of cells; default fills ~55 % of the field with cells.
    nucleus_diameter_um, cell_radius_um : float
        Typical nucleus diameter and cell radius (µm).
    roles : tuple of str
        Channels to render: ``nucleus`` plus any of ``microtubules``, ``er``, ``protein``.
    seed : int
        Random seed; the same seed gives the same field.
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    ps = pixel_size_um
    r_nuc = nucleus_diameter_um / 2 / ps
    r_cell = cell_radius_um / ps
    if n_cells is None:
        n_cells = max(1, int(0.55 * h * w / (np.pi * r_cell**2)))
    # Centres by dart throwing with a minimum spacing (some cells touch, none overlap).
    min_sep = 1.6 * r_nuc
    cy, cx = [], []
    for _ in range(n_cells * 60):
        if len(cy) >= n_cells:
            break
        y, x = (
            rng.uniform(-0.3 * r_nuc, h + 0.3 * r_nuc),
            rng.uniform(-0.3 * r_nuc, w + 0.3 * r_nuc),
        )
        if cy and np.min((np.array(cy) - y) ** 2 + (np.array(cx) - x) ** 2) < min_sep**2:
            continue
        cy.append(y)
        cx.append(x)
    n = len(cy)
    cy_a, cx_a = np.array(cy), np.array(cx)
    # Cells: Voronoi regions of the centres, capped at a per-cell radius.
    seeds = np.ones((h, w), bool)
    iy = np.clip(np.round(cy_a).astype(int), 0, h - 1)
    ix = np.clip(np.round(cx_a).astype(int), 0, w - 1)
    seeds[iy, ix] = False
    lut = np.zeros((h, w), np.int32)
    lut[iy, ix] = np.arange(1, n + 1)
    dist, (ny, nx) = ndi.distance_transform_edt(seeds, return_indices=True)
    owner = lut[ny, nx]
    radius = r_cell * np.exp(rng.normal(0, 0.2, n + 1))
    cells = np.where(dist <= radius[owner], owner, 0).astype(np.int32)

    nuclei = np.zeros((h, w), np.int32)
    dna = np.zeros((h, w), np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    mitotic = rng.random(n) < 0.04
    for k in range(n):
        a = r_nuc * np.exp(rng.normal(0, 0.15)) * (0.55 if mitotic[k] else 1.0)
        b = a * rng.uniform(0.65, 1.0)
        t = rng.uniform(0, np.pi)
        y0, y1 = int(max(0, cy_a[k] - a - 2)), int(min(h, cy_a[k] + a + 3))
        x0, x1 = int(max(0, cx_a[k] - a - 2)), int(min(w, cx_a[k] + a + 3))
        if y1 <= y0 or x1 <= x0:
            continue
        dy, dx = yy[y0:y1, x0:x1] - cy_a[k], xx[y0:y1, x0:x1] - cx_a[k]
        u = (dy * np.cos(t) + dx * np.sin(t)) / a
        v = (-dy * np.sin(t) + dx * np.cos(t)) / b
        inside = (u * u + v * v <= 1.0) & (cells[y0:y1, x0:x1] == k + 1)
        nuclei[y0:y1, x0:x1][inside] = k + 1
        level = (3.0 if mitotic[k] else 1.0) * rng.uniform(0.5, 1.5)
        dna[y0:y1, x0:x1][inside] = level
    # Truth: the nucleus belongs to its cell; cells without a nucleus pixel are dropped.
    has_nucleus = np.zeros(n + 1, bool)
    has_nucleus[np.unique(nuclei)] = True
    has_nucleus[0] = False
    cells = np.where(has_nucleus[cells], cells, 0)
    cells = np.where(nuclei > 0, nuclei, cells)
    keep = np.flatnonzero(has_nucleus)
    relabel = np.zeros(n + 1, np.int32)
    relabel[keep] = np.arange(1, keep.size + 1)
    nuclei, cells = relabel[nuclei], relabel[cells]
    # Chromatin texture and debris.
    dna *= 1 + 0.15 * ndi.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), 1.5) * 3
    for _ in range(max(1, n // 20)):
        y, x = rng.integers(0, h), rng.integers(0, w)
        dna[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2] += 2.0

    channels = []
    illum = 1.0 - 0.35 * ((yy / h - 0.3) ** 2 + (xx / w - 0.6) ** 2)
    # Dim cell borders: distance to the cell's edge (boundaries between labels count).
    edge = np.zeros((h, w), bool)
    edge[:, 1:] |= cells[:, 1:] != cells[:, :-1]
    edge[1:, :] |= cells[1:, :] != cells[:-1, :]
    border = ndi.distance_transform_edt(~edge & (cells > 0)).astype(np.float32)
    for role in roles:
        if role == "nucleus":
            sig = ndi.gaussian_filter(dna, 0.4 / ps) * 2000.0
        else:
            level = rng.uniform(0.4, 1.6, int(cells.max()) + 1).astype(np.float32)
            level[0] = 0.0
            fil = ndi.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), 0.6 / ps)
            fil = 1.0 + 2.5 * np.abs(fil) / (fil.std() + 1e-6)
            body = level[cells] * fil * (1 - np.exp(-border * ps / 1.5))
            body *= np.where(nuclei > 0, 0.35, 1.0)
            sig = ndi.gaussian_filter(body, 0.4 / ps) * 600.0
        sig = sig * illum + 100.0
        noisy = rng.poisson(np.maximum(sig, 0)).astype(np.float32) + rng.normal(0, 5, (h, w))
        channels.append(np.clip(noisy, 0, 65535).astype(np.uint16))
    return ToyField(
        image=np.stack(channels),
        nuclei=nuclei.astype(np.int32),
        cells=cells.astype(np.int32),
        roles=tuple(roles),
        pixel_size_um=ps,
    )
