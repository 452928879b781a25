"""Vendor-format readers: probe metadata without reading pixels, read one field on demand.

Backends (heavy imports happen only inside these functions):

========  ====================================================================
format    reader
========  ====================================================================
czi       bioio-czi (aicspylibczi backend); mosaics are stitched by bioio
lif       bioio-lif (liffile); mosaics stitched by bioio from the tile positions;
          spectral (lambda) scans and xz/xzt line scans, which bioio-lif cannot
          read, through liffile directly (each wavelength becomes a channel; a line
          scan has Y = 1)
nd2       bioio-nd2
ome-tiff  bioio-ome-tiff
tiff      bioio-tifffile; the pixel size is taken only from ImageJ metadata in
          microns or a centimetre resolution unit (bioio-tifffile reports 1.0 or a
          dpi-derived value for plain TIFFs, which is not a physical size)
lsm       tifffile (first series; the thumbnail series is skipped)
dv        mrc
png/jpeg  imagecodecs; gray = 1 channel, RGB(A) = 3 channels red, green, blue
========  ====================================================================

Scenes/series are separate views. Time points are separate manifest rows (read one
at a time). Z is kept whole. Mosaic tiles: where the plugin reconstructs the mosaic
(CZI, LIF) the stitched plane is one field; where it exposes an ``M`` dimension it
cannot stitch, each tile becomes its own field (``tile`` index in the manifest).

Sources in object storage (URLs, :mod:`locatlas.remote`): PNG/JPEG planes are probed
from the bytes already read; every other format is handed to its reader as a local
copy (:func:`locatlas.remote.local_copy`), deleted after use. Errors name the URL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from locatlas import remote
from locatlas.ingest.errors import IngestError
from locatlas.ingest.planes import (
    TIFF_LOG,
    FileBytes,
    check_plane_size,
    probe_plane,
    tiff_data_end,
    tiff_log_error,
)
from locatlas.remote import UrlPath

_BIOIO_PLUGINS = {
    "czi": ("bioio_czi", "bioio-czi"),
    "lif": ("bioio_lif", "bioio-lif"),
    "nd2": ("bioio_nd2", "bioio-nd2"),
    "ome-tiff": ("bioio_ome_tiff", "bioio-ome-tiff"),
    "tiff": ("bioio_tifffile", "bioio-tifffile"),
}

#: Pixel sizes outside this range (µm) are treated as missing metadata.
PLAUSIBLE_PIXEL_UM = (1e-3, 1e3)


@dataclass(frozen=True)
class ChannelInfo:
    """A source channel: its name, metadata hints (dye names) and wavelength (nm)."""

    name: str
    hints: tuple[str, ...] = ()
    wavelength_nm: float | None = None


@dataclass(frozen=True)
class SceneInfo:
    """Metadata of one scene/series of a file (sizes after mosaic stitching)."""

    index: int
    name: str
    size_t: int
    size_c: int
    size_z: int
    size_y: int
    size_x: int
    dtype: str
    channels: tuple[ChannelInfo, ...]
    pixel_size_um: float | None
    z_step_um: float | None
    n_tiles: int = 0  # > 0: unstitched mosaic, each tile is a field
    spectral: bool = False  # channels are wavelength bins, not stains
    reader: str = ""  # overrides the file's reader for this scene (e.g. "liffile")


@dataclass(frozen=True)
class FileInfo:
    path: Path | UrlPath
    format: str
    reader: str
    reader_version: str
    scenes: tuple[SceneInfo, ...] = field(default_factory=tuple)


@cache
def package_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def _plausible(um: float | None) -> float | None:
    if um is None:
        return None
    try:
        v = abs(float(um))
    except (TypeError, ValueError):
        return None
    if not math.isfinite(v) or not (PLAUSIBLE_PIXEL_UM[0] <= v <= PLAUSIBLE_PIXEL_UM[1]):
        return None
    return v


def _yx_pixel_size(y: float | None, x: float | None) -> float | None:
    y, x = _plausible(y), _plausible(x)
    if y is None or x is None:
        return x if x is not None else y
    # Square pixels expected; the mean is recorded when they differ.
    return x if abs(y - x) <= 1e-3 * x else (x + y) / 2


def _wrap(path: Path, what: str, exc: BaseException) -> IngestError:
    if isinstance(exc, IngestError):
        return exc
    msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    if isinstance(exc, MemoryError):
        return IngestError(
            path, f"{what}: out of memory (absurd sizes in the header?)", "too-large"
        )
    return IngestError(path, f"{what}: {type(exc).__name__}: {msg}", "corrupt")


# --------------------------------------------------------------------------- TIFF checks


def _tiff_container_check(path: Path, size: int, max_plane_pixels: int) -> dict:
    """Open a TIFF-family file with tifffile: size limit and truncation checks (from the
    page headers, before any decoding) and flavour flags."""
    import tifffile

    try:
        with TIFF_LOG.capture() as errors, tifffile.TiffFile(path) as tif:
            end = 0
            for page in tif.pages:
                check_plane_size(
                    path, int(page.imagelength), int(page.imagewidth), max_plane_pixels
                )
                end = max(end, tiff_data_end(page))
            flags = {"is_ome": bool(tif.is_ome), "is_lsm": bool(tif.is_lsm)}
            flags["pixel_size_um"], flags["z_step_um"] = _tiff_pixel_size(tif)
    except Exception as exc:
        raise _wrap(path, "not a readable TIFF", exc) from exc
    if errors:
        raise tiff_log_error(path, size, errors)
    if end > size:
        raise IngestError(
            path,
            f"TIFF is truncated: pixel data ends at byte {end:,} but the file has {size:,}",
            "truncated",
        )
    return flags


def _tiff_pixel_size(tif) -> tuple[float | None, float | None]:
    """Pixel size (µm) of a plain TIFF, only from trustworthy tags."""
    page = tif.pages.first
    xres = page.tags.get("XResolution")
    if xres is None:
        return None, None
    num, den = xres.value
    if not num:
        return None, None
    per_unit = den / num
    ij = tif.imagej_metadata or {}
    unit = str(ij.get("unit", "")).lower().replace("\\u00b5", "µ")
    z = _plausible(ij.get("spacing")) if ij else None
    if unit in ("micron", "microns", "um", "µm"):
        return _plausible(per_unit), z
    resunit = page.tags.get("ResolutionUnit")
    if resunit is not None and int(resunit.value) == 3:  # centimetre
        return _plausible(per_unit * 1e4), None
    return None, None


# --------------------------------------------------------------------------- CZI header


def _czi_header_check(fb: FileBytes) -> None:
    """A CZI's file header points at its subblock directory and metadata segments;
    both must lie inside the file (a truncated CZI loses them first)."""
    import struct

    head = fb.head
    if len(head) < 112:
        raise IngestError(fb.path, f"CZI file header is truncated ({fb.size} bytes)", "truncated")
    dir_pos, meta_pos = struct.unpack_from("<qq", head, 84)
    for what, pos in (("subblock directory", dir_pos), ("metadata", meta_pos)):
        if pos <= 0 or pos + 32 > fb.size:
            raise IngestError(
                fb.path,
                f"CZI is truncated or corrupt: its {what} segment at byte {pos:,} lies beyond "
                f"the end of the file ({fb.size:,} bytes)",
                "truncated",
            )
    with open(fb.path, "rb") as fh:
        fh.seek(dir_pos)
        seg = fh.read(32)
        used = struct.unpack_from("<q", seg, 24)[0] if len(seg) == 32 else -1
        if not seg.startswith(b"ZISRAWDIRECTORY") or used < 0 or dir_pos + 32 + used > fb.size:
            raise IngestError(
                fb.path,
                f"CZI is truncated or corrupt: the subblock directory at byte {dir_pos:,} is "
                f"incomplete (file has {fb.size:,} bytes)",
                "truncated",
            )
        # The last subblock (largest file position) must end inside the file.
        data = fh.read(used)
        n_entries = struct.unpack_from("<i", data, 0)[0]
        pos, last = 128, 0
        for _ in range(max(n_entries, 0)):
            if pos + 32 > len(data):
                break
            last = max(last, struct.unpack_from("<q", data, pos + 6)[0])
            pos += 32 + 20 * struct.unpack_from("<i", data, pos + 28)[0]
        if last:
            fh.seek(last)
            sub = fh.read(32)
            sub_used = struct.unpack_from("<q", sub, 24)[0] if len(sub) == 32 else -1
            if sub_used < 0 or last + 32 + sub_used > fb.size:
                raise IngestError(
                    fb.path,
                    f"CZI is truncated: its last image subblock at byte {last:,} runs past the "
                    f"end of the file ({fb.size:,} bytes)",
                    "truncated",
                )


# --------------------------------------------------------------------------- bioio


def _bioio_image(path: Path, fmt: str):
    import importlib

    from bioio import BioImage

    module, _ = _BIOIO_PLUGINS[fmt]
    reader = importlib.import_module(module).Reader
    return BioImage(path, reader=reader)


def _lif_dims(path: Path, size: int) -> list[tuple[str, ...]]:
    """Dimensions of each LIF image (liffile), after checking that every image's memory
    block lies inside the file (a truncated LIF loses its last blocks)."""
    import liffile

    with liffile.LifFile(path) as lif:
        for im in lif.images:
            mb = im.memory_block
            if mb is not None and mb.offset + mb.size > size:
                raise IngestError(
                    path,
                    f"LIF is truncated: image {im.name!r} data ends at byte "
                    f"{mb.offset + mb.size:,} but the file has {size:,}",
                    "truncated",
                )
        return [tuple(im.dims) for im in lif.images]


def _probe_bioio(path: Path, fmt: str, flags: dict) -> FileInfo:
    _, dist = _BIOIO_PLUGINS[fmt]
    img = _bioio_image(path, fmt)
    lif_dims = _lif_dims(path, flags["size"]) if fmt == "lif" else None
    scenes = []
    for i, name in enumerate(img.scenes):
        if lif_dims is not None and ({"λ", "Λ"} & set(lif_dims[i])):
            scenes.append(_probe_lif_spectral(path, i))
            continue
        # bioio-lif cannot read frames that are not Y, X (xz and xzt line scans)
        direct = lif_dims is not None and lif_dims[i][-2:] != ("Y", "X")
        img.set_scene(i)
        dims = img.dims
        order = dims.order
        size = {d: int(getattr(dims, d)) for d in order}
        n_c, n_s = size.get("C", 1), size.get("S", 1)
        names = [str(c) for c in (img.channel_names or [])] or [f"C{k}" for k in range(n_c)]
        if n_s > 1:
            if n_c > 1:
                raise IngestError(
                    path,
                    f"scene {i}: both C={n_c} and samples S={n_s} > 1 are not supported",
                    "shape-mismatch",
                )
            names = (
                ["red", "green", "blue", "alpha"][:n_s]
                if n_s in (3, 4)
                else [f"S{k}" for k in range(n_s)]
            )
            if n_s == 4:
                names = names[:3]
            n_c = len(names)
        pps = img.physical_pixel_sizes
        if fmt == "tiff":
            px, dz = flags.get("pixel_size_um"), flags.get("z_step_um")
        else:
            px, dz = _yx_pixel_size(pps.Y, pps.X), _plausible(pps.Z)
        extra = {d: n for d, n in size.items() if d not in "TCZYXSM" and n > 1}
        if extra:
            raise IngestError(
                path, f"scene {i}: unsupported dimensions {extra}", "unsupported-format"
            )
        scenes.append(
            SceneInfo(
                index=i,
                name=str(name),
                size_t=size.get("T", 1),
                size_c=n_c,
                size_z=size.get("Z", 1),
                size_y=size.get("Y", 1),
                size_x=size.get("X", 1),
                dtype=np.dtype(img.dtype).name,
                channels=tuple(ChannelInfo(n) for n in names[:n_c]),
                pixel_size_um=px,
                z_step_um=dz if size.get("Z", 1) > 1 else None,
                n_tiles=size.get("M", 1) if size.get("M", 1) > 1 else 0,
                reader="liffile" if direct else "",
            )
        )
    return FileInfo(path, fmt, dist, package_version(dist), tuple(scenes))


def _read_bioio(path: Path, fmt: str, *, scene: int, t_index: int, tile: int) -> np.ndarray:
    img = _bioio_image(path, fmt)
    if scene >= len(img.scenes):
        raise IngestError(
            path, f"scene {scene} not in file ({len(img.scenes)} scenes)", "bad-scene"
        )
    img.set_scene(scene)
    order = img.dims.order
    sel: dict[str, int] = {}
    if "T" in order:
        sel["T"] = t_index
    if "M" in order:
        sel["M"] = max(tile, 0)
    out = "CZYX" + ("S" if "S" in order else "")
    arr = np.asarray(img.get_image_dask_data(out, **sel).compute())
    if "S" in order:
        arr = np.moveaxis(arr[0], -1, 0)  # samples become channels
        if arr.shape[0] == 4:
            arr = arr[:3]
    return arr


# --------------------------------------------------------------------------- LIF spectral


def _step_um(coords: np.ndarray) -> float | None:
    """Spacing (µm) of a coordinate array in metres."""
    return float(coords[1] - coords[0]) * 1e6 if len(coords) > 1 else None


def _probe_lif_spectral(path: Path, index: int) -> SceneInfo:
    import liffile

    with liffile.LifFile(path) as lif:
        im = lif.images[index]
        sizes = dict(im.sizes)
        coords = im.coords
        names: list[ChannelInfo] = []
        n_c = sizes.get("C", 1)
        for c in range(n_c):
            for key, label in (("λ", "lambda-em"), ("Λ", "lambda-ex")):
                if key in sizes:
                    for nm in np.asarray(coords[key]) * 1e9:
                        prefix = f"C{c} " if n_c > 1 else ""
                        names.append(ChannelInfo(f"{prefix}{label} {nm:.0f} nm"))
        xs = np.asarray(coords.get("X", [0, 0]))
        ys = np.asarray(coords.get("Y", [0, 0]))
        zs = np.asarray(coords.get("Z", [0, 0]))
        return SceneInfo(
            index=index,
            name=str(im.name),
            size_t=sizes.get("T", 1),
            size_c=len(names),
            size_z=sizes.get("Z", 1),
            size_y=sizes.get("Y", 1),
            size_x=sizes.get("X", 1),
            dtype=np.dtype(im.dtype).name,
            channels=tuple(names),
            pixel_size_um=_yx_pixel_size(_step_um(ys), _step_um(xs)),
            z_step_um=_plausible(_step_um(zs)) if sizes.get("Z", 1) > 1 else None,
            spectral=True,
            reader="liffile",
        )


def _read_liffile(path: Path, *, scene: int, t_index: int) -> np.ndarray:
    """Read a LIF scene with liffile directly: spectral (λ/Λ become channels, after C)
    and line scans (a missing Y becomes size 1)."""
    import liffile

    with liffile.LifFile(path) as lif:
        if scene >= len(lif.images):
            raise IngestError(
                path, f"scene {scene} not in file ({len(lif.images)} scenes)", "bad-scene"
            )
        im = lif.images[scene]
        dims = list(im.dims)
        unknown = [d for d in dims if d not in ("T", "C", "λ", "Λ", "Z", "Y", "X")]
        if unknown:
            raise IngestError(
                path, f"scene {scene}: unsupported LIF dimensions {unknown}", "unsupported-format"
            )
        arr = np.asarray(im.asarray())
    for d in ("T", "C", "λ", "Λ", "Z", "Y", "X"):
        if d not in dims:
            arr = arr[..., None]
            dims.append(d)
    arr = np.transpose(arr, [dims.index(d) for d in ("T", "C", "λ", "Λ", "Z", "Y", "X")])
    arr = arr[t_index]
    return arr.reshape((-1, *arr.shape[-3:]))


# --------------------------------------------------------------------------- DeltaVision


def _probe_dv(path: Path) -> FileInfo:
    import mrc

    try:
        f = mrc.DVFile(path)
    except Exception as exc:
        if "mmap length" in str(exc) or "cannot mmap" in str(exc):
            raise IngestError(path, f"DV file is truncated ({exc})", "truncated") from exc
        raise _wrap(path, "not a readable DeltaVision file", exc) from exc
    try:
        sizes = dict(f.sizes)
        hdr = f.hdr
        waves = [int(getattr(hdr, f"wave{k}")) for k in range(1, 6)][: sizes.get("C", 1)]
        vs = f.voxel_size
        chans = tuple(
            ChannelInfo(f"{w} nm" if w else f"C{k}", wavelength_nm=float(w) if w else None)
            for k, w in enumerate(waves)
        )
        info = SceneInfo(
            index=0,
            name="0",
            size_t=sizes.get("T", 1),
            size_c=sizes.get("C", 1),
            size_z=sizes.get("Z", 1),
            size_y=sizes.get("Y", 1),
            size_x=sizes.get("X", 1),
            dtype=np.dtype(f.dtype).name,
            channels=chans,
            pixel_size_um=_yx_pixel_size(vs.y, vs.x),
            z_step_um=_plausible(vs.z) if sizes.get("Z", 1) > 1 else None,
        )
    finally:
        f.close()
    return FileInfo(path, "dv", "mrc", package_version("mrc"), (info,))


def _read_dv(path: Path, *, t_index: int) -> np.ndarray:
    import mrc

    f = mrc.DVFile(path)
    try:
        axes = list(f.axes)
        data = f.data
        arr = np.asarray(data[(slice(None),) * axes.index("T") + (t_index,)])
        axes.remove("T")
        arr = np.transpose(arr, [axes.index(d) for d in "CZYX"]).copy()
    finally:
        f.close()
    return arr


# --------------------------------------------------------------------------- LSM


def _lsm_channels(meta: dict, n_c: int) -> tuple[ChannelInfo, ...]:
    names = list((meta.get("ChannelColors") or {}).get("ColorNames") or [])
    waves = meta.get("ChannelWavelength")
    dyes: list[str] = []
    try:
        for track in meta["ScanInformation"]["Tracks"]:
            for det in track.get("DetectionChannels", []):
                if det.get("DyeName"):
                    dyes.append(str(det["DyeName"]))
    except (KeyError, TypeError):
        pass
    out = []
    for c in range(n_c):
        nm = None
        if waves is not None and len(waves) > c:
            lo, hi = (float(v) for v in np.asarray(waves[c]).ravel()[:2])
            nm = (lo + hi) / 2 * 1e9 if hi > 0 else None
        name = names[c] if c < len(names) else f"C{c}"
        out.append(ChannelInfo(name, (dyes[c],) if c < len(dyes) else (), nm))
    return tuple(out)


def _lsm_axes(series) -> tuple[str, tuple[int, ...]]:
    axes, shape = series.axes, tuple(int(s) for s in series.shape)
    for a, n in zip(axes, shape, strict=True):
        if a not in "TCZYX" and n > 1:
            raise IngestError(
                series.parent.filehandle.path,
                f"unsupported LSM axis {a!r} of size {n}",
                "unsupported-format",
            )
    return axes, shape


def _probe_lsm(path: Path) -> FileInfo:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.is_lsm:
            raise IngestError(path, "not an LSM file (no CZ_LSMINFO tag)", "extension-mismatch")
        series = tif.series[0]
        axes, shape = _lsm_axes(series)
        size = {a: n for a, n in zip(axes, shape, strict=True)}
        meta = tif.lsm_metadata or {}
        px = _yx_pixel_size(
            (meta.get("VoxelSizeY") or 0) * 1e6 or None, (meta.get("VoxelSizeX") or 0) * 1e6 or None
        )
        dz = _plausible((meta.get("VoxelSizeZ") or 0) * 1e6) if size.get("Z", 1) > 1 else None
        info = SceneInfo(
            index=0,
            name="0",
            size_t=size.get("T", 1),
            size_c=size.get("C", 1),
            size_z=size.get("Z", 1),
            size_y=size.get("Y", 1),
            size_x=size.get("X", 1),
            dtype=np.dtype(series.dtype).name,
            channels=_lsm_channels(meta, size.get("C", 1)),
            pixel_size_um=px,
            z_step_um=dz,
        )
    return FileInfo(path, "lsm", "tifffile", package_version("tifffile"), (info,))


def _read_lsm(path: Path, *, t_index: int) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes, _ = _lsm_axes(series)
        arr = series.asarray()
    axes = list(axes)
    for a in "TCZYX":
        if a not in axes:
            arr = arr[..., None]
            axes.append(a)
    arr = np.transpose(arr, [axes.index(a) for a in "TCZYX"])
    return np.ascontiguousarray(arr[t_index])


# --------------------------------------------------------------------------- PNG / JPEG


def _probe_image(fb: FileBytes, fmt: str, max_plane_pixels: int) -> FileInfo:
    hdr = probe_plane(fb, fmt, max_plane_pixels=max_plane_pixels)
    if hdr.samples >= 3:
        names = ("red", "green", "blue")
    else:
        names = (fb.path.stem,)
    info = SceneInfo(
        0,
        "0",
        1,
        len(names),
        1,
        hdr.height,
        hdr.width,
        hdr.dtype,
        tuple(ChannelInfo(n) for n in names),
        None,
        None,
    )
    return FileInfo(fb.path, fmt, "imagecodecs", package_version("imagecodecs"), (info,))


def _read_image(path: Path, fmt: str) -> np.ndarray:
    import imagecodecs

    data = path.read_bytes()
    arr = imagecodecs.png_decode(data) if fmt == "png" else imagecodecs.jpeg8_decode(data)
    if arr.ndim == 2:
        return arr[None, None]
    if arr.shape[2] == 2:
        return arr[None, None, :, :, 0]
    return np.ascontiguousarray(np.moveaxis(arr[:, :, :3], -1, 0)[:, None])


# --------------------------------------------------------------------------- URLs


@contextlib.contextmanager
def fetched(url: UrlPath) -> Iterator[Path]:
    """A local copy of an object for a reader that needs a real file; errors raised in
    the block that name the copy are raised again naming the URL."""
    with contextlib.ExitStack() as stack:
        try:
            local = stack.enter_context(remote.local_copy(url))
        except Exception as exc:  # noqa: BLE001 - missing object, unreachable store
            raise IngestError(url, remote.describe_error(exc), "not-found") from None
        try:
            yield local
        except IngestError as exc:
            if exc.path != str(local):
                raise
            reason = exc.reason.replace(str(local), str(url))
            raise IngestError(url, reason, exc.error_type) from exc


# --------------------------------------------------------------------------- dispatch


def probe_file(fb: FileBytes, fmt: str, *, max_plane_pixels: int) -> FileInfo:
    """Metadata of every scene of a single-file source, without reading pixels.

    Parameters
    ----------
    fb
        Head/tail bytes of the file (:func:`locatlas.ingest.planes.read_file_bytes`).
    fmt
        Detected format (:func:`locatlas.ingest.detect.detect_format`).
    max_plane_pixels
        Refuse larger planes (checked by the caller for vendor formats, here for PNG/JPEG
        before anything else is read).

    Raises
    ------
    IngestError
        Unreadable, truncated or unsupported file.
    """
    path = fb.path
    if isinstance(path, UrlPath) and fmt not in ("png", "jpeg"):
        with fetched(path) as local:
            info = probe_file(
                dataclasses.replace(fb, path=local), fmt, max_plane_pixels=max_plane_pixels
            )
        return dataclasses.replace(info, path=path)
    try:
        if fmt in ("png", "jpeg"):
            return _probe_image(fb, fmt, max_plane_pixels)
        if fmt in ("tiff", "ome-tiff", "lsm"):
            flags = _tiff_container_check(path, fb.size, max_plane_pixels)
            if flags["is_lsm"]:
                return _probe_lsm(path)
            if fmt == "lsm":
                raise IngestError(path, "extension .lsm but not an LSM file", "extension-mismatch")
            fmt = "ome-tiff" if flags["is_ome"] else "tiff"
            return _probe_bioio(path, fmt, flags)
        if fmt == "dv":
            return _probe_dv(path)
        if fmt == "czi":
            _czi_header_check(fb)
        if fmt in _BIOIO_PLUGINS:
            return _probe_bioio(path, fmt, {"size": fb.size})
    except IngestError:
        raise
    except Exception as exc:
        raise _wrap(path, f"cannot read {fmt} metadata", exc) from exc
    raise IngestError(path, f"no reader for format {fmt!r}", "unsupported-format")


def read_file_field(
    path: str | os.PathLike | UrlPath,
    fmt: str,
    *,
    scene: int = 0,
    t_index: int = 0,
    tile: int = -1,
    direct_lif: bool = False,
) -> np.ndarray:
    """Pixels of one field of a single-file source as (C, Z, Y, X), native dtype.

    ``path`` may be a URL: the object is read through a temporary local copy.
    """
    path = remote.as_path(path)
    if isinstance(path, UrlPath):
        with fetched(path) as local:
            return read_file_field(
                local, fmt, scene=scene, t_index=t_index, tile=tile, direct_lif=direct_lif
            )
    try:
        if fmt in ("png", "jpeg"):
            return _read_image(path, fmt)
        if fmt == "dv":
            return _read_dv(path, t_index=t_index)
        if fmt == "lsm":
            return _read_lsm(path, t_index=t_index)
        if fmt == "lif" and direct_lif:
            return _read_liffile(path, scene=scene, t_index=t_index)
        if fmt in _BIOIO_PLUGINS:
            return _read_bioio(path, fmt, scene=scene, t_index=t_index, tile=tile)
    except IngestError:
        raise
    except Exception as exc:
        raise _wrap(path, f"cannot read {fmt} pixels", exc) from exc
    raise IngestError(path, f"no reader for format {fmt!r}", "unsupported-format")
