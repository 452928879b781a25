"""The localization class list (names and order live in one resource file)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd

RESOURCES = Path(__file__).resolve().parents[2] / "resources"
DEFAULT_CLASSES = RESOURCES / "classes_hpa28.tsv"


@dataclass(frozen=True)
class ClassList:
    """Ordered localization classes. ``slugs`` are column-safe names."""

    names: tuple[str, ...]
    slugs: tuple[str, ...]
    compartments: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name_or_slug: str) -> int:
        if name_or_slug in self.slugs:
            return self.slugs.index(name_or_slug)
        return self.names.index(name_or_slug)

    @property
    def prob_columns(self) -> list[str]:
        """Column names of per-class probabilities in localization tables."""
        return [f"p_{s}" for s in self.slugs]


@lru_cache(maxsize=8)
def load_classes(path: str | Path | None = None) -> ClassList:
    """Read a class TSV (columns ``index, name, slug, compartment``)."""
    df = pd.read_csv(path or DEFAULT_CLASSES, sep="\t")
    df = df.sort_values("index")
    if list(df["index"]) != list(range(len(df))):
        raise ValueError(f"{path}: class indices must be 0..n-1 without gaps")
    return ClassList(tuple(df["name"]), tuple(df["slug"]), tuple(df["compartment"]))
