"""Model packages: weights (safetensors) plus a YAML spec, checked on load.

A package is a directory with

* ``model.safetensors`` — the state dict (a ``.pt`` state dict also loads, with
  ``torch.load(weights_only=True)``, so no pickled code ever runs);
* ``model.yaml`` — the spec: format and version, classes, channel roles, µm/px,
  crop size, normalization, per-class thresholds, architecture, training
  summary, and the weights' sha256. ``model.yaml`` is written last, so a
  package without it is unfinished.

Loading refuses, with :class:`ModelPackageError` naming the file and the
reason, a package whose checksum does not match, whose spec is incomplete or
inconsistent, or whose classes differ from the ones the caller expects.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import yaml

import locatlas
from locatlas import ROLES
from locatlas.atomic import atomic_path, sha256_file, write_text
from locatlas.classes import ClassList
from locatlas.localize.model import LocalizationNet, NetConfig
from locatlas.localize.train import FORMAT, FORMAT_VERSION

SPEC_NAME = "model.yaml"
WEIGHTS_NAME = "model.safetensors"
REFERENCE_NAME = "reference.safetensors"


class ModelPackageError(ValueError):
    """A model package is missing, corrupt, or does not fit the data or config."""


def _fail(where, msg: str) -> None:
    raise ModelPackageError(f"{where}: {msg}")


def validate_spec(spec: dict, *, where: str | os.PathLike = "model spec") -> dict:
    """Check a model spec; return it. Raise :class:`ModelPackageError` naming the problem."""
    if not isinstance(spec, dict):
        _fail(where, f"the spec must be a mapping, got {type(spec).__name__}")
    if spec.get("format") != FORMAT:
        _fail(where, f"format is {spec.get('format')!r}, expected {FORMAT!r}")
    fv = spec.get("format_version")
    if not isinstance(fv, int) or not 1 <= fv <= FORMAT_VERSION:
        _fail(
            where,
            f"format_version {fv!r} is not supported (this locatlas reads 1..{FORMAT_VERSION})",
        )
    required = ["classes", "channels", "um_per_px", "crop_size", "architecture", "thresholds"]
    missing = [k for k in required if k not in spec]
    if missing:
        _fail(where, f"missing key(s) {missing}")
    classes = spec["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        _fail(where, "classes must be a non-empty list of class names")
    if len(set(classes)) != len(classes):
        _fail(where, "classes contain duplicates")
    slugs = spec.get("class_slugs")
    if slugs is not None and len(slugs) != len(classes):
        _fail(where, f"{len(slugs)} class_slugs for {len(classes)} classes")
    channels = spec["channels"]
    if not isinstance(channels, list) or not channels:
        _fail(where, "channels must be a non-empty list of roles")
    bad = [c for c in channels if c not in ROLES]
    if bad or len(set(channels)) != len(channels):
        _fail(where, f"channels {channels}: unknown or repeated role(s) {bad}; roles are {ROLES}")
    um = spec["um_per_px"]
    if not isinstance(um, (int, float)) or not um > 0:
        _fail(where, f"um_per_px must be a positive number, got {um!r}")
    size = spec["crop_size"]
    if not isinstance(size, int) or size < 8:
        _fail(where, f"crop_size must be an integer >= 8, got {size!r}")
    thr = spec["thresholds"]
    if (
        not isinstance(thr, list)
        or len(thr) != len(classes)
        or not all(isinstance(t, (int, float)) and 0 <= t <= 1 for t in thr)
    ):
        _fail(where, f"thresholds must be {len(classes)} numbers in [0, 1]")
    arch = spec["architecture"]
    if not isinstance(arch, dict):
        _fail(where, "architecture must be a mapping")
    try:
        cfg = NetConfig.from_dict(arch)
    except (TypeError, ValueError) as exc:
        _fail(where, f"architecture is invalid: {exc}")
    if cfg.n_classes != len(classes):
        _fail(where, f"architecture has {cfg.n_classes} outputs for {len(classes)} classes")
    if list(cfg.in_roles) != list(channels):
        _fail(where, f"architecture in_roles {list(cfg.in_roles)} differ from channels {channels}")
    step = cfg.stem_stride * 2 ** (len(cfg.widths) - 1)
    if size < step:
        _fail(where, f"crop_size {size} is smaller than the network's total stride {step}")
    return spec


def _clean(obj):
    """Plain Python types for YAML (numpy scalars/arrays, tuples, paths)."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_model_package(
    model: LocalizationNet,
    out_dir: str | os.PathLike,
    *,
    spec: dict,
    reference: dict | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``model.yaml`` into ``out_dir``.

    Parameters
    ----------
    model : the trained network.
    out_dir : package directory (created).
    spec : the model spec, e.g. ``info["spec"]`` from :func:`train_model`; its
        ``architecture`` is replaced by the model's own, and ``weights``
        (file, format, sha256), ``sha256`` (the same), ``embedding_dim``,
        ``model_id``, ``version`` (default "1") and ``locatlas_version`` are
        filled in. Required: ``classes``, ``channels``, ``um_per_px``,
        ``crop_size`` (alias ``crop_size_px``) and ``thresholds``.
    reference : optional nearest-neighbour reference set, e.g. ``info["reference"]``
        from :func:`train_model`: ``embeddings`` (M, D) and ``labels`` (M, K);
        written to ``reference.safetensors`` (checksum in the spec) and read
        back with :func:`load_reference`.

    Returns
    -------
    The package directory. The same model and spec give byte-identical files.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = dict(spec)
    if "crop_size" not in spec and "crop_size_px" in spec:  # alias used by some callers
        spec["crop_size"] = spec.pop("crop_size_px")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights = out / WEIGHTS_NAME
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    digest = sha256_file(weights)
    full = _clean(dict(spec))
    full["architecture"] = model.config.to_dict()
    full.setdefault("format", FORMAT)
    full.setdefault("format_version", FORMAT_VERSION)
    full.setdefault("version", "1")
    full["model_id"] = f"loc-{digest[:12]}"
    full["locatlas_version"] = locatlas.__version__
    full["weights"] = {"file": WEIGHTS_NAME, "format": "safetensors", "sha256": digest}
    full["sha256"] = digest
    full["embedding_dim"] = model.config.embedding_dim
    if reference is not None:
        emb = np.asarray(reference["embeddings"], dtype=np.float32)
        lab = np.asarray(reference["labels"])
        if emb.ndim != 2 or emb.shape[1] != model.config.embedding_dim or len(lab) != len(emb):
            raise ValueError(
                f"reference: embeddings {emb.shape} and labels {lab.shape} do not fit the model"
            )
        ref_path = out / REFERENCE_NAME
        tensors = {
            "embeddings": torch.from_numpy(np.ascontiguousarray(emb)),
            "labels": torch.from_numpy(np.ascontiguousarray(lab > 0.5).astype(np.uint8)),
        }
        with atomic_path(ref_path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
        full["reference"] = {
            "file": REFERENCE_NAME,
            "n_cells": int(len(emb)),
            "sha256": sha256_file(ref_path),
        }
    else:
        full.pop("reference", None)
    validate_spec(full, where=out / SPEC_NAME)
    write_text(yaml.safe_dump(full, sort_keys=True, allow_unicode=True), out / SPEC_NAME)
    return out


def load_model_package(
    path: str | os.PathLike,
    *,
    classes: ClassList | None = None,
    device: str | torch.device = "cpu",
) -> tuple[LocalizationNet, dict]:
    """Load and check a model package.

    Parameters
    ----------
    path : the package directory or its ``model.yaml``.
    classes : when given, the package's class names must equal these.
    device : where to put the model.

    Returns
    -------
    (model in eval mode, spec dict).

    Raises
    ------
    ModelPackageError when the package is missing, its spec is invalid, the
    weights' sha256 differs from the spec, the weights do not fit the
    architecture, or the classes differ from ``classes``.
    """
    p = Path(path)
    spec_path = p / SPEC_NAME if p.is_dir() else p
    if not spec_path.is_file():
        _fail(spec_path, "model spec not found (is this a locatlas model package?)")
    try:
        spec = yaml.safe_load(spec_path.read_text())
    except yaml.YAMLError as exc:
        _fail(spec_path, f"not valid YAML: {exc}")
    validate_spec(spec, where=spec_path)
    w = spec.get("weights") or {}
    if not isinstance(w, dict):
        _fail(spec_path, "weights must be a mapping (file, format, sha256)")
    expected = w.get("sha256", spec.get("sha256"))
    if not expected:
        _fail(spec_path, "no sha256 of the weights in the spec; refusing to load unchecked weights")
    if "sha256" in spec and "sha256" in w and spec["sha256"] != w["sha256"]:
        _fail(spec_path, "sha256 and weights.sha256 disagree")
    wpath = spec_path.parent / str(w.get("file", WEIGHTS_NAME))
    if not wpath.is_file():
        _fail(spec_path, f"weights file {wpath} not found")
    digest = sha256_file(wpath)
    if digest != expected:
        _fail(
            wpath,
            f"sha256 {digest} does not match the spec's {expected} "
            "(the weights were changed or corrupted; refusing to load)",
        )
    if classes is not None and list(classes.names) != list(spec["classes"]):
        _fail(
            spec_path,
            f"the model's {len(spec['classes'])} classes differ from the configured "
            f"{len(classes)} classes (first difference: "
            f"{next(((a, b) for a, b in zip(spec['classes'], classes.names, strict=False) if a != b), 'length')})",
        )
    fmt = w.get("format", "safetensors")
    try:
        if fmt == "safetensors":
            from safetensors.torch import load_file

            state = load_file(str(wpath))
        elif fmt in ("torch", "pt", "state_dict"):
            state = torch.load(wpath, map_location="cpu", weights_only=True)
        else:
            _fail(spec_path, f"unknown weights format {fmt!r}")
    except (OSError, RuntimeError, ValueError) as exc:
        if isinstance(exc, ModelPackageError):
            raise
        _fail(wpath, f"cannot read weights: {exc}")
    model = LocalizationNet(NetConfig.from_dict(spec["architecture"]))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        _fail(wpath, f"weights do not fit the architecture in the spec: {exc}")
    model.eval()
    return model.to(device), spec


def load_reference(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """The nearest-neighbour reference set stored in a model package.

    Returns
    -------
    embeddings (M, D) float32 and labels (M, K) float32 multi-hot.

    Raises
    ------
    ModelPackageError when the package has no reference set or its checksum fails.
    """
    from safetensors.torch import load_file

    p = Path(path)
    spec_path = p / SPEC_NAME if p.is_dir() else p
    if not spec_path.is_file():
        _fail(spec_path, "model spec not found (is this a locatlas model package?)")
    spec = yaml.safe_load(spec_path.read_text()) or {}
    ref = spec.get("reference")
    if not isinstance(ref, dict) or "file" not in ref or "sha256" not in ref:
        _fail(spec_path, "the package has no reference set (train with reference_max_cells > 0)")
    rpath = spec_path.parent / str(ref["file"])
    if not rpath.is_file():
        _fail(spec_path, f"reference file {rpath} not found")
    digest = sha256_file(rpath)
    if digest != ref["sha256"]:
        _fail(rpath, f"sha256 {digest} does not match the spec's {ref['sha256']}")
    tensors = load_file(str(rpath))
    return tensors["embeddings"].numpy().astype(np.float32), tensors["labels"].numpy().astype(
        np.float32
    )
