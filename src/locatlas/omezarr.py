"""OME-Zarr (NGFF 0.5, zarr v3) storage of fields: HCS plate layout, images, labels.

Layout (one plate per store)::

    <zarr_root>/<plate>.ome.zarr/            plate group  (``plate`` metadata, written last)
        <row>/<col>/                         well group   (``well`` metadata, written last)
            <field>/                         the raw field image, axes (t, c, z, y, x)
                s0, s1, ...                  pyramid levels (read the paths from the metadata)
                cleared/                     nested image, same axes (the clearing stage)
                labels/nuclei, labels/cells  NGFF labels, axes (t, c, z, y, x) with c = 1

``row`` is the well's row letter(s), ``col`` its column number without zero padding and
``field`` ``str(int(field))``, as in the NGFF examples. Every time point of a field of
view lives in one image: the ``t`` index is the manifest's ``timepoint``.

Concurrency: a field group (and everything under it) is written by exactly one job at a
time. Parent groups (plate, row, well) are created implicitly and idempotently by zarr
with an exclusive "create if absent" (never a read-modify-write), so shards of the same
plate can run concurrently (on object stores, which have no exclusive create, the
check-then-put can race, but every writer puts the same empty group document). The
plate and well metadata are written afterwards, by one job per plate, with
:func:`write_plate_metadata`; a later shard rerun never rewrites them.

Labels keep the image's 5 axes with a channel axis of length 1 (NGFF: a label dimension
equals the image's or is 1), so viewers overlay them without axis guessing; the z axis
has the image's length or 1 (labels of a z-projection). ome-zarr-models validates both.

Paths are strings: local paths or fsspec URLs (``s3://bucket/atlas/zarr``), opened with
zarr's ``LocalStore`` or ``FsspecStore``.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import zarr
import zarr.storage
from zarr.codecs import BloscCodec

from . import __version__
from .ids import parse_well, safe_name

__all__ = [
    "FieldImageWriter",
    "delete_image",
    "field_path",
    "open_field_array",
    "open_field_meta",
    "read_field_image",
    "read_labels",
    "write_field_image",
    "write_labels",
    "write_plate_metadata",
]

NGFF_VERSION = "0.5"
AXES = ("t", "c", "z", "y", "x")
#: Stage reads are one (y, x) plane of one channel at a time, so a chunk never spans
#: t or c, nor z unless planes are small (see ``_chunks``). 1024² chunks read ~5x
#: faster than 256² (≈1 ms overhead per chunk) while a 2048² plane is still split 4
#: ways for parallel decode (STACK.md).
CHUNK_YX = 1024
#: Pyramid levels halve y and x until the largest side is <= this (z is kept).
PYRAMID_MAX_PX = 512
#: zstd level 1 + bitshuffle: ≈500 MB/s encode, 1.2 GB/s decode per core and ~2-3x
#: smaller than raw on microscope uint16 (STACK.md); higher levels cost far more time
#: than they save space. 1 MiB blosc blocks (blosc picks ~32-64 KiB at level 1):
#: on a 4 x 2048² field 35 % less CPU to write and to read, and 2-3 % smaller.
COMPRESSOR = {"cname": "zstd", "clevel": 1, "shuffle": "bitshuffle", "blocksize": 1 << 20}
#: Display colours per role (HPA convention).
ROLE_COLORS = {"nucleus": "0000FF", "microtubules": "FF0000", "er": "FFFF00", "protein": "00FF00"}
_RESERVED = ("pixel_size_um", "z_step_um", "time_step", "channel_roles")
_LOCK = threading.Lock()
log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- paths


def field_path(zarr_root: str, plate: str, well: str, field: int) -> str:
    """Path (or URL) of a field's image group.

    ``field_path("results/zarr", "P1", "B05", 1)`` -> ``"results/zarr/P1.ome.zarr/B/5/1"``.
    The plate name passes through :func:`locatlas.ids.safe_name`.
    """
    row, col = parse_well(well)
    return f"{str(zarr_root).rstrip('/')}/{safe_name(plate)}.ome.zarr/{row}/{col}/{int(field)}"


def _split(path: str) -> tuple[str, str]:
    """Split a path into (store root, path inside the store).

    The store root is the last component ending in ``.zarr``; without one the whole
    path is the store (a standalone image).
    """
    path = str(path).rstrip("/")
    scheme = ""
    if "://" in path:
        scheme, path = path.split("://", 1)
        scheme += "://"
    parts = path.split("/")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].endswith(".zarr"):
            return scheme + "/".join(parts[: i + 1]), "/".join(parts[i + 1 :])
    return scheme + path, ""


def _store(root: str, *, read_only: bool = False) -> zarr.abc.store.Store:
    if "://" in root and not root.startswith("file://"):
        return zarr.storage.FsspecStore.from_url(root, read_only=read_only)
    root = root.removeprefix("file://")
    return zarr.storage.LocalStore(root, read_only=read_only)


def _join(*parts: str) -> str:
    """Join path parts with '/', keeping a leading '/' of the first one."""
    parts = [p for p in parts if p]
    return "/".join([parts[0].rstrip("/")] + [p.strip("/") for p in parts[1:]]) if parts else ""


def _open_group(path: str, *, mode: str = "r") -> zarr.Group:
    root, inner = _split(path)
    try:
        return zarr.open_group(_store(root, read_only=mode == "r"), path=inner, mode=mode)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as err:
        raise FileNotFoundError(f"{path}: no zarr group there") from err


# ----------------------------------------------------------------------------- helpers


def _jsonable(value: Any) -> Any:
    """Plain-JSON copy of ``value`` (numpy scalars/arrays, NaN -> None, tuples -> lists)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value


