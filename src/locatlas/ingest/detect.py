"""Which format a file is: from its extension, confirmed by its first bytes (magic)."""

from __future__ import annotations

import os

from locatlas.ingest.errors import IngestError
from locatlas.remote import UrlPath, as_path

#: Formats that ingest reads, and the reader behind each.
FORMATS = {
    "hpa": "one file per channel: <stem>_<red|green|blue|yellow>.<png|jpg|tif>",
    "czi": "Zeiss CZI (bioio-czi)",
    "lif": "Leica LIF (bioio-lif; liffile for spectral scans)",
    "nd2": "Nikon ND2 (bioio-nd2)",
    "ome-tiff": "OME-TIFF (bioio-ome-tiff)",
    "tiff": "TIFF (bioio-tifffile)",
    "lsm": "Zeiss LSM (tifffile)",
    "dv": "DeltaVision (mrc)",
    "png": "PNG (imagecodecs): gray = 1 channel, RGB = 3 channels",
    "jpeg": "JPEG (imagecodecs): gray = 1 channel, RGB = 3 channels",
}

#: Extension (lower case) -> format. Longest suffixes are tried first.
EXTENSIONS = {
    ".ome.tiff": "ome-tiff",
    ".ome.tif": "ome-tiff",
    ".ome.btf": "ome-tiff",
    ".czi": "czi",
    ".lif": "lif",
    ".nd2": "nd2",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".btf": "tiff",
    ".lsm": "lsm",
    ".dv": "dv",
    ".r3d": "dv",
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
}

#: Extensions that directory ingest skips without complaint (sidecar tables, notes).
NON_IMAGE_EXTENSIONS = frozenset(
    ".csv .tsv .txt .md .rst .json .yaml .yml .xml .html .htm .log .py .parquet .pdf "
    ".db .ini .cfg .toml .sh .zattrs .zgroup .zarray".split()
)

# Formats whose content shares the TIFF container.
_FAMILY = {"ome-tiff": "tiff", "lsm": "tiff", "tiff": "tiff"}


def format_from_extension(path: str | os.PathLike | UrlPath) -> str | None:
    """Format suggested by the file name, or None."""
    name = as_path(path).name.lower()
    for ext in sorted(EXTENSIONS, key=len, reverse=True):
        if name.endswith(ext):
            return EXTENSIONS[ext]
    return None


def sniff(head: bytes) -> str | None:
    """Format from the first bytes; ``"unsupported:<kind>"`` for known non-supported
    images, None when unrecognized."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head.startswith(b"ZISRAWFILE"):
        return "czi"
    if head[:4] == b"\x70\x00\x00\x00" and len(head) > 8 and head[8] == 0x2A:
        return "lif"
    if head.startswith(b"\xda\xce\xbe\x0a") or head.startswith(b"\x00\x00\x00\x0cjP  "):
        return "nd2"
    if len(head) >= 98 and head[96:98] in (b"\xa0\xc0", b"\xc0\xa0"):
        return "dv"
    if head.startswith(b"BM"):
        return "unsupported:bmp"
    if head.startswith(b"GIF8"):
        return "unsupported:gif"
    if head.startswith(b"PK\x03\x04"):
        return "unsupported:zip"
    if head.startswith(b"\x89HDF"):
        return "unsupported:hdf5"
    return None


def family(fmt: str | None) -> str | None:
    return _FAMILY.get(fmt, fmt) if fmt else fmt


def detect_format(
    path: str | os.PathLike | UrlPath, head: bytes, declared: str | None = None
) -> str:
    """Format of a file from its name, first bytes and an optional declared format.

    The content decides; a name or a declared format that contradicts the content is
    an error (a mislabelled file usually means a mix-up upstream).

    Raises
    ------
    IngestError
        ``unsupported-format``, ``extension-mismatch`` or ``corrupt`` (unrecognized
        content under a known image extension).
    """
    path = as_path(path)
    ext_fmt = format_from_extension(path)
    magic = sniff(head)
    if magic is not None and magic.startswith("unsupported:"):
        raise IngestError(
            path, f"unsupported image format ({magic.split(':', 1)[1]})", "unsupported-format"
        )
    if magic is None:
        if ext_fmt is not None:
            raise IngestError(
                path,
                f"content is not a valid {ext_fmt} file (unrecognized signature "
                f"{head[:8].hex(' ')}); corrupt or not an image",
                "corrupt",
            )
        raise IngestError(
            path,
            f"unsupported format: extension {path.suffix or '(none)'!r} and content are not "
            f"an image format that ingest reads ({', '.join(sorted(FORMATS))})",
            "unsupported-format",
        )
    if ext_fmt is not None and family(ext_fmt) != family(magic):
        raise IngestError(
            path,
            f"extension says {ext_fmt} but the content is {magic} (wrong extension?)",
            "extension-mismatch",
        )
    if declared and declared != "hpa" and family(declared) != family(magic):
        raise IngestError(
            path,
            f"sample sheet says format {declared!r} but the content is {magic}",
            "extension-mismatch",
        )
    if family(magic) == "tiff":
        # The TIFF flavour is settled by the reader (OME-XML, LSM tags); keep the hint.
        if declared in ("ome-tiff", "lsm", "tiff"):
            return declared
        return ext_fmt if ext_fmt in ("ome-tiff", "lsm", "tiff") else "tiff"
    return magic
