"""Protein-localization inference: a multi-label CNN per cell, with embeddings.

Public API (the workflow calls these)::

    from locatlas.localize import (LocalizationNet, TrainParams, train_model,
        save_model_package, load_model_package, predict, label_free_scores,
        nearest_neighbours, parse_labels, ModelPackageError, evaluate_predictions,
        write_training_report, rescale_crops, group_scores)
"""

from locatlas.localize.data import parse_labels, rescale_crops
from locatlas.localize.infer import call_classes, group_scores, predict
from locatlas.localize.labelfree import label_free_scores
from locatlas.localize.metrics import evaluate_predictions, tune_thresholds
from locatlas.localize.model import LocalizationNet, NetConfig
from locatlas.localize.neighbours import nearest_neighbours
from locatlas.localize.package import (
    ModelPackageError,
    load_model_package,
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
    "evaluate_predictions",
    "group_scores",
    "label_free_scores",
    "load_model_package",
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
