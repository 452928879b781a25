"""Per-shard crop store: ``shard-<id>.zarr`` with ``crops`` (N, C, S, S) and ``masks`` (N, 2, S, S).

Rows are in the order of the shard's cell table. Written a chunk of cells at a time
(the segment job appends each view's cells as it is done) to a temporary folder that
is renamed at the end, so a killed job never leaves a half-written store behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle

from .atomic import atomic_path

# float16 crops hardly compress (measured 267 -> 214 MB with zstd level 3); lz4 keeps
# most of that (222 MB) at a quarter of the CPU time to write and a third to read.
_COMPRESSOR = BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.bitshuffle)
# Every chunk holds cells: no all-zero test (a full pass) before each write.
_DENSE = {"write_empty_chunks": True}


# Cells per chunk: a localize batch reads whole chunks.
_CHUNK_CELLS = 256


class CropsWriter:
    """Appends crops (n, C, S, S) and masks (n, 2, S, S) in order, a whole chunk of
    cells at a time: a shard's crops are never all in memory at once."""

    def __init__(
        self, path: Path, *, size_px: int, chunk: int = _CHUNK_CELLS, name: str | None = None
    ) -> None:
        # ``name``: the store errors name (the final path of a store written elsewhere first)
        self._path, self._size, self._chunk = name or str(path), int(size_px), int(chunk)
        self._root = zarr.open_group(str(path), mode="w", zarr_format=3)
        self._arrays: tuple[zarr.Array, zarr.Array] | None = None
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._layout: tuple | None = None
        self.n = 0  # cells written so far

    def append(self, crops: np.ndarray, masks: np.ndarray) -> None:
        if crops.shape[0] != masks.shape[0]:
            raise ValueError(f"{self._path}: {crops.shape[0]} crops but {masks.shape[0]} masks")
        if crops.shape[0]:
            layout = tuple((a.shape[1:], a.dtype) for a in (crops, masks))
            self._layout = self._layout or layout  # the first cells fix the layout
            for name, got, want in zip(("crops", "masks"), layout, self._layout, strict=True):
                if got != want:
                    raise ValueError(
                        f"{self._path}: {name} {got[0]} {got[1]} do not match the store's "
                        f"{want[0]} {want[1]}"
                    )
            self._pending.append((crops, masks))
            if sum(c.shape[0] for c, _ in self._pending) >= self._chunk:
                self._flush(final=False)

    def close(self, attrs: dict) -> None:
        """Write what is left (a last, partial chunk) and the store's attributes."""
        if self._pending:
            self._flush(final=True)
        if self._arrays is None:  # no cells: empty arrays of the contract's layout
            s = self._size
            self._create(np.zeros((0, 1, s, s), np.float16), np.zeros((0, 2, s, s), np.uint8))
        self._root.attrs.update(attrs)

    def _flush(self, *, final: bool) -> None:
        crops = np.concatenate([c for c, _ in self._pending])
        masks = np.concatenate([m for _, m in self._pending])
        k = crops.shape[0] if final else crops.shape[0] // self._chunk * self._chunk
        self._write(crops[:k], masks[:k])
        self._pending = [(crops[k:], masks[k:])] if k < crops.shape[0] else []

    def _create(self, crops: np.ndarray, masks: np.ndarray) -> tuple[zarr.Array, zarr.Array]:
        self._arrays = tuple(
            self._root.create_array(
                name,
                shape=(0, *a.shape[1:]),
                dtype=a.dtype,
                chunks=(self._chunk, *a.shape[1:]),
                compressors=_COMPRESSOR,
                config=_DENSE,
            )
            for name, a in (("crops", crops), ("masks", masks))
        )
        return self._arrays

    def _write(self, crops: np.ndarray, masks: np.ndarray) -> None:
        arrays = self._arrays or self._create(crops, masks)
        for arr, data in zip(arrays, (crops, masks), strict=True):
            arr.resize((self.n + data.shape[0], *arr.shape[1:]))
            arr[self.n :] = data
        self.n += crops.shape[0]


@contextmanager
def crops_writer(path: str | Path, *, size_px: int, attrs: dict) -> Iterator[CropsWriter]:
    """A :class:`CropsWriter` on a temporary store, renamed onto ``path`` once the
    block exits without error (with ``attrs``: channels, µm/px, size)."""
    with atomic_path(path) as tmp:
        writer = CropsWriter(tmp, size_px=size_px, name=str(path))
        yield writer
        writer.close(attrs)


def write_crops(path: str | Path, crops: np.ndarray, masks: np.ndarray, *, attrs: dict) -> Path:
    """Write crops (N, C, S, S) and masks (N, 2, S, S) with ``attrs`` (channels, µm/px, size)."""
    with crops_writer(path, size_px=crops.shape[-1], attrs=attrs) as writer:
        writer.append(crops, masks)
    return Path(path)


def open_crops(path: str | Path) -> tuple[zarr.Array, zarr.Array, dict]:
    """Crops and masks as lazily read arrays (a slice reads only its chunks), and attrs."""
    root = zarr.open_group(str(path), mode="r")
    return root["crops"], root["masks"], dict(root.attrs)


def read_crops(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    crops, masks, attrs = open_crops(path)
    return crops[...], masks[...], attrs
