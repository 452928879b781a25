"""Held-out-protein evaluation on simulated plates.

Train on the cells of some simulated proteins, test on proteins never seen in
training (disjoint names and styles), and score macro-F1 over the classes that
occur both in training and in the test set. Used by the slow test and by
``benchmarks/localize.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from locatlas.classes import load_classes
from locatlas.localize.infer import predict
from locatlas.localize.metrics import evaluate_predictions
from locatlas.localize.simdata import simulated_crops
from locatlas.localize.train import TrainParams, train_model


def simulated_proteins(n_train: int, n_test: int, *, seed: int = 7):
    """Disjoint training and test proteins from the simulator's catalogue.

    The training proteins cycle through the simulator's core classes (singles
    first, then frequent multi-label combinations); the test proteins start
    elsewhere in the cycle, like the demo atlas's test plate.
    """
    from locatlas.simulate.catalog import CORE_CLASSES, make_proteins

    train = make_proteins(
        n_train, seed=seed, prefix="SIMP", classes=CORE_CLASSES, multi_fraction=0.4,
        specials={"level": 2, "pattern": 1, "intensity": 2, "spatial": 2},
    )  # fmt: skip
    test = make_proteins(
        n_test, seed=seed, prefix="SIMQ", classes=CORE_CLASSES, multi_fraction=0.35,
        specials={"level": 1, "intensity": 1, "spatial": 1}, offset=5,
    )  # fmt: skip
    return train, test


def heldout_evaluation(
    *,
    n_train_proteins: int = 192,
    n_test_proteins: int = 36,
    fields_per_protein: int = 1,
    train_shape: tuple[int, int] = (640, 640),
    test_shape: tuple[int, int] = (1024, 1024),
    pixel_size_um: float = 0.2,
    crop_um: float = 40.0,
    size_px: int = 96,
    params: TrainParams | dict | None = None,
    seed: int = 7,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
) -> dict:
    """Simulate, train on some proteins, evaluate on unseen ones.

    The defaults favour many proteins with few cells each (one small field per
    training protein): what a model needs to generalize to new proteins is
    many different proteins per class, not many cells of the same ones.

    Parameters
    ----------
    n_train_proteins, n_test_proteins : proteins simulated for each side (disjoint).
    fields_per_protein : fields per protein.
    train_shape, test_shape : field size in px of training and test fields.
    pixel_size_um : field pixel size (µm).
    crop_um, size_px : crop geometry (µm/px = crop_um / size_px).
    params : training parameters (:class:`TrainParams` or dict).

    Returns
    -------
    dict with ``evaluation`` (:func:`evaluate_predictions` on the test cells),
    ``info`` (from :func:`train_model`), ``model``, ``n_train_cells``,
    ``n_test_cells``, ``simulate_s``, ``train_s``, ``predict_s`` and the test
    ``probs``/``labels``/``groups``.
    """
    say = log or (lambda _m: None)
    classes = load_classes()
    train_p, test_p = simulated_proteins(n_train_proteins, n_test_proteins, seed=seed)
    t0 = time.perf_counter()
    kw = {
        "fields_per_protein": fields_per_protein, "pixel_size_um": pixel_size_um,
        "crop_um": crop_um, "size_px": size_px,
    }  # fmt: skip
    tr = simulated_crops(train_p, seed=seed, shape=train_shape, **kw)
    te = simulated_crops(test_p, seed=seed + 1000, shape=test_shape, **kw)
    t1 = time.perf_counter()
    say(f"simulated {len(tr['groups'])} training and {len(te['groups'])} test cells "
        f"in {t1 - t0:.0f} s")  # fmt: skip
    model, info = train_model(
        tr["crops"], tr["masks"], tr["labels"], tr["groups"], channels=tr["channels"],
        classes=classes, pixel_size_um=tr["um_per_px"], params=params, device=device, log=say,
    )  # fmt: skip
    t2 = time.perf_counter()
    probs, _ = predict(
        model, te["crops"], te["masks"], spec=info["spec"], channels=te["channels"],
        device=device, crop_um_per_px=te["um_per_px"],
    )  # fmt: skip
    t3 = time.perf_counter()
    trained = set(info["trained_classes"])
    tested = {int(j) for j in np.flatnonzero(te["labels"].sum(axis=0) > 0)}
    ev = evaluate_predictions(
        probs, te["labels"], info["thresholds"], classes, eval_classes=sorted(trained & tested)
    )
    return {
        "evaluation": ev,
        "info": info,
        "model": model,
        "n_train_cells": len(tr["groups"]),
        "n_test_cells": len(te["groups"]),
        "simulate_s": t1 - t0,
        "train_s": t2 - t1,
        "predict_s": t3 - t2,
        "threads": torch.get_num_threads(),
        "probs": probs,
        "labels": te["labels"],
        "groups": te["groups"],
    }
