"""The per-shard crop store: streamed writes, chunking, atomicity; field order of views."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from locatlas.crops_store import crops_writer, open_crops, read_crops, write_crops
from locatlas.ids import make_field_id, make_view_id
from locatlas.jobs.segment import _views_in_field_order

ATTRS = {"channels": ["nucleus", "protein"], "size_um": 40.0, "size_px": 8, "um_per_px": 5.0}


def _cells(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    crops = rng.random((n, 2, 8, 8)).astype(np.float16)
    masks = (rng.random((n, 2, 8, 8)) > 0.5).astype(np.uint8)
    return crops, masks


def test_streamed_appends_equal_one_write(tmp_path):
    parts = [_cells(n, seed) for seed, n in enumerate([0, 100, 300, 7, 250, 1])]
    with crops_writer(tmp_path / "s.zarr", size_px=8, attrs=ATTRS) as writer:
        for crops, masks in parts:
            writer.append(crops, masks)
            # only whole chunks are written before the end; the rest waits in memory
            assert writer.n % 256 == 0
    crops, masks, attrs = read_crops(tmp_path / "s.zarr")
    np.testing.assert_array_equal(crops, np.concatenate([c for c, _ in parts]))
    np.testing.assert_array_equal(masks, np.concatenate([m for _, m in parts]))
    assert attrs == ATTRS
    lazy, _, _ = open_crops(tmp_path / "s.zarr")
    assert lazy.shape == (658, 2, 8, 8) and lazy.chunks == (256, 2, 8, 8)
    # a one-shot write gives the same store
    write_crops(tmp_path / "w.zarr", crops, masks, attrs=ATTRS)
    np.testing.assert_array_equal(read_crops(tmp_path / "w.zarr")[0], crops)


def test_empty_store_keeps_the_layout(tmp_path):
    with crops_writer(tmp_path / "e.zarr", size_px=8, attrs=ATTRS):
        pass
    crops, masks, attrs = read_crops(tmp_path / "e.zarr")
    assert crops.shape == (0, 1, 8, 8) and crops.dtype == np.float16
    assert masks.shape == (0, 2, 8, 8) and masks.dtype == np.uint8
    assert attrs["channels"] == ATTRS["channels"]


def test_bad_appends_name_the_store_and_leave_nothing(tmp_path):
    crops, masks = _cells(300, 0)
    with pytest.raises(ValueError, match=r"s\.zarr.*3 crops but 2 masks"):
        with crops_writer(tmp_path / "s.zarr", size_px=8, attrs=ATTRS) as writer:
            writer.append(crops[:3], masks[:2])
    with pytest.raises(ValueError, match=r"crops \(3, 8, 8\) float16 do not match"):
        with crops_writer(tmp_path / "s.zarr", size_px=8, attrs=ATTRS) as writer:
            writer.append(crops, masks)  # 256 written: the store has 2 channels
            writer.append(np.zeros((300, 3, 8, 8), np.float16), masks)
    assert not (tmp_path / "s.zarr").exists()
    assert list(tmp_path.iterdir()) == []  # no temporary left either


def test_views_come_in_field_id_order():
    # 12 fields per well: view "P_B02_1" sorts before "P_B02_10", but its fields after
    rows = [
        {"field_id": make_field_id("P", well, f, t), "view_id": make_view_id("P", well, f)}
        for well in ("B02", "B10")
        for f in range(1, 13)
        for t in (2, 0, 1)
    ]
    fields = pd.DataFrame(rows).sample(frac=1, random_state=0)
    order = [fid for g in _views_in_field_order(fields) for fid in g["field_id"]]
    assert order == sorted(fields["field_id"])
    assert order != [
        fid for _, g in fields.groupby("view_id") for fid in sorted(g["field_id"])
    ]  # the plain view order would not be
