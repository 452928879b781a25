"""Inputs in object storage (``s3://``, ``gs://``, ... URLs) through fsspec.

Ingest accepts an ``s3://bucket/prefix/`` folder, a sample sheet in object storage,
or a local sheet whose ``source`` column holds URLs; the manifest's ``source`` keeps
the URL and :func:`locatlas.ingest.read_field_pixels` reads from it at normalize time.

* Header probing reads only the first and last MiB of an object (ranged GETs, as
  :func:`locatlas.ingest.planes.read_file_bytes` does for a local file), so the
  checksums are the same bytes as for a local copy and an HPA folder is probed
  without downloading its images.
* Vendor readers that need a real file (bioio, liffile, mrc, tifffile for
  multi-page files) get one from :func:`local_copy`: the object is downloaded into a
  fresh temporary folder (``TMPDIR``, under its own file name) and deleted after use.

Where the endpoint and credentials come from: fsspec/s3fs and botocore's usual
sources, nothing locatlas-specific. For S3: ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` (or ``AWS_PROFILE`` and ``~/.aws``, or an instance role),
``AWS_DEFAULT_REGION``, and for a non-AWS endpoint (MinIO, Ceph, a site's object
store) ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``); fsspec's own configuration
works too (``FSSPEC_S3_ENDPOINT_URL``, ``FSSPEC_S3_ANON=true``, or a JSON file in
``~/.config/fsspec/``). Other protocols need their fsspec package (gcsfs, adlfs).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

MIB = 1 << 20

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def is_url(path: Any) -> bool:
    """True for ``scheme://...`` (``s3://``, ``gs://``, ``http://``); ``file://`` and
    plain paths are local."""
    text = str(path)
    return bool(_URL.match(text)) and not text.lower().startswith("file://")


@dataclass(frozen=True, order=True)
class UrlPath:
    """The part of :class:`pathlib.Path` that ingest uses, for a URL.

    ``Path("s3://b/x")`` would collapse the ``//`` into a local-looking path, so URLs
    get this instead (see :func:`as_path`). It has no ``__fspath__``: handing one to
    ``open`` fails loudly instead of looking for a local file.
    """

    url: str

    def __post_init__(self) -> None:
        scheme, rest = self.url.split("://", 1)
        rest = posixpath.normpath(rest) if rest.strip("/") else ""
        object.__setattr__(self, "url", f"{scheme}://{rest.strip('/')}")

    def __str__(self) -> str:
        return self.url

    def __truediv__(self, other: str | os.PathLike) -> UrlPath:
        return UrlPath(f"{self.url}/{other}")

    @property
    def _key(self) -> str:
        return self.url.split("://", 1)[1]

    @property
    def name(self) -> str:
        return self._key.rsplit("/", 1)[-1]  # a bare bucket: its name, like a top folder

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).stem

    @property
    def parent(self) -> UrlPath:
        if "/" not in self._key:
            return self
        return UrlPath(self.url.rsplit("/", 1)[0])

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(p for p in self._key.split("/") if p)

    def relative_to(self, other: UrlPath | str) -> PurePosixPath:
        base = str(other).rstrip("/") + "/"
        if not self.url.startswith(base):
            raise ValueError(f"{self.url} is not below {other}")
        return PurePosixPath(self.url[len(base) :])

    def is_absolute(self) -> bool:
        return True


def as_path(path: str | os.PathLike | UrlPath) -> Path | UrlPath:
    """A :class:`UrlPath` for a URL, a :class:`pathlib.Path` otherwise."""
    if isinstance(path, UrlPath):
        return path
    text = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
    if is_url(text):
        return UrlPath(text)
    return Path(text.removeprefix("file://"))


def filesystem(url: str | UrlPath) -> tuple[Any, str]:
    """``(fsspec filesystem, path inside it)`` for a URL."""
    from fsspec.core import url_to_fs

    return url_to_fs(str(url))


def _full(fs: Any, path: str) -> str:
    return fs.unstrip_protocol(path)


def glob_regex(pattern: str) -> re.Pattern:
    """A regex for a :meth:`pathlib.Path.glob` pattern over '/'-separated relative paths
    (``**`` spans folders, ``*`` and ``?`` stay within one, ``[...]`` as in glob)."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            j = pattern.index("]", i + 2 if pattern[i + 1 : i + 2] in ("!", "]") else i + 1)
            body = pattern[i + 1 : j]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = j + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def list_files(url: str | UrlPath, pattern: str | None = None) -> list[str]:
    """Every object below the prefix ``url`` (recursively), as full URLs, sorted;
    ``pattern`` is a glob relative to ``url`` (``"**/*.czi"``), default all.

    The listing is read fresh (fsspec's listing cache is dropped first), so a folder
    that is still being filled is seen as it is now.
    """
    fs, root = filesystem(url)
    root = root.rstrip("/")
    regex = glob_regex(pattern) if pattern else None
    out = []
    for p in find_objects(url):
        rel = p[len(root) + 1 :] if p.startswith(root + "/") else None
        if not rel or (regex is not None and not regex.match(rel)):
            continue
        out.append(_full(fs, p))
    return sorted(out)


