"""Label-free reference scores: how the protein co-distributes with the cell's landmarks.

These need no training and no labels; they are shown beside the model's calls
as an independent, interpretable check (e.g. a "nucleoplasm" call should come
with a high nuclear fraction, "plasma membrane" with rim enrichment, "ER" with a
high Pearson correlation to the ER reference channel).

All scores are computed per cell inside its cell mask, after subtracting the
crop's background (a low percentile of the protein channel).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from locatlas.localize.data import check_crops
from locatlas.localize.morphology import dilate, erode

REFERENCE_ROLES = ("nucleus", "microtubules", "er")


def _sum(x: torch.Tensor) -> torch.Tensor:
    return x.sum(dim=(1, 2, 3))


def _ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(b > 0, a / b.clamp_min(1e-12), torch.full_like(a, float("nan")))


def _pearson(x: torch.Tensor, y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    n = _sum(m).clamp_min(1)
    mx = (_sum(x * m) / n)[:, None, None, None]
    my = (_sum(y * m) / n)[:, None, None, None]
    dx, dy = (x - mx) * m, (y - my) * m
    den = torch.sqrt(_sum(dx * dx) * _sum(dy * dy))
    return _ratio(_sum(dx * dy), den)


def label_free_scores(
    crops,
    masks,
    *,
    channels: Sequence[str],
    protein_role: str = "protein",
    rim_px: int | None = None,
    perinuclear_px: int | None = None,
    spot_px: int | None = None,
    background_percentile: float = 5.0,
    chunk: int = 512,
) -> pd.DataFrame:
    """Per-cell label-free localization scores.

    Parameters
    ----------
    crops : (N, C, S, S) float crops (crop contract), channels named by ``channels``.
    masks : (N, 2, S, S) uint8 [cell mask, nucleus mask].
    channels : roles of the crop channels, in order; must include ``protein_role``.
    rim_px : width of the cell-boundary band in px (default S/32, ≥ 1; 2 px = 1.25 µm
        for the default 64 px crops at 0.625 µm/px).
    perinuclear_px : width of the band around the nucleus in px (default S/16, ≥ 1).
    spot_px : radius of the structuring element that defines spots (default S/32, ≥ 1).
    background_percentile : percentile of the whole crop's protein channel taken as
        background and subtracted.

    Returns
    -------
    DataFrame, one row per cell, float32 columns:

    * ``lf_protein_mean`` — mean background-subtracted protein in the cell;
    * ``lf_nuclear_fraction`` — share of the cell's protein inside the nucleus;
    * ``lf_nuc_cyto_log2`` — log2(mean in nucleus / mean in cytoplasm);
    * ``lf_rim_enrichment`` — mean in the cell-boundary band / mean in the cell
      (> 1: plasma membrane / cell periphery);
    * ``lf_perinuclear_fraction`` — share of the cytoplasmic protein within
      ``perinuclear_px`` of the nucleus (Golgi, ER, MTOC are high);
    * ``lf_punctateness`` — share of the protein in small bright spots (white
      top-hat of radius ``spot_px``): vesicles, nucleoli, bodies are high;
    * ``lf_pearson_<role>`` — Pearson correlation with each reference channel
      present (nucleus, microtubules, er) inside the cell.

    NaN where a score is undefined (no nucleus, empty cell, flat channel).
    """
    check_crops(crops, masks)
    channels = list(channels)
    if len(channels) != crops.shape[1]:
        raise ValueError(f"{len(channels)} channel roles for {crops.shape[1]} crop channels")
    if protein_role not in channels:
        raise ValueError(f"label_free_scores needs a {protein_role!r} channel, got {channels}")
    s = crops.shape[-1]
    rim = rim_px if rim_px is not None else max(1, round(s / 32))
    peri = perinuclear_px if perinuclear_px is not None else max(1, round(s / 16))
    spot = spot_px if spot_px is not None else max(1, round(s / 32))
    ip = channels.index(protein_role)
    refs = [(r, channels.index(r)) for r in REFERENCE_ROLES if r in channels]
    cols: dict[str, list[np.ndarray]] = {}

    def add(name: str, v: torch.Tensor) -> None:
        cols.setdefault(name, []).append(v.float().numpy())

    n = crops.shape[0]
    for a in range(0, n, chunk):
        c = torch.from_numpy(np.asarray(crops[a : a + chunk], dtype=np.float32))
        m = torch.from_numpy(np.asarray(masks[a : a + chunk]).astype(np.float32))
        p = c[:, ip : ip + 1]
        flat = p.flatten(1)
        kth = max(1, int(round(background_percentile / 100 * flat.shape[1])))
        bg = flat.kthvalue(kth, dim=1).values[:, None, None, None]
        p = (p - bg).clamp_min(0)
        cell = m[:, 0:1]
        nuc = m[:, 1:2] * cell
        cyto = cell - nuc
        tot = _sum(p * cell)
        add("lf_protein_mean", _ratio(tot, _sum(cell)))
        add("lf_nuclear_fraction", _ratio(_sum(p * nuc), tot))
        mean_n = _ratio(_sum(p * nuc), _sum(nuc))
        mean_c = _ratio(_sum(p * cyto), _sum(cyto))
        add("lf_nuc_cyto_log2", torch.log2(_ratio(mean_n + 1e-4, mean_c + 1e-4)))
        band = cell - erode(cell, rim) * cell
        add(
            "lf_rim_enrichment", _ratio(_ratio(_sum(p * band), _sum(band)), _ratio(tot, _sum(cell)))
        )
        near = dilate(nuc, peri) * cyto
        add("lf_perinuclear_fraction", _ratio(_sum(p * near), _sum(p * cyto)))
        opened = dilate(erode(p, spot), spot)
        add("lf_punctateness", _ratio(_sum((p - opened).clamp_min(0) * cell), tot))
        for role, ir in refs:
            add(f"lf_pearson_{role}", _pearson(p, c[:, ir : ir + 1], cell))
    if n == 0:
        names = [
            "lf_protein_mean", "lf_nuclear_fraction", "lf_nuc_cyto_log2", "lf_rim_enrichment",
            "lf_perinuclear_fraction", "lf_punctateness",
        ] + [f"lf_pearson_{r}" for r, _ in refs]  # fmt: skip
        return pd.DataFrame({k: np.zeros(0, np.float32) for k in names})
    return pd.DataFrame({k: np.concatenate(v).astype(np.float32) for k, v in cols.items()})
