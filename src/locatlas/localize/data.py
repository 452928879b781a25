"""Crop handling: labels, channel selection, rescaling to the model's µm/px, augmentation.

Crop contract (from the segmentation stage): crops (N, C, S, S) float16, each
channel scaled by its field's robust range to ~0..1, channels in
``locatlas.ROLES`` order restricted to the roles present (a ``channels`` list
names them); masks (N, 2, S, S) uint8 = [cell mask, nucleus mask].
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from locatlas import ROLES
from locatlas.classes import ClassList

_SPLIT = re.compile(r"[;,|]")


def parse_labels(
    labels: Sequence, classes: ClassList | int | None = None, *, n_classes: int | None = None
) -> np.ndarray:
    """Multi-hot label matrix from label strings.

    Parameters
    ----------
    labels : one entry per cell (or image): class indices joined by ``;`` (also
        accepted: ``,`` or ``|``, and spaces as in the Kaggle 2018 ``Target``
        column when no other separator is present).
        With a :class:`ClassList`, class names or slugs are accepted too. Empty
        strings, ``None`` and NaN mean "no label" (an all-zero row).
    classes : the class list, or the number of classes.
    n_classes : the number of classes (alternative to ``classes``).

    Returns
    -------
    (N, K) float32 multi-hot array.

    Raises
    ------
    ValueError naming the entry (position and text) that holds an unknown class.
    """
    if classes is None:
        if n_classes is None:
            raise TypeError("parse_labels needs classes or n_classes")
        classes = int(n_classes)
    k = classes if isinstance(classes, int) else len(classes)
    out = np.zeros((len(labels), k), dtype=np.float32)
    for i, entry in enumerate(labels):
        if entry is None or (isinstance(entry, float) and math.isnan(entry)):
            continue
        if isinstance(entry, (int, np.integer)):
            tokens = [str(int(entry))]
        else:
            text = str(entry).strip()
            # ';' (ours), ',' or '|' separate classes; without them, whitespace
            # does (the Kaggle 2018 ``Target`` column: "0 25").
            parts = _SPLIT.split(text) if _SPLIT.search(text) else text.split()
            tokens = [t.strip() for t in parts if t.strip()]
        for tok in tokens:
            if tok.lstrip("-").isdigit():
                j = int(tok)
            elif isinstance(classes, ClassList) and (tok in classes.slugs or tok in classes.names):
                j = classes.index(tok)
            else:
                raise ValueError(f"labels[{i}] = {entry!r}: {tok!r} is not a class index or name")
            if not 0 <= j < k:
                raise ValueError(f"labels[{i}] = {entry!r}: class {j} is outside 0..{k - 1}")
            out[i, j] = 1.0
    return out


def channel_indices(channels: Sequence[str], needed: Sequence[str]) -> list[int]:
    """Positions in ``channels`` of the roles in ``needed`` (in ``needed``'s order).

    Raises
    ------
    ValueError when a needed role is absent or a channel name is not a known role.
    """
    channels = list(channels)
    unknown = [c for c in channels if c not in ROLES]
    if unknown:
        raise ValueError(f"crop channels {channels}: unknown role(s) {unknown}; roles are {ROLES}")
    missing = [r for r in needed if r not in channels]
    if missing:
        raise ValueError(
            f"the model needs channel role(s) {missing} that the crops lack "
            f"(crop channels: {channels}, model channels: {list(needed)})"
        )
    return [channels.index(r) for r in needed]


def check_crops(crops, masks) -> None:
    """Raise ValueError unless crops are (N, C, S, S) and masks (N, 2, S, S)."""
    if crops.ndim != 4 or crops.shape[2] != crops.shape[3]:
        raise ValueError(f"crops must be (N, C, S, S) with square crops, got {crops.shape}")
    if masks.ndim != 4 or masks.shape[1] != 2:
        raise ValueError(f"masks must be (N, 2, S, S) = [cell, nucleus], got {masks.shape}")
    if masks.shape[0] != crops.shape[0] or masks.shape[2:] != crops.shape[2:]:
        raise ValueError(f"crops {crops.shape} and masks {masks.shape} disagree in N or S")


def _fit(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centre-crop or zero-pad the last two axes of ``x`` to ``size``."""
    s = x.shape[-1]
    if s > size:
        a = (s - size) // 2
        return x[..., a : a + size, a : a + size]
    if s < size:
        a = (size - s) // 2
        b = size - s - a
        return F.pad(x, (a, b, a, b))
    return x


def rescale_tensors(
    img: torch.Tensor,
    msk: torch.Tensor,
    *,
    from_um_per_px: float,
    to_um_per_px: float,
    size_px: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch core of :func:`rescale_crops` (float image, float 0/1 masks)."""
    s = img.shape[-1]
    factor = float(from_um_per_px) / float(to_um_per_px)
    t = max(1, round(s * factor))
    if t != s:
        img = F.interpolate(img, size=(t, t), mode="bilinear", align_corners=False, antialias=t < s)
        msk = F.interpolate(msk, size=(t, t), mode="bilinear", align_corners=False, antialias=t < s)
        msk = (msk >= 0.5).to(img.dtype)
    return _fit(img, size_px), _fit(msk, size_px)


def rescale_crops(
    crops: np.ndarray,
    masks: np.ndarray,
    *,
    from_um_per_px: float,
    to_um_per_px: float,
    size_px: int,
    chunk: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """Resample crops to another pixel size and size, keeping them centred.

    A crop of S px at ``from_um_per_px`` covers S·from µm; it is resampled by
    ``from/to`` (bilinear, antialiased when shrinking) and then centre-cropped or
    zero-padded to ``size_px``. Masks are resampled bilinearly and thresholded
    at 0.5, so they stay 0/1.

    Parameters
    ----------
    crops : (N, C, S, S) float array, any float dtype (kept in the output).
    masks : (N, 2, S, S) uint8/bool [cell, nucleus].
    from_um_per_px, to_um_per_px : pixel sizes in µm of the input and output.
    size_px : output crop size in pixels.

    Returns
    -------
    crops (N, C, size_px, size_px) in the input's dtype, masks (N, 2, size_px, size_px) uint8.
    """
    check_crops(crops, masks)
    if from_um_per_px <= 0 or to_um_per_px <= 0 or size_px < 1:
        raise ValueError(
            f"rescale_crops: pixel sizes must be > 0 and size_px >= 1 "
            f"(got {from_um_per_px}, {to_um_per_px}, {size_px})"
        )
    n, c = crops.shape[:2]
    dtype = crops.dtype if np.issubdtype(crops.dtype, np.floating) else np.float32
    out_c = np.empty((n, c, size_px, size_px), dtype=dtype)
    out_m = np.empty((n, 2, size_px, size_px), dtype=np.uint8)
    for a in range(0, n, chunk):
        img = torch.from_numpy(np.asarray(crops[a : a + chunk], dtype=np.float32))
        msk = torch.from_numpy(np.asarray(masks[a : a + chunk]).astype(np.float32))
        img, msk = rescale_tensors(
            img, msk, from_um_per_px=from_um_per_px, to_um_per_px=to_um_per_px, size_px=size_px
        )
        out_c[a : a + chunk] = img.numpy().astype(dtype)
        out_m[a : a + chunk] = msk.numpy().astype(np.uint8)
    return out_c, out_m


def to_inputs(
    crops: np.ndarray,
    masks: np.ndarray,
    index: Sequence[int],
    *,
    use_masks: bool,
) -> torch.Tensor:
    """Model input (N, C', S, S) float32: the selected image channels, then masks."""
    img = torch.from_numpy(np.ascontiguousarray(np.asarray(crops)[:, list(index)], np.float32))
    if not use_masks:
        return img
    msk = torch.from_numpy(np.asarray(masks).astype(np.float32))
    return torch.cat([img, msk], dim=1)


def augment(
    x: torch.Tensor,
    *,
    n_image: int,
    generator: torch.Generator,
    intensity: float = 0.2,
    noise: float = 0.02,
    zoom: float = 0.0,
    shift: float = 0.0,
) -> torch.Tensor:
    """Random dihedral transform (flips, 90° rotations), zoom/shift and intensity jitter.

    Every crop gets one of the 8 symmetries of the square; with ``zoom``/``shift``
    > 0 also a random scale in [1 - zoom, 1 + zoom] and a shift of up to
    ``shift`` × crop size (bilinear resampling, zero outside; masks are
    re-thresholded at 0.5). Image channels (the first ``n_image``) get a random
    gain and gamma (log-normal, σ=``intensity``) and Gaussian noise of
    σ=``noise``·U(0, 1). Masks are only moved, never jittered. Deterministic for
    a given ``generator`` state. Returns a new tensor.
    """
    n = x.shape[0]
    ops = torch.randint(0, 8, (n,), generator=generator)
    out = torch.empty_like(x)
    for op in range(8):
        sel = (ops == op).nonzero().flatten()
        if sel.numel() == 0:
            continue
        y = x[sel]
        if op & 4:
            y = y.flip(-1)
        out[sel] = torch.rot90(y, op & 3, dims=(-2, -1))
    if zoom > 0 or shift > 0:
        scale = 1.0 + zoom * (2 * torch.rand(n, generator=generator) - 1)
        move = shift * 2 * (2 * torch.rand(n, 2, generator=generator) - 1)  # grid units: 2 = size
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = 1.0 / scale
        theta[:, 1, 1] = 1.0 / scale
        theta[:, :, 2] = move
        grid = F.affine_grid(theta, list(out.shape), align_corners=False)
        out = F.grid_sample(out, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if out.shape[1] > n_image:
            out[:, n_image:] = (out[:, n_image:] >= 0.5).to(out.dtype)
    if intensity > 0 or noise > 0:
        img = out[:, :n_image]
        shape = (n, n_image, 1, 1)
        gain = torch.exp(intensity * torch.randn(shape, generator=generator))
        gamma = torch.exp(0.5 * intensity * torch.randn(shape, generator=generator))
        sigma = noise * torch.rand(shape, generator=generator)
        img = img.clamp_min(0).pow(gamma) * gain
        img = img + sigma * torch.randn(img.shape, generator=generator)
        out = torch.cat([img.clamp_min(0), out[:, n_image:]], dim=1)
    return out
