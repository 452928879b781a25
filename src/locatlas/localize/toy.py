"""Toy cell crops with known localization patterns, for tests and examples.

Not a microscope simulator (that is :mod:`locatlas.simulate`): just enough
structure — an elliptic cell and nucleus, reference channels, and a protein
pattern per class — to check that the localization code learns, ranks and
scores what it should, in seconds.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: Toy patterns and the HPA-28 class index each one stands for.
PATTERNS = {
    "nucleoplasm": 0,
    "nuclear_membrane": 1,
    "nucleoli": 2,
    "endoplasmic_reticulum": 6,
    "golgi_apparatus": 7,
    "vesicles": 9,
    "microtubules": 14,
    "centrosome": 19,
    "plasma_membrane": 21,
    "cytosol": 25,
}


def _ellipse(yy, xx, cy, cx, ry, rx, theta):
    c, s = np.cos(theta), np.sin(theta)
    dy, dx = yy - cy, xx - cx
    u = (dx * c + dy * s) / rx
    v = (-dx * s + dy * c) / ry
    return u * u + v * v


def _spots(rng, shape, where, n, sigma):
    img = np.zeros(shape, np.float32)
    ys, xs = np.nonzero(where)
    if len(ys) == 0 or n == 0:
        return img
    pick = rng.integers(0, len(ys), n)
    img[ys[pick], xs[pick]] = 1.0
    img = ndi.gaussian_filter(img, sigma)
    return img / max(img.max(), 1e-6)


def toy_cell(rng: np.random.Generator, patterns, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """One toy crop (4, size, size) float32 in ROLES order and masks (2, size, size) uint8."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = size / 2
    theta = rng.uniform(0, np.pi)
    r_cell = size * rng.uniform(0.3, 0.4)
    ecc = rng.uniform(0.7, 1.0)
    cell_d = _ellipse(yy, xx, c, c, r_cell * ecc, r_cell, theta)
    cell = cell_d <= 1
    ncy, ncx = c + rng.normal(0, size * 0.03, 2)
    r_nuc = r_cell * rng.uniform(0.4, 0.5)
    nuc_d = _ellipse(yy, xx, ncy, ncx, r_nuc * rng.uniform(0.8, 1.0), r_nuc, theta)
    nuc = (nuc_d <= 1) & cell
    cyto = cell & ~nuc
    s = size / 64
    # Reference channels.
    dna = nuc * (0.7 + 0.3 * ndi.gaussian_filter(rng.random((size, size)), 1.5 * s) * 2)
    ang = np.arctan2(yy - ncy, xx - ncx)
    n_fib = int(rng.integers(10, 16))
    phase = rng.uniform(0, 2 * np.pi)
    fib = np.cos(n_fib * ang + phase + 0.3 * np.sin(3 * ang)) ** 8
    mt = cyto * (0.3 + 0.7 * fib)
    net = ndi.gaussian_filter(rng.random((size, size)).astype(np.float32), 1.2 * s)
    net = np.clip((net - net.mean()) / (net.std() + 1e-6), 0, None)
    near = np.exp(-np.sqrt(np.maximum(nuc_d, 0)) * 0.8)
    er = cyto * net * (0.4 + near)
    er = er / max(er.max(), 1e-6)
    dist_edge = ndi.distance_transform_edt(cell)
    prot = np.zeros((size, size), np.float32)
    for pat in patterns:
        if pat == "nucleoplasm":
            p = nuc * 1.0
        elif pat == "nuclear_membrane":
            p = nuc & (ndi.distance_transform_edt(nuc) <= 1.5 * s)
        elif pat == "nucleoli":
            p = _spots(
                rng,
                (size, size),
                ndi.binary_erosion(nuc, iterations=3),
                int(rng.integers(2, 5)),
                1.5 * s,
            )
        elif pat == "endoplasmic_reticulum":
            p = er
        elif pat == "golgi_apparatus":
            a = rng.uniform(0, 2 * np.pi)
            gy, gx = ncy + np.sin(a) * r_nuc * 1.25, ncx + np.cos(a) * r_nuc * 1.25
            p = cyto * np.exp(-((yy - gy) ** 2 + (xx - gx) ** 2) / (2 * (2.5 * s) ** 2))
        elif pat == "vesicles":
            p = _spots(rng, (size, size), cyto, int(rng.integers(15, 30)), 0.8 * s)
        elif pat == "microtubules":
            p = mt
        elif pat == "centrosome":
            a = rng.uniform(0, 2 * np.pi)
            where = np.zeros((size, size), bool)
            where[int(np.clip(ncy + np.sin(a) * (r_nuc + 2 * s), 0, size - 1)),
                  int(np.clip(ncx + np.cos(a) * (r_nuc + 2 * s), 0, size - 1))] = True  # fmt: skip
            p = _spots(rng, (size, size), where, 1, 1.0 * s)
        elif pat == "plasma_membrane":
            p = cell & (dist_edge <= 1.5 * s)
        elif pat == "cytosol":
            p = cyto * 1.0
        else:
            raise ValueError(f"unknown toy pattern {pat!r}; known: {sorted(PATTERNS)}")
        p = np.asarray(p, np.float32)
        prot += p / max(p.max(), 1e-6)
    prot = ndi.gaussian_filter(prot, 0.7 * s) * rng.uniform(0.3, 1.0)
    img = np.stack([dna, mt, er, prot]).astype(np.float32)
    img = ndi.gaussian_filter(img, (0, 0.6 * s, 0.6 * s))
    img += rng.normal(0.03, 0.01, img.shape).astype(np.float32)
    img = np.clip(img, 0, None)
    masks = np.stack([cell, nuc]).astype(np.uint8)
    return img, masks


def toy_cells(
    proteins: dict[str, list[str]],
    *,
    cells_per_protein: int = 20,
    size: int = 64,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A toy dataset: ``cells_per_protein`` cells for each protein.

    Parameters
    ----------
    proteins : protein name -> list of toy patterns (keys of :data:`PATTERNS`).

    Returns
    -------
    crops (N, 4, S, S) float16 in ROLES order, masks (N, 2, S, S) uint8,
    labels (N, 28) float32 multi-hot (HPA-28 indices), groups (N,) protein names.
    """
    rng = np.random.default_rng(seed)
    crops, masks, labels, groups = [], [], [], []
    for name in sorted(proteins):
        pats = proteins[name]
        lab = np.zeros(28, np.float32)
        for pat in pats:
            lab[PATTERNS[pat]] = 1
        for _ in range(cells_per_protein):
            img, m = toy_cell(rng, pats, size)
            crops.append(img)
            masks.append(m)
            labels.append(lab)
            groups.append(name)
    return (
        np.stack(crops).astype(np.float16),
        np.stack(masks),
        np.stack(labels),
        np.asarray(groups),
    )
