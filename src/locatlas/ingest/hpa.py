"""The Human Protein Atlas layouts: one file per channel colour.

* HPA layout: ``<stem>_<red|green|blue|yellow>.<png|jpg|tif>`` beside each other, or in
  one folder per colour (``<dir>/<colour>/<name>_<colour>.<ext>``, the CM4AI layout).
* Kaggle layout: ``train.csv`` (``Id,Target``, space-separated class indices) and
  ``train/<Id>_<colour>.png``.

HPA stems such as ``89_B5_1`` or ``B2AI_1_untreated_A1_R1`` encode plate, well and
field (``<plate>_<well>_<field>``, field optionally prefixed with ``R``); other stems
(e.g. Kaggle UUIDs) get derived values (see :mod:`locatlas.ingest.manifest`).

Both layouts may live in object storage (``s3://...``): folders are then listed
through fsspec (:mod:`locatlas.remote`), one listing per folder.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from locatlas import remote
from locatlas.ingest.detect import detect_format
from locatlas.ingest.errors import IngestError
from locatlas.ingest.planes import FileBytes, PlaneHeader, probe_plane, read_file_bytes
from locatlas.remote import UrlPath, as_path

#: Channel colours in the order they are stored (the canonical role order:
#: nucleus, microtubules, er, protein).
HPA_COLOURS = ("blue", "red", "yellow", "green")
HPA_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg")

HPA_FILE = re.compile(
    r"^(?P<stem>.+)_(?P<colour>red|green|blue|yellow)\.(?P<ext>png|jpe?g|tiff?)$", re.I
)
_STEM_IDS = re.compile(
    r"^(?P<plate>.+)_(?P<well>[A-Za-z]{1,2}\d{1,3})_R?(?P<field>\d+)(?:_t(?P<t>\d+))?$"
)


def parse_stem(name: str) -> tuple[str, str, int, int | None] | None:
    """Ids encoded in an HPA stem: ``'89_B5_1'`` -> ``('89', 'B5', 1, None)``;
    ``'B2AI_1_untreated_A1_R1_'`` -> ``('B2AI_1_untreated', 'A1', 1, None)``; a field id
    ``'P1_B05_2_t003'`` -> ``('P1', 'B05', 2, 3)``; None when the stem encodes no ids."""
    m = _STEM_IDS.match(name.rstrip("_"))
    if not m:
        return None
    t = m.group("t")
    return m.group("plate"), m.group("well"), int(m.group("field")), None if t is None else int(t)


@lru_cache(maxsize=4096)
def _listdir(directory: str) -> dict[str, tuple[str, ...]]:
    """Lower-cased file name -> actual names in ``directory`` (cached: one listing per
    directory however many stems it holds)."""
    out: dict[str, list[str]] = {}
    if remote.is_url(directory):
        try:
            names = remote.listdir(directory)
        except Exception:  # noqa: BLE001 - unreachable: no files found, reported per stem
            names = ()
        for name in names:
            out.setdefault(name.lower(), []).append(name)
        return {k: tuple(sorted(v)) for k, v in out.items()}
    try:
        with os.scandir(directory) as it:
            for entry in it:
                out.setdefault(entry.name.lower(), []).append(entry.name)
    except OSError:
        return {}
    return {k: tuple(sorted(v)) for k, v in out.items()}


def clear_listing_cache() -> None:
    _listdir.cache_clear()
    remote.clear_caches()


def exists_listed(path: Path | UrlPath) -> bool:
    """Whether ``path`` exists, from the cached listing of its folder (one listing per
    folder instead of one request per path: cheap for objects in a store)."""
    return path.name in _listdir(str(path.parent)).get(path.name.lower(), ())


def find_channel_files(stem: str | os.PathLike | UrlPath) -> dict[str, list[Path | UrlPath]]:
    """Files of an HPA stem, per colour: ``<stem>_<colour>.<ext>`` next to the stem, or in
    a per-colour folder ``<dir>/<colour>/<name>_<colour>.<ext>``.

    Returns colour -> list of candidate paths (more than one means ambiguity).
    """
    stem = as_path(stem)
    # CM4AI sheets list stems with a trailing underscore ("..._A1_R1_").
    directory, name = stem.parent, stem.name.rstrip("_")
    found: dict[str, list[Path]] = {}
    for colour in HPA_COLOURS:
        for folder in (directory, directory / colour):
            listing = _listdir(str(folder))
            for ext in HPA_EXTENSIONS:
                for real in listing.get(f"{name}_{colour}{ext}".lower(), ()):
                    found.setdefault(colour, []).append(folder / real)
            if colour in found:
                break
    return found


@dataclass(frozen=True)
class HpaProbe:
    """Headers of the channel files of one HPA field (no pixels decoded)."""

    files: tuple[Path | UrlPath, ...]  # in channel order
    colours: tuple[str, ...]
    formats: tuple[str, ...]
    headers: tuple[PlaneHeader, ...]
    bytes_: tuple[FileBytes, ...]

    @property
    def shape(self) -> tuple[int, int]:
        return self.headers[0].height, self.headers[0].width

    @property
    def dtype(self) -> str:
        return self.headers[0].dtype


def resolve_hpa_files(
    stem: str | os.PathLike | UrlPath,
    colours: Sequence[str] = HPA_COLOURS,
    *,
    found: dict[str, list[Path | UrlPath]] | None = None,
) -> dict[str, Path | UrlPath]:
    """The channel file of each colour of a stem; raises on missing or ambiguous files.

    ``found`` (colour -> candidate files) skips the directory lookup.
    """
    found = find_channel_files(stem) if found is None else found
    missing = [c for c in colours if c not in found]
    if missing:
        have = ", ".join(f"{c}={found[c][0].name}" for c in HPA_COLOURS if c in found) or "none"
        raise IngestError(
            stem,
            f"missing channel file(s) for colour(s) {', '.join(missing)} "
            f"(looked for {as_path(stem).name}_<colour>.<tif|png|jpg>; found: {have})",
            "missing-channel",
        )
    for c in colours:
        if len(found[c]) > 1:
            raise IngestError(
                stem,
                f"ambiguous {c} channel: {', '.join(p.name for p in found[c])}",
                "missing-channel",
            )
    return {c: found[c][0] for c in colours}


def probe_hpa(
    stem: str | os.PathLike | UrlPath,
    files: dict[str, Path | UrlPath],
    *,
    colours: Sequence[str] = HPA_COLOURS,
    max_plane_pixels: int,
) -> HpaProbe:
    """Check the channel files of one HPA field from their headers.

    Every file must exist, be a readable PNG/JPEG/TIFF plane, not be truncated, be
    within the size limit, and all channels must have the same shape and dtype.
    """
    paths, fmts, hdrs, fbs = [], [], [], []
    for colour in colours:
        path = files[colour]
        fb = read_file_bytes(path)
        fmt = detect_format(path, fb.head)
        if fmt not in ("png", "jpeg", "tiff", "ome-tiff"):
            raise IngestError(
                path,
                f"an HPA channel file must be PNG, JPEG or TIFF, not {fmt}",
                "unsupported-format",
            )
        hdr = probe_plane(fb, fmt, max_plane_pixels=max_plane_pixels)
        paths.append(path)
        fmts.append("tiff" if fmt == "ome-tiff" else fmt)
        hdrs.append(hdr)
        fbs.append(fb)
    shapes = {(h.height, h.width) for h in hdrs}
    if len(shapes) > 1:
        desc = ", ".join(f"{c} {h.height}x{h.width}" for c, h in zip(colours, hdrs, strict=True))
        raise IngestError(stem, f"channel shapes differ: {desc}", "shape-mismatch")
    dtypes = {h.dtype for h in hdrs}
    if len(dtypes) > 1:
        desc = ", ".join(f"{c} {h.dtype}" for c, h in zip(colours, hdrs, strict=True))
        raise IngestError(stem, f"channel dtypes differ: {desc}", "shape-mismatch")
    return HpaProbe(tuple(paths), tuple(colours), tuple(fmts), tuple(hdrs), tuple(fbs))


def group_hpa_files(paths: Sequence[Path]) -> tuple[dict[Path, dict[str, list[Path]]], list[Path]]:
    """Group HPA-named files by stem; a per-colour folder (``<dir>/blue/x_blue.jpg``)
    counts as ``<dir>/x``. Returns (stem -> colour -> files, files that are not HPA-named)."""
    groups: dict[Path, dict[str, list[Path]]] = {}
    rest: list[Path] = []
    for p in paths:
        m = HPA_FILE.match(p.name)
        if not m:
            rest.append(p)
            continue
        colour = m.group("colour").lower()
        parent = p.parent.parent if p.parent.name.lower() == colour else p.parent
        groups.setdefault(parent / m.group("stem"), {}).setdefault(colour, []).append(p)
    return groups, rest


def _csv_reader(sheet: Path | UrlPath):
    if isinstance(sheet, UrlPath):
        return csv.reader(io.StringIO(remote.read_text(sheet), newline=""))
    with open(sheet, newline="") as fh:
        return csv.reader(io.StringIO(fh.read(), newline=""))


def is_kaggle_layout(directory: Path | UrlPath) -> bool:
    """``train.csv`` with an ``Id,Target`` header beside a ``train/`` folder."""
    sheet = directory / "train.csv"
    if isinstance(directory, UrlPath):
        names = remote.listdir(directory)
        if (
            "train.csv" not in names
            or "train" not in names
            or not remote.isdir(directory / "train")
        ):
            return False
    elif not (sheet.is_file() and (directory / "train").is_dir()):
        return False
    header = next(_csv_reader(sheet), [])
    return [h.strip() for h in header[:2]] == ["Id", "Target"]


def read_kaggle_rows(directory: Path | UrlPath) -> list[tuple[int, str, str]]:
    """Rows of ``train.csv``: (line number, Id, labels ';'-joined)."""
    rows = []
    reader = _csv_reader(directory / "train.csv")
    next(reader)
    for lineno, rec in enumerate(reader, start=2):
        if not rec:
            continue
        ident = rec[0].strip()
        target = rec[1].strip() if len(rec) > 1 else ""
        rows.append((lineno, ident, target))
    return rows