def _n_levels(y: int, x: int) -> int:
    n = 1
    while max(y, x) > PYRAMID_MAX_PX:
        y, x = -(-y // 2), -(-x // 2)
        n += 1
    return n


def _level_shapes(shape: tuple[int, ...], n_levels: int) -> list[tuple[int, ...]]:
    shapes = [tuple(shape)]
    for _ in range(n_levels - 1):
        *lead, y, x = shapes[-1]
        shapes.append((*lead, -(-y // 2), -(-x // 2)))
    return shapes


def downsample_mean2(image: np.ndarray) -> np.ndarray:
    """Halve the last two axes by 2x2 mean (edge-padded when odd), same dtype.

    Integer images are averaged exactly in integer arithmetic with round-half-up, so
    the result is deterministic and identical on every machine.
    """
    y, x = image.shape[-2:]
    if y % 2 or x % 2:
        pad = [(0, 0)] * (image.ndim - 2) + [(0, y % 2), (0, x % 2)]
        image = np.pad(image, pad, mode="edge")
    if np.issubdtype(image.dtype, np.integer):
        out = np.empty((*image.shape[:-2], image.shape[-2] // 2, image.shape[-1] // 2), image.dtype)
        # A few rows at a time: the wide sums stay in the CPU cache (1.5x faster).
        rows = max(1, 2**16 // max(1, out[..., 0, :].size))
        for y0 in range(0, out.shape[-2], rows):
            out[..., y0 : y0 + rows, :] = _mean2_int(image[..., 2 * y0 : 2 * (y0 + rows), :])
        return out
    out = (
        image[..., 0::2, 0::2].astype(np.float64)
        + image[..., 1::2, 0::2]
        + image[..., 0::2, 1::2]
        + image[..., 1::2, 1::2]
    ) / 4
    return out.astype(image.dtype)


def _mean2_int(image: np.ndarray) -> np.ndarray:
    """2x2 mean of an even-sized integer image, rounded half up, same dtype."""
    # 4 values of up to 16 bits fit in uint32 (twice as fast as int64)
    wide = np.uint32 if image.dtype.itemsize <= 2 and image.dtype.kind == "u" else np.int64
    acc = image[..., 0::2, 0::2].astype(wide)
    acc += image[..., 1::2, 0::2]
    acc += image[..., 0::2, 1::2]
    acc += image[..., 1::2, 1::2]
    acc += 2
    acc //= 4
    return acc.astype(image.dtype)


def downsample_nearest2(labels: np.ndarray) -> np.ndarray:
    """Halve the last two axes by taking every second pixel (labels stay labels)."""
    return np.ascontiguousarray(labels[..., ::2, ::2])


def _chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """(1, 1, z', y', x'): one plane of one channel (at most 1024²); planes smaller than
    that are grouped along z up to 1024² pixels, so an xz scan or a stack of tiny
    planes is not split into thousands of ~1 ms chunk operations."""
    t, c, z, y, x = shape
    cy, cx = min(CHUNK_YX, y), min(CHUNK_YX, x)
    cz = max(1, min(z, CHUNK_YX * CHUNK_YX // (cy * cx)))
    return (1, 1, cz, cy, cx)


def _create_array(store, name: str, shape, dtype) -> zarr.Array:
    return zarr.create_array(
        store,
        name=name,
        shape=shape,
        chunks=_chunks(shape),
        dtype=dtype,
        compressors=BloscCodec(**COMPRESSOR),
        fill_value=0,
        dimension_names=list(AXES),
        zarr_format=3,
        overwrite=True,
        # Fields are dense: testing every chunk for all-zero before writing it (to
        # skip it) is a full extra pass over the pixels that never pays off.
        config={"write_empty_chunks": True},
    )


def _axes(time_step: float | None) -> list[dict]:
    t = {"name": "t", "type": "time"}
    if time_step is not None:
        t["unit"] = "second"
    return [
        t,
        {"name": "c", "type": "channel"},
        {"name": "z", "type": "space", "unit": "micrometer"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]


def _datasets(n_levels: int, *, pixel_size_um: float, z_step_um, time_step) -> list[dict]:
    t = float(time_step) if time_step is not None else 1.0
    z = float(z_step_um) if z_step_um is not None else 1.0
    out = []
    for level in range(n_levels):
        f = float(2**level)
        out.append(
            {
                "path": f"s{level}",
                "coordinateTransformations": [
                    {"type": "scale", "scale": [t, 1.0, z, pixel_size_um * f, pixel_size_um * f]}
                ],
            }
        )
    return out


def _provenance() -> dict:
    from .provenance import provenance

    return provenance()


# ----------------------------------------------------------------------------- images


class FieldImageWriter:
    """Write a field image time point by time point (bounded memory).

    The group (and anything under it: cleared image, labels) is replaced: it is
    deleted, the pyramid arrays are created, each :meth:`write_timepoint` writes one
    time point of every level, and :meth:`close` writes the NGFF metadata last. A job
    killed halfway leaves a group without ``multiscales`` that no reader accepts and
    that the rerun replaces. Time points never written read as zeros.

    Parameters
    ----------
    path : str
        Field group path (see :func:`field_path`); with ``name`` the nested image
        ``<path>/<name>`` is written instead and the field group is left alone.
    shape : tuple of int
        (t, c, z, y, x) of the full-resolution image.
    dtype : numpy dtype
    pixel_size_um, z_step_um, time_step, channel_roles, attrs
        As in :func:`write_field_image`.

    Examples
    --------
    >>> with FieldImageWriter(path, shape=(2, 1, 1, 64, 64), dtype="uint16",
    ...                       pixel_size_um=0.1, z_step_um=None, channel_roles=["nucleus"]) as w:
    ...     w.write_timepoint(0, plane0)     # (c, z, y, x)
    ...     w.write_timepoint(1, plane1)
    """

    def __init__(
        self,
        path: str,
        *,
        shape: Sequence[int],
        dtype: Any,
        name: str | None = None,
        pixel_size_um: float,
        z_step_um: float | None,
        channel_roles: Sequence[str],
        time_step: float | None = None,
        attrs: dict | None = None,
    ) -> None:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 5 or min(shape) < 1:
            raise ValueError(f"{path}: image shape must be (t, c, z, y, x) >= 1, got {shape}")
        roles = [str(r) for r in channel_roles]
        if len(roles) != shape[1]:
            raise ValueError(f"{path}: {len(roles)} channel roles {roles} for {shape[1]} channels")
        if not pixel_size_um or not math.isfinite(float(pixel_size_um)) or pixel_size_um <= 0:
            raise ValueError(f"{path}: pixel_size_um must be > 0, got {pixel_size_um!r}")
        if z_step_um is not None and not float(z_step_um) > 0:
            raise ValueError(f"{path}: z_step_um must be > 0 or None, got {z_step_um!r}")
        for key in _RESERVED:
            if attrs and key in attrs:
                raise ValueError(f"{path}: attrs key {key!r} is reserved")
        self.path = str(path).rstrip("/")
        self.name = name
        self.dtype = np.dtype(dtype)
        self.shape = shape
        self.pixel_size_um = float(pixel_size_um)
        self.z_step_um = None if z_step_um is None else float(z_step_um)
        if time_step is None and name is not None:
            time_step = _parent_time_step(self.path)
        self.time_step = None if time_step is None else float(time_step)
        self.channel_roles = roles
        self.attrs = dict(attrs or {})
        self.n_levels = _n_levels(shape[3], shape[4])
        self._shapes = _level_shapes(shape, self.n_levels)
        root, inner = _split(self.path)
        self._inner = _join(inner, name or "")
        self._store = _store(root)
        # Replace the whole group: a rerun must not leave chunks or children of the
        # previous attempt behind.
        self._group = zarr.create_group(
            self._store, path=self._inner, overwrite=True, zarr_format=3
        )
        self._arrays = [
            _create_array(self._store, _join(self._inner, f"s{i}"), s, self.dtype)
            for i, s in enumerate(self._shapes)
        ]
        c = shape[1]
        self._lo = np.full(c, np.inf)
        self._hi = np.full(c, -np.inf)
        self._closed = False

    def write_timepoint(self, t: int, data: np.ndarray) -> None:
        """Write time point ``t`` (all pyramid levels) from a (c, z, y, x) array."""
        data = np.asarray(data)
        if data.shape != self.shape[1:]:
            raise ValueError(
                f"{self.path}: time point {t} has shape {data.shape}, expected {self.shape[1:]}"
            )
        if not 0 <= int(t) < self.shape[0]:
            raise ValueError(f"{self.path}: time point {t} outside 0..{self.shape[0] - 1}")
        data = data.astype(self.dtype, copy=False)
        level = data
        for i, arr in enumerate(self._arrays):
            if i:
                level = downsample_mean2(level)
            arr[int(t)] = level
        # Display window from the smallest level: cheap and insensitive to hot pixels.
        step = max(1, max(level.shape[-2:]) // 256)
        flat = level[..., ::step, ::step].reshape(level.shape[0], -1).astype(np.float32)
        lo, hi = np.percentile(flat, [0.1, 99.9], axis=1)
        self._lo = np.minimum(self._lo, lo)
        self._hi = np.maximum(self._hi, hi)

    def _omero(self) -> dict:
        if np.issubdtype(self.dtype, np.integer):
            info = np.iinfo(self.dtype)
            vmin, vmax = float(info.min), float(info.max)
        else:
            vmin = float(np.nanmin(self._lo)) if np.isfinite(self._lo).any() else 0.0
            vmax = float(np.nanmax(self._hi)) if np.isfinite(self._hi).any() else 1.0
        channels = []
        for c, role in enumerate(self.channel_roles):
            lo = float(self._lo[c]) if np.isfinite(self._lo[c]) else vmin
            hi = float(self._hi[c]) if np.isfinite(self._hi[c]) else vmax
            hi = max(hi, lo + 1.0)
            channels.append(
                {
                    "label": role,
                    "color": ROLE_COLORS.get(role, "FFFFFF"),
                    "active": True,
                    "coefficient": 1.0,
                    "family": "linear",
                    "inverted": False,
                    "window": {"min": vmin, "max": vmax, "start": lo, "end": hi},
                }
            )
        return {
            "channels": channels,
            "rdefs": {"model": "color", "defaultT": 0, "defaultZ": self.shape[2] // 2},
        }

    def close(self) -> None:
        """Write the NGFF metadata (multiscales, omero) and locatlas attributes."""
        if self._closed:
            return
        multiscale = {
            "name": self.name or self.path.rsplit("/", 1)[-1],
            "axes": _axes(self.time_step),
            "datasets": _datasets(
                self.n_levels,
                pixel_size_um=self.pixel_size_um,
                z_step_um=self.z_step_um,
                time_step=self.time_step,
            ),
            "type": "local_mean",
            "metadata": {"method": "locatlas.omezarr.downsample_mean2", "factor": 2},
        }
        locatlas = {
            **_jsonable(self.attrs),
            "pixel_size_um": self.pixel_size_um,
            "z_step_um": self.z_step_um,
            "time_step": self.time_step,
            "channel_roles": list(self.channel_roles),
            "locatlas_version": __version__,
        }
        locatlas.setdefault("provenance", _provenance())
        self._group.update_attributes(
            {
                "ome": {
                    "version": NGFF_VERSION,
                    "multiscales": [multiscale],
                    "omero": self._omero(),
                },
                "locatlas": locatlas,
            }
        )
        self._closed = True

    def __enter__(self) -> FieldImageWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


def _parent_time_step(path: str) -> float | None:
    try:
        return _image_attrs(_open_group(path)).get("time_step")
    except (FileNotFoundError, KeyError, ValueError):
        return None


def write_field_image(
    path: str,
    data: np.ndarray,
    *,
    name: str | None = None,
    pixel_size_um: float,
    z_step_um: float | None,
    channel_roles: Sequence[str],
    time_step: float | None = None,
    attrs: dict | None = None,
) -> None:
    """Write a field image (t, c, z, y, x) with its pyramid and NGFF metadata.

    Parameters
    ----------
    path : str
        Field group path or URL (see :func:`field_path`).
    data : ndarray
        (t, c, z, y, x); stored in its own dtype (uint16 for raw and cleared images).
    name : str, optional
        None writes the field's own image and replaces the whole field group (cleared
        image and labels included: they derive from it). ``"cleared"`` writes the
        nested image ``<path>/cleared`` and leaves the rest alone.
    pixel_size_um : float
        y/x pixel size of ``data`` in µm.
    z_step_um : float or None
        z step in µm; None when unknown or for a single plane (stored as scale 1).
    channel_roles : sequence of str
        One role per channel, stored as the ``omero`` channel labels.
    time_step : float, optional
        Seconds between time points; None: time in frames. A nested image without
        one inherits the field image's.
    attrs : dict, optional
        Provenance and other JSON-able attributes, stored under ``locatlas``.

    Rewriting replaces the previous image; the same inputs give byte-identical files.
    """
    data = np.asarray(data)
    if data.ndim != 5:
        raise ValueError(f"{path}: image must be (t, c, z, y, x), got shape {data.shape}")
    with FieldImageWriter(
        path,
        shape=data.shape,
        dtype=data.dtype,
        name=name,
        pixel_size_um=pixel_size_um,
        z_step_um=z_step_um,
        channel_roles=channel_roles,
        time_step=time_step,
        attrs=attrs,
    ) as writer:
        for t in range(data.shape[0]):
            writer.write_timepoint(t, data[t])


def delete_image(path: str, *, name: str | None = None) -> bool:
    """Delete a field group (or its nested image ``name``) if present; True if it was."""
    root, inner = _split(path)
    inner = _join(inner, name or "")
    store = _store(root)
    try:
        zarr.open_group(store, path=inner, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        return False
    from zarr.core.sync import sync

    sync(store.delete_dir(inner))
    return True


def _image_attrs(group: zarr.Group) -> dict:
    return dict(group.attrs.asdict().get("locatlas", {}))


def _multiscale(group: zarr.Group, path: str) -> dict:
    ome = group.attrs.asdict().get("ome", {})
    if not ome.get("multiscales"):
        raise ValueError(f"{path}: not an OME-Zarr image (no multiscales; unfinished write?)")
    return ome["multiscales"][0]


def open_field_meta(path: str, *, name: str | None = None, level: int = 0) -> dict:
    """Metadata of a field image without reading pixels.

    Returns
    -------
    dict
        ``pixel_size_um`` (y/x, at ``level``), ``z_step_um`` (None if unknown),
        ``time_step`` (s, None: frames), ``channel_roles``, ``shape`` (t, c, z, y, x at
        ``level``), ``dtype``, ``chunks``, ``level``, ``n_levels``, ``dataset_paths``,
        ``path`` (the image group) and ``attrs`` (the ``locatlas`` attributes).
    """
    full = _join(str(path), name or "") if name else str(path).rstrip("/")
    group = _open_group(full)
    ms = _multiscale(group, full)
    datasets = ms["datasets"]
    if not 0 <= level < len(datasets):
        raise ValueError(f"{full}: level {level} not in 0..{len(datasets) - 1}")
    attrs = _image_attrs(group)
    scale = next(
        t["scale"] for t in datasets[level]["coordinateTransformations"] if t["type"] == "scale"
    )
    names = [a["name"] for a in ms["axes"]]
    arr = group[datasets[level]["path"]]
    roles = attrs.get("channel_roles")
    if roles is None:
        omero = group.attrs.asdict().get("ome", {}).get("omero", {})
        roles = [ch.get("label", "") for ch in omero.get("channels", [])]
    z_step = attrs.get("z_step_um", scale[names.index("z")] if "z" in names else None)
    return {
        "path": full,
        "pixel_size_um": float(scale[names.index("x")]),
        "z_step_um": None if z_step is None else float(z_step),
        "time_step": attrs.get("time_step"),
        "channel_roles": list(roles),
        "shape": tuple(int(s) for s in arr.shape),
        "dtype": str(arr.dtype),
        "chunks": tuple(int(c) for c in arr.chunks),
        "level": int(level),
        "n_levels": len(datasets),
        "dataset_paths": [d["path"] for d in datasets],
        "attrs": attrs,
    }


def open_field_array(path: str, *, name: str | None = None, level: int = 0) -> zarr.Array:
    """The zarr array of one pyramid level (t, c, z, y, x), for lazy plane reads."""
    meta = open_field_meta(path, name=name, level=level)
    return _open_group(meta["path"])[meta["dataset_paths"][level]]


def read_field_image(
    path: str, *, name: str | None = None, level: int = 0
) -> tuple[np.ndarray, dict]:
    """Read a whole field image.

    Returns
    -------
    image : ndarray
        (t, c, z, y, x) at pyramid ``level`` (0: full resolution).
    meta : dict
        As :func:`open_field_meta`.
    """
    meta = open_field_meta(path, name=name, level=level)
    arr = _open_group(meta["path"])[meta["dataset_paths"][level]]
    return np.asarray(arr[...]), meta


# ----------------------------------------------------------------------------- labels


def _as_label_dtype(labels: np.ndarray, path: str) -> np.ndarray:
    if labels.dtype == bool:
        return labels.astype(np.uint32)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: labels must be integers, got {labels.dtype}")
    if labels.dtype in (np.uint8, np.uint16, np.uint32):
        return labels
    if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.uint32).max):
        raise ValueError(f"{path}: label values must be in 0..2**32-1")
    return labels.astype(np.uint32)


def _label_shape(labels: np.ndarray, image_shape: tuple[int, ...], path: str, t: int | None):
    """Return ``labels`` as (t, 1, z, y, x) (t = 1 for one time point)."""
    want_t, _, want_z, want_y, want_x = image_shape
    if t is None:
        if labels.ndim == 4:
            labels = labels[:, None]
        if labels.ndim != 5 or labels.shape[1] != 1:
            raise ValueError(f"{path}: labels must be (t, z, y, x), got {labels.shape}")
        if labels.shape[0] != want_t:
            raise ValueError(f"{path}: labels have {labels.shape[0]} time points, image {want_t}")
    else:
        if not 0 <= t < want_t:
            raise ValueError(f"{path}: time point {t} outside 0..{want_t - 1}")
        if labels.ndim == 2:
            labels = labels[None]
        if labels.ndim == 4 and labels.shape[0] == 1:
            labels = labels[0]
        if labels.ndim != 3:
            raise ValueError(f"{path}: labels of one time point must be (z, y, x) or (y, x)")
        labels = labels[None, None]
    z, y, x = labels.shape[-3:]
    if (y, x) != (want_y, want_x) or z not in (1, want_z):
        raise ValueError(
            f"{path}: labels (z, y, x) = {(z, y, x)} do not fit the image "
            f"{(want_z, want_y, want_x)} (z may be 1)"
        )
    return labels


def _create_label_image(
    field: str, label_name: str, shape: tuple[int, ...], dtype, meta: dict, attrs: dict | None
) -> list[zarr.Array]:
    root, inner = _split(field)
    store = _store(root)
    group_path = _join(inner, "labels", label_name)
    group = zarr.create_group(store, path=group_path, overwrite=True, zarr_format=3)
    shapes = _level_shapes(shape, meta["n_levels"])
    arrays = [
        _create_array(store, _join(group_path, f"s{i}"), s, dtype) for i, s in enumerate(shapes)
    ]
    multiscale = {
        "name": label_name,
        "axes": _axes(meta["time_step"]),
        "datasets": _datasets(
            meta["n_levels"],
            pixel_size_um=meta["pixel_size_um"],
            z_step_um=meta["z_step_um"],
            time_step=meta["time_step"],
        ),
        "type": "nearest",
        "metadata": {"method": "locatlas.omezarr.downsample_nearest2", "factor": 2},
    }
    group.update_attributes(
        {
            "ome": {
                "version": NGFF_VERSION,
                "multiscales": [multiscale],
                "image-label": {"version": NGFF_VERSION, "source": {"image": "../../"}},
            },
            "locatlas": {**_jsonable(attrs or {}), "locatlas_version": __version__},
        }
    )
    # The labels group lists its label images; one job writes a field's labels, the
    # lock covers threads of that job writing nuclei and cells at once.
    labels_group = zarr.open_group(store, path=_join(inner, "labels"), mode="a", zarr_format=3)
    ome = labels_group.attrs.asdict().get("ome", {})
    names = sorted(set(ome.get("labels", [])) | {label_name})
    labels_group.update_attributes({"ome": {"version": NGFF_VERSION, "labels": names}})
    return arrays


def write_labels(
    path: str,
    label_name: str,
    labels: np.ndarray,
    *,
    timepoint: int | None = None,
    attrs: dict | None = None,
) -> None:
    """Write NGFF labels of a field image at ``<path>/labels/<label_name>``.

    Parameters
    ----------
    path : str
        Field group path (the raw image must exist: shape and scale come from it).
    label_name : str
        e.g. ``"nuclei"``, ``"cells"``.
    labels : ndarray of int
        ``timepoint=None``: all time points, (t, z, y, x) or (t, 1, z, y, x); the label
        image is replaced. With ``timepoint``: one time point, (z, y, x) or (y, x),
        written into the existing label image (created, all zeros, if absent) so time
        points can be written by separate calls. z is the image's or 1 (projection).
        Stored as (t, 1, z, y, x), uint32 unless given as uint8/uint16/uint32.
    attrs : dict, optional
        Stored under ``locatlas`` when the label image is created.
    """
    label_name = safe_name(label_name)
    labels = _as_label_dtype(np.asarray(labels), path)
    meta = open_field_meta(path)
    labels = _label_shape(labels, meta["shape"], path, timepoint)
    shape = (meta["shape"][0], 1, labels.shape[2], *meta["shape"][3:])
    with _LOCK:
        arrays = None
        if timepoint is not None:
            try:
                lmeta = open_field_meta(_join(path, "labels", label_name))
                if lmeta["shape"] == shape and lmeta["n_levels"] == meta["n_levels"]:
                    group = _open_group(lmeta["path"], mode="r+")
                    arrays = [group[p] for p in lmeta["dataset_paths"]]
                    if arrays[0].dtype != labels.dtype:
                        labels = labels.astype(arrays[0].dtype)
            except (FileNotFoundError, ValueError):
                arrays = None
        if arrays is None:
            arrays = _create_label_image(path, label_name, shape, labels.dtype, meta, attrs)
    t_index = slice(None) if timepoint is None else slice(timepoint, timepoint + 1)
    level = labels
    for i, arr in enumerate(arrays):
        if i:
            level = downsample_nearest2(level)
        arr[t_index] = level


def read_labels(
    path: str, label_name: str, *, level: int = 0, timepoint: int | None = None
) -> np.ndarray:
    """Read labels written by :func:`write_labels` as (t, z, y, x) (or (z, y, x))."""
    arr = open_field_array(_join(path, "labels", safe_name(label_name)), level=level)
    data = np.asarray(arr[...] if timepoint is None else arr[int(timepoint)])
    return data[:, 0] if timepoint is None else data[0]


# ----------------------------------------------------------------------------- plate


def _row_key(row: str) -> tuple[int, str]:
    return (len(row), row)


def _has_image(path: str) -> bool:
    try:
        group = _open_group(path)
    except FileNotFoundError:
        return False
    return bool(group.attrs.asdict().get("ome", {}).get("multiscales"))


def write_plate_metadata(
    zarr_root: str, plate: str, manifest: pd.DataFrame, *, check_exists: bool = True
) -> None:
    """Write the HCS ``plate`` and ``well`` metadata of one plate from its manifest.

    Run once per plate after all its shards are written (one writer; it replaces the
    plate's and wells' ``ome`` attributes). Rows of other plates are ignored.

    Parameters
    ----------
    zarr_root : str
        Folder (or URL) holding ``<plate>.ome.zarr``.
    plate : str
    manifest : DataFrame
        Needs ``plate``, ``well`` and ``field`` columns (one row per field × time point
        is fine).
    check_exists : bool
        List only fields whose image was written (quarantined fields are left out,
        so the plate stays valid NGFF). A plate without any is skipped with a warning.
    """
    rows = manifest[manifest["plate"].astype(str) == str(plate)]
    if rows.empty:
        raise ValueError(f"write_plate_metadata: no manifest row for plate {plate!r}")
    wells: dict[tuple[str, int], set[int]] = {}
    for well, field in rows[["well", "field"]].drop_duplicates().itertuples(index=False):
        r, c = parse_well(well)
        if check_exists and not _has_image(field_path(zarr_root, plate, well, int(field))):
            continue
        wells.setdefault((r, c), set()).add(int(field))
    if not wells:
        # Every field of the plate was quarantined: there is no plate to describe.
        log.warning("write_plate_metadata: no written field image for plate %r", plate)
        return
    row_names = sorted({r for r, _ in wells}, key=_row_key)
    col_names = sorted({c for _, c in wells})
    plate_path = f"{str(zarr_root).rstrip('/')}/{safe_name(plate)}.ome.zarr"
    root_group = zarr.open_group(_store(plate_path), mode="a", zarr_format=3)
    well_list = []
    for r, c in sorted(wells, key=lambda rc: (_row_key(rc[0]), rc[1])):
        well_list.append(
            {"path": f"{r}/{c}", "rowIndex": row_names.index(r), "columnIndex": col_names.index(c)}
        )
        well_group = zarr.open_group(_store(plate_path), path=f"{r}/{c}", mode="a", zarr_format=3)
        images = [{"path": str(f)} for f in sorted(wells[(r, c)])]
        well_group.update_attributes({"ome": {"version": NGFF_VERSION, "well": {"images": images}}})
    root_group.update_attributes(
        {
            "ome": {
                "version": NGFF_VERSION,
                "plate": {
                    "name": str(plate),
                    # ome-zarr-py writes it too (ome-zarr-models issue 218)
                    "version": NGFF_VERSION,
                    "rows": [{"name": r} for r in row_names],
                    "columns": [{"name": str(c)} for c in col_names],
                    "wells": well_list,
                    "field_count": max(len(f) for f in wells.values()),
                },
            },
            "locatlas": {"locatlas_version": __version__},
        }
    )
