"""Aggregate job: the atlas, plus the workflow-level report sections (QC, evaluation, provenance)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from ..classes import load_classes
from ..provenance import provenance
from .common import log


def _table_html(df: pd.DataFrame, max_rows: int = 50) -> str:
    if df.empty:
        return "<p>None.</p>"
    more = f"<p>… {len(df) - max_rows} more rows.</p>" if len(df) > max_rows else ""
    return df.head(max_rows).to_html(index=False, float_format=lambda v: f"{v:.3g}") + more


def workflow_sections(
    *,
    quarantine_paths: list[str],
    normalize_receipts: list[str],
    segment_receipts: list[str],
    evaluation_dir: str | None,
    training_dir: str | None,
    clearing_figure: str | None,
    config_hash: str,
) -> list[dict]:
    sections: list[dict] = []
    if evaluation_dir and (Path(evaluation_dir) / "evaluation.json").exists():
        ev = json.loads((Path(evaluation_dir) / "evaluation.json").read_text())
        rows = [{"what": k, "value": v} for k, v in ev.items() if k != "localization"]
        body = "<h3>Segmentation against the simulator's truth (IoU ≥ 0.5)</h3>" + _table_html(
            pd.DataFrame(rows)
        )
        for split, res in (ev.get("localization") or {}).items():
            per_class = (
                pd.DataFrame(res.get("per_class", []))
                if isinstance(res.get("per_class"), list)
                else pd.DataFrame(res.get("per_class", {})).T.reset_index(names="class")
            )
            body += (
                f"<h3>Localization, {html.escape(split)} cells (n={res.get('n_cells')}): "
                f"macro-F1 {res.get('macro_f1', float('nan')):.3f}</h3>"
                f"<p>Proteins: {html.escape(', '.join(res.get('proteins', [])))}</p>"
                + _table_html(per_class)
            )
        sections.append(
            {
                "title": "Accuracy against ground truth",
                "html": body,
                "caption": "Nuclei and cell F1 at IoU ≥ 0.5 and per-class localization F1 "
                "on held-out (test) and training proteins, with the model's tuned thresholds.",
            }
        )
    if training_dir:
        for png in sorted(Path(training_dir).glob("*.png")):
            sections.append(
                {
                    "title": f"Training: {png.stem.replace('_', ' ')}",
                    "image": str(png),
                    "caption": "From the training rule's report (validation split by protein).",
                }
            )
    if clearing_figure and Path(clearing_figure).exists():
        sections.append(
            {
                "title": "Computational clearing, before and after",
                "image": clearing_figure,
                "caption": "Widefield z-stack before and after clearing.",
            }
        )
    qc = pd.concat([pd.read_parquet(p) for p in sorted(normalize_receipts)], ignore_index=True)
    failing = qc[~qc["qc_pass"].astype(bool)] if "qc_pass" in qc else qc.iloc[0:0]
    sections.append(
        {
            "title": "Field QC",
            "html": f"<p>{len(qc)} fields, {len(failing)} failing QC (kept in the OME-Zarr, "
            "skipped by later stages).</p>" + _table_html(failing),
            "caption": "Per-field focus, saturation and signal checks at normalization.",
        }
    )
    seg = pd.concat([pd.read_parquet(p) for p in sorted(segment_receipts)], ignore_index=True)
    seg_cols = [c for c in ("field_id", "n_nuclei", "n_cells", "flags") if c in seg]
    sections.append(
        {
            "title": "Segmentation QC",
            "html": f"<p>{int(seg['n_cells'].sum()) if len(seg) else 0} cells in {len(seg)} fields.</p>"
            + _table_html(seg[seg_cols]),
            "caption": "Cells per field and failure flags.",
        }
    )
    quarantine = pd.concat(
        [pd.read_parquet(p) for p in sorted(quarantine_paths)], ignore_index=True
    )
    sections.append(
        {
            "title": "Quarantine",
            "html": f"<p>{len(quarantine)} inputs skipped.</p>" + _table_html(quarantine),
            "caption": "Every input that was skipped, with the file and the reason.",
        }
    )
    prov = provenance(config_hash=config_hash)
    sections.append(
        {
            "title": "Provenance",
            "html": _table_html(pd.DataFrame([{"key": k, "value": v} for k, v in prov.items()])),
            "caption": "Package version, git commit and configuration hash of this atlas.",
        }
    )
    return sections


def run_aggregate(
    cells_paths: list[str],
    loc_paths: list[str],
    emb_paths: list[str],
    out_dir: str,
    *,
    model_dir: str,
    params: dict,
    classes_path=None,
    reference: str | None,
    truth_dir: str | None,
    sections: list[dict],
    crops_paths: list[str] | None = None,
) -> None:
    from ..aggregate import build_atlas
    from ..localize import load_model_package

    _, spec = load_model_package(model_dir)
    classes = load_classes(classes_path)
    sections = [*sections, *_labelled_sections(cells_paths, loc_paths, classes, out_dir)]
    outputs = build_atlas(
        sorted(cells_paths),
        sorted(loc_paths),
        sorted(emb_paths),
        out_dir,
        classes=classes,
        thresholds=_threshold_map(spec),
        params=params,
        reference=reference,
        truth_dir=truth_dir,
        extra_sections=sections,
        crops_paths=sorted(crops_paths) if crops_paths else None,
        crop_roles=_crop_roles(crops_paths),
    )
    log.info("atlas written: %s", ", ".join(sorted(outputs)))


def _labelled_sections(cells_paths, loc_paths, classes, out_dir) -> list[dict]:
    """The model's calls beside the sample sheet's labels (a section and a CSV)."""
    from ..aggregate.labelled import predictions_beside_labels
    from ..atomic import write_text

    table = predictions_beside_labels(cells_paths, loc_paths, classes)
    if table.empty:
        return []
    write_text(table.to_csv(index=False), Path(out_dir) / "labels_vs_predictions.csv")
    hits = int(table["label_in_top"].sum())
    return [
        {
            "title": "Predictions beside sample-sheet labels",
            "html": f"<p>{len(table)} labelled proteins; for {hits} every labelled class is "
            "among the model's three most probable.</p>" + _table_html(table, max_rows=60),
            "caption": "Per protein and cell line: the sheet's labels, the mean probability "
            "and rank of each labelled class over the protein's cells, the model's top "
            "classes, and label-free scores (no model: share of protein in the nucleus, "
            "at the cell rim, in puncta, and its correlation with the reference channels). "
            "Also in labels_vs_predictions.csv.",
        }
    ]


def _threshold_map(spec: dict) -> dict[str, float] | None:
    """The model's tuned per-class thresholds as slug -> threshold."""
    thr = spec.get("thresholds")
    if thr is None:
        return None
    if isinstance(thr, dict):
        return {str(k): float(v) for k, v in thr.items()}
    slugs = spec.get("class_slugs") or list(load_classes().slugs)
    return {slug: float(t) for slug, t in zip(slugs, thr, strict=True)}


def _crop_roles(crops_paths: list[str] | None) -> list[str] | None:
    import zarr

    for path in sorted(crops_paths or []):
        channels = zarr.open_group(str(path), mode="r").attrs.get("channels")
        if channels:
            return list(channels)
    return None
