"""Concordance of the atlas's location calls with a reference annotation table.

Two reference formats are read:

- the HPA v18 image table (``Id,Target``; ``Id`` = ``<gene>_<plate>_<well>_<field>``
  e.g. ``ENSG00000000003_4109_24_H11_1``, ``Target`` = space-separated class
  indices): the gene's locations are the union (default) or the majority
  (present in at least half of its images) of its images' labels;
- a plain table with a ``gene`` (or ``protein``) column and a ``locations`` column of
  class names, slugs or indices separated by ``;``, ``,`` or ``|``.

Genes are matched to the atlas's ``protein`` case-insensitively. Per protein the
predicted set (main + additional locations) is compared with the reference set:
``full`` (equal sets), ``partial`` (at least one shared location) or ``none``;
per class, precision, recall and F1 over the matched proteins.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from locatlas.classes import ClassList

_SEP = re.compile(r"[;,|]")


def parse_locations(text: object, classes: ClassList) -> frozenset[int]:
    """Class indices from ``"0;25"``, ``"0 25"``, ``"Nucleoplasm;Cytosol"`` or slugs.

    Raises
    ------
    ValueError
        For a token that is neither an index, a class name nor a slug.
    """
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return frozenset()
    s = str(text).strip()
    if not s:
        return frozenset()
    tokens = [t.strip() for t in _SEP.split(s)] if _SEP.search(s) else [s]
    if len(tokens) == 1 and all(t.isdigit() for t in s.split()):
        tokens = s.split()
    lower_names = {n.lower(): i for i, n in enumerate(classes.names)}
    out = set()
    for t in tokens:
        if not t:
            continue
        if t.isdigit():
            i = int(t)
            if not 0 <= i < len(classes):
                raise ValueError(f"class index {i} out of range 0..{len(classes) - 1}")
            out.add(i)
        elif t in classes.slugs:
            out.add(classes.slugs.index(t))
        elif t.lower() in lower_names:
            out.add(lower_names[t.lower()])
        else:
            raise ValueError(f"unknown location {t!r}")
    return frozenset(out)


def read_reference(path: str | Path, classes: ClassList, *, mode: str = "union") -> pd.DataFrame:
    """Read a reference table into ``gene, locations (frozenset), n_images``.

    Raises
    ------
    ValueError
        Naming the file when its columns are neither format or a label is unknown.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: reference table not found")
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    cols = {c.lower(): c for c in df.columns}
    try:
        if "id" in cols and "target" in cols:
            genes = df[cols["id"]].str.split("_").str[0]
            labels = [parse_locations(t, classes) for t in df[cols["target"]]]
        elif ("gene" in cols or "protein" in cols) and "locations" in cols:
            genes = df[cols.get("gene", cols.get("protein"))]
            labels = [parse_locations(t, classes) for t in df[cols["locations"]]]
        else:
            raise ValueError(
                f"columns {list(df.columns)}: expected 'Id,Target' (HPA v18) or 'gene,locations'"
            )
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    work = pd.DataFrame({"gene": genes.astype(str), "labels": labels})
    rows = []
    for gene, g in work.groupby("gene", sort=True):
        n = len(g)
        counts: dict[int, int] = {}
        for s in g["labels"]:
            for c in s:
                counts[c] = counts.get(c, 0) + 1
        if mode == "union":
            locs = frozenset(counts)
        elif mode == "majority":
            locs = frozenset(c for c, k in counts.items() if k >= n / 2)
        else:
            raise ValueError(f"reference mode must be union or majority, not {mode!r}")
        rows.append({"gene": gene, "locations": locs, "n_images": n})
    return pd.DataFrame(rows, columns=["gene", "locations", "n_images"])


def _names(s: frozenset[int], classes: ClassList) -> str:
    return ";".join(classes.names[i] for i in sorted(s))


def concordance(
    calls: pd.DataFrame, reference: pd.DataFrame, classes: ClassList
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Agreement of location calls with a reference, per protein and per class.

    Parameters
    ----------
    calls
        ``protein``, ``cell_line``, ``main_locations``, ``additional_locations``
        (';'-joined class names, as in proteins.parquet).
    reference
        From :func:`read_reference`.

    Returns
    -------
    (per_protein, per_class, summary)
        ``per_protein``: protein, cell_line, predicted, reference, n_shared,
        jaccard, agreement (full/partial/none), main_in_reference.
        ``per_class``: location, slug, support, n_predicted, tp, fp, fn,
        precision, recall, f1. ``summary``: counts and rates.
    """
    ref = {g.lower(): s for g, s in zip(reference["gene"], reference["locations"], strict=True)}
    rows = []
    c = len(classes)
    tp, fp, fn = np.zeros(c, int), np.zeros(c, int), np.zeros(c, int)
    for _, r in calls.iterrows():
        key = str(r["protein"]).lower()
        if key not in ref:
            continue
        main = parse_locations(r["main_locations"], classes)
        pred = main | parse_locations(r["additional_locations"], classes)
        truth = ref[key]
        shared = pred & truth
        union = pred | truth
        if pred == truth:
            agree = "full"
        elif shared:
            agree = "partial"
        else:
            agree = "none"
        for i in range(c):
            tp[i] += (i in pred) and (i in truth)
            fp[i] += (i in pred) and (i not in truth)
            fn[i] += (i not in pred) and (i in truth)
        rows.append(
            {
                "protein": r["protein"],
                "cell_line": r["cell_line"],
                "predicted": _names(pred, classes),
                "reference": _names(truth, classes),
                "n_shared": len(shared),
                "jaccard": len(shared) / len(union) if union else 1.0,
                "agreement": agree,
                "main_in_reference": bool(main & truth),
            }
        )
    per_protein = pd.DataFrame(
        rows,
        columns=[
            "protein",
            "cell_line",
            "predicted",
            "reference",
            "n_shared",
            "jaccard",
            "agreement",
            "main_in_reference",
        ],
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / (tp + fp)
        recall = tp / (tp + fn)
        f1 = 2 * tp / (2 * tp + fp + fn)
    per_class = pd.DataFrame(
        {
            "location": list(classes.names),
            "slug": list(classes.slugs),
            "support": tp + fn,
            "n_predicted": tp + fp,
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "precision": precision,
            "recall": recall,
            "f1": f1,
        }
    )
    n = len(per_protein)
    supported = per_class["support"] > 0
    summary = {
        "n_proteins_matched": int(n),
        "n_proteins_unmatched": int(calls["protein"].nunique() - per_protein["protein"].nunique()),
        "full_agreement": float((per_protein["agreement"] == "full").mean()) if n else None,
        "at_least_one_shared": float((per_protein["agreement"] != "none").mean()) if n else None,
        "mean_jaccard": float(per_protein["jaccard"].mean()) if n else None,
        "macro_f1": float(np.nanmean(per_class.loc[supported, "f1"])) if supported.any() else None,
    }
    return per_protein, per_class, summary