def find_objects(url: str | UrlPath) -> dict[str, dict]:
    """Every object below the prefix ``url``, read fresh: its path in the filesystem
    (no protocol) -> fsspec's info (``size``, ``ETag``/``LastModified`` or ``mtime``)."""
    fs, root = filesystem(url)
    root = root.rstrip("/")
    fs.invalidate_cache(root)
    return fs.find(root, withdirs=False, detail=True)


@lru_cache(maxsize=4096)
def _listdir_cached(url: str) -> tuple[str, ...]:
    fs, path = filesystem(url)
    fs.invalidate_cache(path.rstrip("/"))
    try:
        entries = fs.ls(path.rstrip("/"), detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return ()
    return tuple(sorted({posixpath.basename(str(e).rstrip("/")) for e in entries}))


def listdir(url: str | UrlPath) -> tuple[str, ...]:
    """Names directly below the prefix ``url`` (objects and sub-prefixes); empty when
    there is none. Cached until :func:`clear_caches` (one listing per folder however
    many sample-sheet rows point into it)."""
    return _listdir_cached(str(UrlPath(str(url))))


def clear_caches() -> None:
    _listdir_cached.cache_clear()


def isdir(url: str | UrlPath) -> bool:
    """True when objects exist below the prefix ``url``."""
    fs, path = filesystem(url)
    fs.invalidate_cache(path.rstrip("/"))
    return bool(fs.isdir(path.rstrip("/")))


def isfile(url: str | UrlPath) -> bool:
    fs, path = filesystem(url)
    return bool(fs.isfile(path))


def read_head_tail(url: str | UrlPath, block: int = MIB) -> tuple[int, bytes, bytes]:
    """``(size, head, tail)`` of an object: its first ``min(size, block)`` bytes and
    the last ``min(size - len(head), block)`` (never overlapping), by ranged reads.

    An object of less than ``block`` bytes takes one request; raises
    ``FileNotFoundError`` for a missing object (or bucket), other ``OSError`` /
    client errors for an unreachable store.
    """
    fs, path = filesystem(url)
    head = fs.cat_file(path, start=0, end=block)
    if len(head) < block:
        return len(head), head, b""
    size = int(fs.size(path))
    rest = size - len(head)
    tail = fs.cat_file(path, start=size - min(rest, block), end=size) if rest > 0 else b""
    return size, head, tail


def read_bytes(url: str | UrlPath) -> bytes:
    fs, path = filesystem(url)
    return fs.cat_file(path)


def read_text(url: str | UrlPath, encoding: str = "utf-8") -> str:
    return read_bytes(url).decode(encoding)


def open_binary(url: str | UrlPath):
    """A seekable binary file object (fsspec's, reading in ranged blocks)."""
    fs, path = filesystem(url)
    return fs.open(path, "rb")


def sha256(url: str | UrlPath, *, chunk: int = 4 * MIB) -> str:
    """``"sha256:<hex>"`` of the whole object (streamed)."""
    h = hashlib.sha256()
    with open_binary(url) as fh:
        while block := fh.read(chunk):
            h.update(block)
    return f"sha256:{h.hexdigest()}"


@contextlib.contextmanager
def local_copy(url: str | UrlPath) -> Iterator[Path]:
    """A local file with the object's bytes, for readers that need a real file.

    The copy keeps the object's file name (readers look at extensions, and PNG/JPEG
    channel names come from it), lives in its own temporary folder under ``TMPDIR``,
    and is deleted when the block ends, also on error.
    """
    tmp = Path(tempfile.mkdtemp(prefix="locatlas-remote-"))
    try:
        local = tmp / (UrlPath(str(url)).name or "object")
        fs, path = filesystem(url)
        fs.get_file(path, str(local))
        yield local
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def describe_error(exc: BaseException) -> str:
    """A short description of an object-store error, for quarantine reasons."""
    if isinstance(exc, FileNotFoundError):
        return "object not found (no such key or bucket)"
    if isinstance(exc, PermissionError):
        return f"access denied: {exc}"
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return f"object store unreachable or refused the request: {type(exc).__name__}: {text}"
