"""Simulate Human-Protein-Atlas-style fields of cells with ground truth.

>>> from locatlas.simulate import ProteinSpec, simulate_field
>>> f = simulate_field(ProteinSpec("GOLGA2-sim", labels=(7,)), shape=(256, 256), seed=1)
>>> f.image.shape, f.image.dtype.name
((4, 256, 256), 'uint16')
"""

from __future__ import annotations

from .field import SimulatedField, simulate_field
from .spec import CELL_LINES, SUPPORTED_CLASSES, ProteinSpec

__all__ = [
    "CELL_LINES",
    "PRESETS",
    "SUPPORTED_CLASSES",
    "ProteinSpec",
    "SimulatedField",
    "simulate_field",
    "write_atlas",
]


def __getattr__(name):
    # The atlas writer pulls in tifffile/pyarrow: import it on first use.
    if name in ("write_atlas", "PRESETS"):
        from . import atlas

        return getattr(atlas, name)
    raise AttributeError(name)
