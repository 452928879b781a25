"""Cell crops from labelled fields with truth masks (simulated plates), for evaluation.

The workflow gets its crops from the segmentation stage; this module makes
crops in the same contract directly from a field's truth masks, so the model
can be trained and evaluated on simulated plates independently of segmentation
quality (held-out-protein evaluation, benchmarks, slow tests).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage as ndi

from locatlas import ROLES
from locatlas.localize.data import parse_labels, rescale_tensors


def robust_scale(image: np.ndarray, *, low: float = 0.1, high: float = 99.9) -> np.ndarray:
    """Scale each channel of (C, Y, X) to ~0..1 by its ``low``..``high`` percentiles."""
    img = np.asarray(image, dtype=np.float32)
    out = np.empty_like(img)
    step = max(1, int(np.sqrt(img[0].size / 262_144)))
    for c in range(img.shape[0]):
        lo, hi = np.percentile(img[c, ::step, ::step], [low, high])
        out[c] = (img[c] - lo) / max(float(hi - lo), 1e-6)
    return out


def truth_crops(
    image: np.ndarray,
    cells: np.ndarray,
    nuclei: np.ndarray,
    *,
    pixel_size_um: float,
    crop_um: float = 40.0,
    size_px: int = 64,
    cell_ids: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crops centred on each cell, in the crop contract.

    Parameters
    ----------
    image : (C, Y, X) field, any dtype; each channel is robust-scaled to ~0..1.
    cells, nuclei : (Y, X) int label images; nucleus ``k`` belongs to cell ``k``.
    pixel_size_um : µm per pixel of the field.
    crop_um : physical side of the crop in µm.
    size_px : side of the output crop in px (µm/px = crop_um / size_px).
    cell_ids : which cells (default: every label in ``cells``).

    Returns
    -------
    crops (N, C, size_px, size_px) float16, masks (N, 2, size_px, size_px) uint8,
    cell ids (N,) int64.
    """
    img = robust_scale(image)
    cells = np.asarray(cells)
    nuclei = np.asarray(nuclei)
    if cell_ids is None:
        cell_ids = np.unique(cells[cells > 0])
    cell_ids = np.asarray(cell_ids, dtype=np.int64)
    w = int(round(crop_um / pixel_size_um))
    w += w % 2
    h = w // 2
    c, ny, nx = img.shape
    pad = ((0, 0), (h, h), (h, h))
    img_p = np.pad(img, pad)
    cells_p = np.pad(cells, pad[1:])
    nuc_p = np.pad(nuclei, pad[1:])
    centres = ndi.center_of_mass(np.ones_like(cells), cells, cell_ids) if len(cell_ids) else []
    out_c = np.empty((len(cell_ids), c, size_px, size_px), np.float16)
    out_m = np.empty((len(cell_ids), 2, size_px, size_px), np.uint8)
    for i, (k, (cy, cx)) in enumerate(zip(cell_ids, centres, strict=True)):
        y0, x0 = int(round(cy)), int(round(cx))  # window [y0-h, y0+h) in padded coords + h
        win = (slice(y0, y0 + w), slice(x0, x0 + w))
        crop = img_p[(slice(None), *win)]
        m = np.stack([cells_p[win] == k, nuc_p[win] == k]).astype(np.float32)
        t_img, t_m = rescale_tensors(
            torch.from_numpy(np.ascontiguousarray(crop))[None],
            torch.from_numpy(m)[None],
            from_um_per_px=pixel_size_um,
            to_um_per_px=crop_um / size_px,
            size_px=size_px,
        )
        out_c[i] = t_img[0].numpy().astype(np.float16)
        out_m[i] = t_m[0].numpy().astype(np.uint8)
    return out_c, out_m, cell_ids


def simulated_crops(
    proteins,
    *,
    fields_per_protein: int = 2,
    shape: tuple[int, int] = (1024, 1024),
    pixel_size_um: float = 0.2,
    crop_um: float = 40.0,
    size_px: int = 64,
    seed: int = 0,
    n_classes: int = 28,
    drop_border: bool = True,
) -> dict:
    """Simulate fields of ``proteins`` and cut truth crops of every cell.

    Parameters
    ----------
    proteins : :class:`locatlas.simulate.ProteinSpec` list.
    fields_per_protein : fields simulated per protein (distinct seeds).
    drop_border : skip cells that touch the field border (as segmentation does).

    Returns
    -------
    dict with ``crops``, ``masks``, ``labels`` ((N, K) multi-hot), ``groups``
    (protein names), ``fields`` (field index), ``channels`` (``ROLES``) and
    ``um_per_px``.
    """
    from locatlas.simulate import simulate_field

    crops, masks, labels, groups, fields = [], [], [], [], []
    fid = 0
    for p in proteins:
        for _ in range(fields_per_protein):
            fseed = int(np.random.SeedSequence([seed, fid, 991]).generate_state(1)[0])
            sim = simulate_field(p, shape=shape, pixel_size_um=pixel_size_um, seed=fseed)
            table = sim.cells_table
            if drop_border and "touches_border" in table:
                table = table[~table["touches_border"].astype(bool)]
            ids = table["cell_id"].to_numpy()
            c, m, _ = truth_crops(
                sim.image, sim.cells, sim.nuclei, pixel_size_um=pixel_size_um,
                crop_um=crop_um, size_px=size_px, cell_ids=ids,
            )  # fmt: skip
            crops.append(c)
            masks.append(m)
            labels.append(parse_labels(list(table["labels"]), n_classes))
            groups += [p.name] * len(ids)
            fields += [fid] * len(ids)
            fid += 1
    return {
        "crops": np.concatenate(crops),
        "masks": np.concatenate(masks),
        "labels": np.concatenate(labels),
        "groups": np.asarray(groups),
        "fields": np.asarray(fields),
        "channels": list(ROLES),
        "um_per_px": crop_um / size_px,
    }
