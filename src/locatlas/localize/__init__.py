"""Protein-localization inference: a multi-label CNN per cell, with embeddings.

Typical use (the workflow's train and localize jobs)::

    from locatlas.localize import (parse_labels, train_model, save_model_package,
        load_model_package, load_reference, predict, label_free_scores,
        nearest_neighbours, group_scores, write_training_report)

    y = parse_labels(cells["labels"], classes)          # image labels inherited by cells
    model, info = train_model(crops, masks, y, cells["protein"], channels=channels,
                              classes=classes, pixel_size_um=um_per_px, params=cfg_train)
    save_model_package(model, out / "package", spec=info["spec"], reference=info["reference"])
    write_training_report(info["history"], info["evaluation"], out / "report")

    model, spec = load_model_package(out / "package", classes=classes)
    probs, emb = predict(model, crops, masks, spec=spec, channels=channels,
                         crop_um_per_px=um_per_px)
    ref_emb, ref_lab = load_reference(out / "package")
    nn_idx, nn_probs = nearest_neighbours(emb, ref_emb, ref_lab, k=10)
    lf = label_free_scores(crops, masks, channels=channels)
    per_protein = group_scores(probs, cells["protein"], thresholds=spec["thresholds"],
                               classes=classes, key_name="protein")
"""

from locatlas.localize.data import parse_labels, rescale_crops
from locatlas.localize.infer import call_classes, group_scores, predict
from locatlas.localize.labelfree import label_free_scores
from locatlas.localize.metrics import evaluate_predictions, tune_thresholds
from locatlas.localize.model import LocalizationNet, NetConfig, default_widths
from locatlas.localize.neighbours import nearest_neighbours
from locatlas.localize.package import (
    ModelPackageError,
    load_model_package,
    load_reference,
    save_model_package,
    validate_spec,
)
from locatlas.localize.report import write_training_report
from locatlas.localize.train import TrainParams, split_by_group, train_model

__all__ = [
    "LocalizationNet",
    "ModelPackageError",
    "NetConfig",
    "TrainParams",
    "call_classes",
    "default_widths",
    "evaluate_predictions",
    "group_scores",
    "label_free_scores",
    "load_model_package",
    "load_reference",
    "nearest_neighbours",
    "parse_labels",
    "predict",
    "rescale_crops",
    "save_model_package",
    "split_by_group",
    "train_model",
    "tune_thresholds",
    "validate_spec",
    "write_training_report",
]
