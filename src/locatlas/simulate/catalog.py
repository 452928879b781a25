"""Deterministic catalogues of simulated proteins for the presets."""

from __future__ import annotations

import numpy as np

from .spec import ProteinSpec

#: The classes the demo atlas covers (HPA-28 indices); each has a distinct pattern.
CORE_CLASSES = (0, 1, 2, 4, 6, 7, 12, 14, 19, 21, 23, 25, 26)

# Frequent HPA co-occurrences among the core classes (multi-label proteins).
_PAIRS = [
    (0, 25),
    (0, 2),
    (7, 25),
    (21, 25),
    (0, 4),
    (23, 25),
    (19, 25),
    (6, 21),
    (1, 6),
    (14, 19),
    (12, 21),
    (26, 25),
    (0, 1),
    (2, 23),
    (7, 26),
]
_TRIPLES = [(0, 25, 21), (0, 2, 25), (7, 25, 26)]

#: Translocations for time-lapse wells: (from, to).
TRANSLOCATIONS = [(25, 0), (0, 25), (25, 23), (0, 2)]


def _pick_special(rng: np.random.Generator, protein: dict, kind: str, classes) -> None:
    labels = protein["labels"]
    if kind == "intensity":
        protein["variability"] = "intensity"
    elif kind == "spatial":
        options = [c for c in classes if c not in labels]
        protein["variability"] = "spatial"
        protein["spatial_label"] = int(rng.choice(options))
    elif kind == "level":
        protein["cycle_effect"] = "level"
        protein["cycle_fold"] = 3.0
    elif kind == "pattern":
        options = [c for c in (19, 0, 25, 2, 1) if c not in labels and c in classes] or [
            c for c in classes if c not in labels
        ]
        protein["cycle_effect"] = "pattern"
        protein["cycle_label"] = int(options[0])


def make_proteins(
    n: int,
    *,
    seed: int,
    prefix: str,
    classes=CORE_CLASSES,
    multi_fraction: float = 0.4,
    specials: dict[str, int] | None = None,
    cell_lines=("U2OS-sim",),
    offset: int = 0,
) -> list[ProteinSpec]:
    """``n`` proteins: first every class alone (cycling through ``classes``),
    then multi-label ones; some made variable or cell-cycle dependent.

    ``specials`` maps 'intensity' / 'spatial' / 'level' / 'pattern' to how many
    proteins get that behaviour. ``offset`` shifts where in ``classes`` the
    singles start, so a test set can differ from a training set.
    """
    rng = np.random.default_rng([seed, 77, offset])
    classes = tuple(int(c) for c in classes)
    cset = set(classes)
    pairs = [p for p in _PAIRS if set(p) <= cset]
    triples = [t for t in _TRIPLES if set(t) <= cset]
    n_multi = int(round(n * multi_fraction)) if n >= 4 else 0
    n_single = n - n_multi
    order = [classes[(offset + k) % len(classes)] for k in range(n_single)]
    combos: list[tuple[int, ...]] = [(c,) for c in order]
    multis = [*pairs, *triples]
    if multis:
        start = offset % len(multis)
        # Mostly pairs, every fourth a triple (if any).
        for k in range(n_multi):
            if triples and k % 4 == 3:
                combos.append(triples[(start + k) % len(triples)])
            else:
                combos.append(pairs[(start + k) % len(pairs)] if pairs else multis[0])
    raw = []
    for k, labels in enumerate(combos):
        weights = [1.0] + [float(np.round(rng.uniform(0.5, 1.0), 2)) for _ in labels[1:]]
        raw.append(
            {
                "name": f"{prefix}{k + 1:03d}",
                "labels": tuple(labels),
                "weights": tuple(weights),
                "level": float(np.round(np.exp(rng.normal(0, 0.25)), 3)),
                "cell_line": cell_lines[k % len(cell_lines)],
            }
        )
    specials = specials or {}
    # Spread the special behaviours over distinct proteins, single-class first.
    slots = list(rng.permutation(len(raw)))
    for kind in ("level", "pattern", "intensity", "spatial"):
        for _ in range(int(specials.get(kind, 0))):
            if not slots:
                break
            _pick_special(rng, raw[int(slots.pop())], kind, classes)
    return [ProteinSpec(**r) for r in raw]


def make_timelapse_proteins(
    n_wells: int, n_translocating: int, onsets, *, prefix: str, cell_line="U2OS-sim"
) -> list[ProteinSpec]:
    """Time-lapse wells: the first ``n_translocating`` move (TRANSLOCATIONS in turn,
    onsets in turn); the others stay put (cytosol, nucleoplasm, Golgi, mitochondria)."""
    out = []
    stable = [(25,), (0,), (7,), (23,), (0, 25)]
    for k in range(n_wells):
        name = f"{prefix}{k + 1:03d}"
        if k < n_translocating:
            src, dst = TRANSLOCATIONS[k % len(TRANSLOCATIONS)]
            out.append(
                ProteinSpec(
                    name,
                    labels=(src,),
                    cell_line=cell_line,
                    translocation_from=src,
                    translocation_to=dst,
                    onset_frame=int(onsets[k % len(onsets)]),
                )
            )
        else:
            out.append(
                ProteinSpec(
                    name, labels=stable[(k - n_translocating) % len(stable)], cell_line=cell_line
                )
            )
    return out
