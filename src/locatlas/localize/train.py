"""Training: protein-wise validation split, imbalance-aware losses, early stopping.

Determinism: every random draw (initial weights, validation split, sampling,
augmentation, dropout) comes from generators seeded by ``TrainParams.seed``,
and on CPU ``torch.use_deterministic_algorithms(True)`` is on while training,
so the same inputs, seed and thread count give bit-identical weights.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from locatlas import ROLES
from locatlas.classes import ClassList
from locatlas.localize.data import augment, channel_indices, check_crops, rescale_crops
from locatlas.localize.infer import _autocast, forward_batches, resolve_device
from locatlas.localize.losses import arcface_loss, asymmetric_loss, bce_loss
from locatlas.localize.metrics import evaluate_predictions, macro_f1, tune_thresholds
from locatlas.localize.model import LocalizationNet, NetConfig, default_widths

FORMAT = "locatlas-localization-model"
FORMAT_VERSION = 1
LOSSES = ("asl", "focal", "bce")


@dataclass
class TrainParams:
    """Training hyper-parameters (config section ``localize.train``).

    Attributes
    ----------
    seed : seeds weights, split, sampling, augmentation and dropout.
    epochs : maximum number of epochs.
    steps_per_epoch : optimizer steps per epoch (an epoch is a sampling budget, cells
        are drawn with replacement); default: enough steps to see every training
        cell once, but at least ``min_steps_per_epoch``.
    min_steps_per_epoch : lower bound of the default ``steps_per_epoch`` (small data
        sets need more steps than one pass per epoch gives).
    patience : stop after this many epochs without a better validation macro-F1.
    min_epochs : never stop before this many epochs.
    batch_size : cells per optimizer step.
    lr : peak AdamW learning rate (linear warm-up, then cosine decay to 0 at ``epochs``).
    weight_decay : AdamW weight decay (not applied to norms, biases, class centres).
    warmup_epochs : epochs of linear learning-rate warm-up.
    val_fraction : fraction of the cells (whole proteins/groups) held out for validation.
    loss : ``"asl"`` (asymmetric loss), ``"focal"`` or ``"bce"``.
    asl_gamma_neg, asl_gamma_pos, asl_clip : asymmetric-loss focusing and margin
        (``focal`` uses ``asl_gamma_pos`` for both sides and no clip).
    arcface_weight : weight of the ArcFace-style embedding loss (0 disables it).
    arcface_scale, arcface_margin : its scale ``s`` and angular margin ``m`` (radians).
    balanced_sampling : draw cells with probability ~ (class frequency)^-sampling_power
        of their rarest class instead of uniformly.
    sampling_power : 0 = uniform, 1 = fully class-balanced.
    augment : random flips, 90° rotations and intensity jitter.
    intensity_jitter : σ of the log-normal gain and (half of it) gamma jitter.
    noise : maximum σ of added Gaussian noise (field-range units).
    zoom : random scale range ±zoom (cell size varies between proteins' fields).
    shift : random shift up to ±shift × crop size (segmentation centres vary).
    roles : channel roles the model uses (default: every role of the crops).
    use_masks : feed the cell and nucleus masks as two extra channels.
    widths, stem_stride, embedding_dim, dropout, norm : architecture (see ``NetConfig``);
        ``widths=None`` picks them from the crop size (:func:`default_widths`).
    crop_size : model input size in px (default: the crops' size).
    um_per_px : model pixel size in µm (default: the crops' ``pixel_size_um``);
        crops are resampled to it before training.
    num_threads : ``torch.set_num_threads`` for training (default: leave as is).
    ema_decay : exponential moving average of the weights (per step); the averaged
        model is validated and returned (0 disables).
    bf16 : bf16 autocast on CPU too (on CUDA it is always used).
    max_time_s : stop after the epoch that passes this wall time (None: no limit).
    val_batch_size : cells per forward pass in validation.
    reference_max_cells : labelled cells kept (a seeded sample) as the
        nearest-neighbour reference set (0: none, None: all).
    """

    seed: int = 0
    epochs: int = 30
    steps_per_epoch: int | None = None
    min_steps_per_epoch: int = 50
    patience: int = 6
    min_epochs: int = 4
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.02
    warmup_epochs: float = 1.0
    val_fraction: float = 0.2
    loss: str = "asl"
    asl_gamma_neg: float = 4.0
    asl_gamma_pos: float = 0.0
    asl_clip: float = 0.05
    arcface_weight: float = 0.5
    arcface_scale: float = 16.0
    arcface_margin: float = 0.2
    balanced_sampling: bool = True
    sampling_power: float = 0.5
    augment: bool = True
    intensity_jitter: float = 0.2
    noise: float = 0.02
    zoom: float = 0.15
    shift: float = 0.05
    roles: tuple[str, ...] | None = None
    use_masks: bool = True
    widths: tuple[int, ...] | None = None
    stem_stride: int = 2
    embedding_dim: int = 128
    dropout: float = 0.2
    norm: str = "cell_max"
    crop_size: int | None = None
    um_per_px: float | None = None
    num_threads: int | None = None
    ema_decay: float = 0.998
    bf16: bool = False
    max_time_s: float | None = None
    val_batch_size: int = 256
    reference_max_cells: int | None = 20000

    @classmethod
    def from_any(cls, params: TrainParams | dict | None) -> TrainParams:
        """A TrainParams from an instance, a dict (e.g. ``config['localize']['train']``) or None."""
        if params is None:
            return cls()
        if isinstance(params, cls):
            return dataclasses.replace(params)
        if not isinstance(params, dict):
            raise TypeError(f"params must be TrainParams, dict or None, not {type(params)}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise ValueError(f"unknown training parameter(s) {unknown}; known: {sorted(names)}")
        p = cls(**params)
        for key in ("widths", "roles"):
            if getattr(p, key) is not None:
                setattr(p, key, tuple(getattr(p, key)))
        return p

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"TrainParams.loss must be one of {LOSSES}, got {self.loss!r}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"TrainParams.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("TrainParams: epochs >= 1 and batch_size >= 2 are required")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for key in ("widths", "roles"):
            if d[key] is not None:
                d[key] = list(d[key])
        return d


def split_by_group(
    groups: Sequence, labels: np.ndarray, *, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation cell indices with every group (protein) on one side only.

    Groups are shuffled with ``seed`` and then taken greedily into validation,
    preferring a group that brings a class validation does not have yet, until
    validation holds ``val_fraction`` of the cells. A group is never moved if
    that would leave one of its classes without a training group. So no
    protein leaks across the split, every class keeps training examples, and
    validation covers as many classes as the groups allow.

    Returns
    -------
    (train_idx, val_idx) sorted int64 arrays.
    """
    groups = np.asarray([str(g) for g in groups])
    n = len(groups)
    uniq, inv = np.unique(groups, return_inverse=True)
    if val_fraction <= 0 or len(uniq) < 2:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniq))
    truth = np.asarray(labels) > 0.5
    group_classes = np.zeros((len(uniq), truth.shape[1]), bool)
    np.logical_or.at(group_classes, inv, truth)
    group_size = np.bincount(inv, minlength=len(uniq))
    # A group may go to validation only if every class it has keeps at least
    # one group in training; among those, prefer one that brings a class that
    # validation does not have yet.
    in_train = group_classes.sum(axis=0)
    target = val_fraction * n
    val_groups: list[int] = []
    covered = np.zeros(truth.shape[1], bool)
    size = 0
    remaining = list(order)
    while len(remaining) > 1 and size < target:
        movable = [g for g in remaining if np.all(in_train[group_classes[g]] >= 2)]
        if not movable:
            break
        pick = next((g for g in movable if (group_classes[g] & ~covered).any()), movable[0])
        remaining.remove(pick)
        val_groups.append(pick)
        in_train = in_train - group_classes[pick]
        covered |= group_classes[pick]
        size += group_size[pick]
    is_val = np.isin(inv, val_groups)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def _sampling_weights(labels: np.ndarray, power: float) -> np.ndarray:
    """Per-cell draw weight: (frequency of the cell's rarest class)^-power."""
    truth = labels > 0.5
    freq = truth.sum(axis=0).astype(np.float64)
    inv = np.where(freq > 0, np.maximum(freq, 1.0) ** -power, 0.0)
    w = (truth * inv[None, :]).max(axis=1)
    w = np.where(truth.any(axis=1), w, inv[freq > 0].min() if (freq > 0).any() else 1.0)
    return w / w.sum()


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, for parameters and float buffers."""
    for (_, e), (_, m) in zip(ema.state_dict().items(), model.state_dict().items(), strict=True):
        if e.dtype.is_floating_point:
            e.mul_(decay).add_(m.detach(), alpha=1.0 - decay)
        else:
            e.copy_(m)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim <= 1 or name == "arc_centres":
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


@contextlib.contextmanager
def _deterministic(device: torch.device, num_threads: int | None) -> Iterator[None]:
    """Deterministic algorithms (CPU), a thread count and a private RNG state
    (the caller's torch RNG is left as it was), all restored afterwards."""
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_threads = torch.get_num_threads()
    try:
        if num_threads:
            torch.set_num_threads(int(num_threads))
        if device.type == "cpu":
            torch.use_deterministic_algorithms(True)
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        torch.use_deterministic_algorithms(prev_det)
        torch.set_num_threads(prev_threads)


def _cls_loss(p: TrainParams, logits, targets):
    if p.loss == "asl":
        return asymmetric_loss(
            logits, targets, gamma_neg=p.asl_gamma_neg, gamma_pos=p.asl_gamma_pos, clip=p.asl_clip
        )
    if p.loss == "focal":
        return asymmetric_loss(
            logits, targets, gamma_neg=p.asl_gamma_pos or 2.0, gamma_pos=p.asl_gamma_pos or 2.0,
            clip=0.0,
        )  # fmt: skip
    return bce_loss(logits, targets)


def train_model(
    crops,
    masks,
    labels: np.ndarray,
    groups: Sequence,
    *,
    channels: Sequence[str],
    classes: ClassList,
    pixel_size_um: float,
    params: TrainParams | dict | None = None,
    device: str | torch.device = "auto",
    log: Callable[[str], None] | None = None,
    callback: Callable[[int, LocalizationNet], None] | None = None,
) -> tuple[LocalizationNet, dict]:
    """Train a :class:`LocalizationNet` on labelled cell crops.

    Parameters
    ----------
    crops : (N, C, S, S) float crops (crop contract: each channel ~0..1).
    masks : (N, 2, S, S) uint8 [cell, nucleus].
    labels : (N, K) multi-hot float32 (see :func:`parse_labels`); image-level
        labels inherited by every cell of the image are fine (weak labels).
    groups : (N,) protein (or antibody) of each cell: validation holds out whole groups.
    channels : roles of the crops' channels, in order.
    classes : the class list (K == labels.shape[1]).
    pixel_size_um : µm per pixel of the crops.
    params : :class:`TrainParams`, a dict of its fields, or None for defaults.
    device : ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    log : optional callable that receives one progress line per epoch.
    callback : optional ``callback(epoch, model)`` after each epoch (monitoring;
        it must not change the model).

    Returns
    -------
    model : the best model (by validation macro-F1), in eval mode, on CPU.
    info : dict with ``history`` (per-epoch ``train_loss``, ``val_loss``,
        ``val_macro_f1``, ``lr``, ``epoch_s``, ``best_epoch``), ``thresholds``
        (per class, tuned on validation; 0.5 where validation has no positive),
        ``val_evaluation`` (:func:`evaluate_predictions` on validation; also
        under ``evaluation``; None without a validation split),
        ``val_per_class_f1`` ({class name: F1} over evaluated classes),
        ``best_epoch``, ``trained_classes`` (indices with a training positive),
        ``split`` (groups and sizes of each side), ``reference`` (embeddings,
        labels, groups and row indices of up to ``reference_max_cells``
        labelled cells, for :func:`nearest_neighbours`; pass it to
        :func:`save_model_package`) and ``spec`` (the model spec for
        :func:`save_model_package`, without checksum).
    """
    p = TrainParams.from_any(params)
    p.validate()
    check_crops(crops, masks)
    labels = np.asarray(labels, dtype=np.float32)
    n = crops.shape[0]
    if labels.shape != (n, len(classes)):
        raise ValueError(f"labels {labels.shape} must be (N={n}, K={len(classes)})")
    if len(groups) != n:
        raise ValueError(f"{len(groups)} groups for {n} crops")
    if len(channels) != crops.shape[1]:
        raise ValueError(f"{len(channels)} channel roles for {crops.shape[1]} crop channels")
    roles = tuple(p.roles) if p.roles else tuple(r for r in ROLES if r in channels)
    index = channel_indices(channels, roles)
    dev = resolve_device(device)
    say = log or (lambda _msg: None)

    size = int(p.crop_size or crops.shape[-1])
    um = float(p.um_per_px or pixel_size_um)
    if not math.isclose(um, pixel_size_um, rel_tol=1e-4) or size != crops.shape[-1]:
        crops, masks = rescale_crops(
            crops, masks, from_um_per_px=pixel_size_um, to_um_per_px=um, size_px=size
        )
    crops = np.asarray(crops)
    masks = np.asarray(masks)

    train_idx, val_idx = split_by_group(groups, labels, val_fraction=p.val_fraction, seed=p.seed)
    trained = [int(j) for j in np.flatnonzero((labels[train_idx] > 0.5).any(axis=0))]
    eval_classes = [j for j in trained if len(val_idx) and (labels[val_idx, j] > 0.5).any()]
    say(
        f"train {len(train_idx)} cells, validation {len(val_idx)} cells; "
        f"classes trained {trained}, validated {eval_classes}"
    )

    t_start = time.perf_counter()
    with _deterministic(dev, p.num_threads):
        torch.manual_seed(p.seed)
        cfg = NetConfig(
            in_roles=roles,
            n_classes=len(classes),
            use_masks=p.use_masks,
            widths=p.widths or default_widths(size),
            stem_stride=p.stem_stride,
            embedding_dim=p.embedding_dim,
            dropout=p.dropout,
            norm=p.norm,
        )
        model = LocalizationNet(cfg).to(dev).to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(_param_groups(model, p.weight_decay), lr=p.lr)
        rng = np.random.default_rng(p.seed)
        gen = torch.Generator().manual_seed(p.seed)
        steps_per_epoch = p.steps_per_epoch or max(
            p.min_steps_per_epoch, math.ceil(len(train_idx) / p.batch_size)
        )
        total = steps_per_epoch * p.epochs
        warm = max(1, int(p.warmup_epochs * steps_per_epoch))

        def lr_at(step: int) -> float:
            if step < warm:
                return p.lr * (step + 1) / warm
            return 0.5 * p.lr * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

        weights = _sampling_weights(labels[train_idx], p.sampling_power)
        ema = copy.deepcopy(model).eval() if p.ema_decay > 0 else None
        hist: dict = {"train_loss": [], "val_loss": [], "val_macro_f1": [], "lr": [], "epoch_s": []}
        best = (-1.0, math.inf)
        best_state, best_epoch, best_thr = None, 0, np.full(len(classes), 0.5, np.float32)
        bad = 0
        step = 0
        n_img = len(roles)
        for epoch in range(1, p.epochs + 1):
            t0 = time.perf_counter()
            model.train()
            if p.balanced_sampling:
                draw = rng.choice(len(train_idx), size=steps_per_epoch * p.batch_size, p=weights)
            else:
                reps = math.ceil(steps_per_epoch * p.batch_size / len(train_idx))
                draw = np.concatenate([rng.permutation(len(train_idx)) for _ in range(reps)])
            losses = []
            for b in range(steps_per_epoch):
                rows = np.sort(train_idx[draw[b * p.batch_size : (b + 1) * p.batch_size]])
                img = torch.from_numpy(np.asarray(crops[rows][:, index], dtype=np.float32))
                parts = [img]
                if p.use_masks:
                    parts.append(torch.from_numpy(masks[rows].astype(np.float32)))
                x = torch.cat(parts, 1) if len(parts) > 1 else img
                if p.augment:
                    x = augment(
                        x, n_image=n_img, generator=gen, intensity=p.intensity_jitter,
                        noise=p.noise, zoom=p.zoom, shift=p.shift,
                    )  # fmt: skip
                y = torch.from_numpy(labels[rows]).to(dev)
                x = x.to(dev).contiguous(memory_format=torch.channels_last)
                for g in opt.param_groups:
                    g["lr"] = lr_at(step)
                with _autocast(dev, "bf16" if (p.bf16 or dev.type == "cuda") else "fp32"):
                    logits, emb = model(x)
                loss = _cls_loss(p, logits, y)
                if p.arcface_weight > 0:
                    loss = loss + p.arcface_weight * arcface_loss(
                        emb, model.arc_centres, y, scale=p.arcface_scale, margin=p.arcface_margin
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if ema is not None:
                    _ema_update(ema, model, min(p.ema_decay, (1 + step) / (10 + step)))
                losses.append(float(loss.detach()))
                step += 1
            hist["train_loss"].append(float(np.mean(losses)))
            hist["lr"].append(lr_at(step - 1))
            judged = ema if ema is not None else model
            if len(val_idx):
                vlogits, _ = forward_batches(
                    judged, crops, masks, index=index, rows=val_idx,
                    batch_size=p.val_batch_size, device=dev,
                    precision="bf16" if (p.bf16 or dev.type == "cuda") else "fp32",
                )  # fmt: skip
                vl = float(
                    _cls_loss(p, torch.from_numpy(vlogits), torch.from_numpy(labels[val_idx]))
                )
                vprobs = 1.0 / (1.0 + np.exp(-vlogits.astype(np.float64)))
                thr = tune_thresholds(vprobs, labels[val_idx])
                f1 = macro_f1(vprobs, labels[val_idx], thr, eval_classes)
            else:
                vl, f1, thr = float("nan"), float("nan"), np.full(len(classes), 0.5, np.float32)
            hist["val_loss"].append(vl)
            hist["val_macro_f1"].append(f1)
            hist["epoch_s"].append(time.perf_counter() - t0)
            say(
                f"epoch {epoch}: train loss {hist['train_loss'][-1]:.4f}, val loss {vl:.4f}, "
                f"val macro-F1 {f1:.4f} ({hist['epoch_s'][-1]:.1f} s)"
            )
            if callback is not None:
                callback(epoch, judged)
            score = (f1 if not math.isnan(f1) else 0.0, vl if not math.isnan(vl) else 0.0)
            if (
                not len(val_idx)
                or score[0] > best[0] + 1e-4
                or (abs(score[0] - best[0]) <= 1e-4 and score[1] < best[1])
            ):
                best = score
                best_state = copy.deepcopy(judged.state_dict())
                best_epoch, best_thr = epoch, thr
                bad = 0
            else:
                bad += 1
            if epoch >= p.min_epochs and len(val_idx) and bad >= p.patience:
                say(f"early stop: no better validation macro-F1 for {p.patience} epochs")
                break
            if p.max_time_s is not None and time.perf_counter() - t_start > p.max_time_s:
                say(f"stop: max_time_s={p.max_time_s} reached")
                break
        model.load_state_dict(best_state)
        model = model.to("cpu").to(memory_format=torch.contiguous_format).eval()
        val_eval = None
        if len(val_idx):
            vlogits, _ = forward_batches(
                model, crops, masks, index=index, rows=val_idx, batch_size=p.val_batch_size,
                device=torch.device("cpu"), precision="fp32",
            )  # fmt: skip
            vprobs = 1.0 / (1.0 + np.exp(-vlogits.astype(np.float64)))
            val_eval = evaluate_predictions(
                vprobs, labels[val_idx], best_thr, classes, eval_classes=eval_classes
            )
        # Reference set for nearest-neighbour look-ups: embeddings of (a sample of)
        # all labelled cells, training and validation.
        ref_rows = np.arange(n)
        if p.reference_max_cells is not None and n > p.reference_max_cells:
            pick = np.random.default_rng(p.seed).choice(n, p.reference_max_cells, replace=False)
            ref_rows = np.sort(pick)
        ref_emb = np.zeros((0, cfg.embedding_dim), np.float32)
        if p.reference_max_cells != 0 and len(ref_rows):
            _, ref_emb = forward_batches(
                model, crops, masks, index=index, rows=ref_rows, batch_size=p.val_batch_size,
                device=torch.device("cpu"), precision="fp32",
            )  # fmt: skip
        else:
            ref_rows = ref_rows[:0]
    hist["best_epoch"] = best_epoch
    groups_arr = np.asarray([str(g) for g in groups])
    info = {
        "history": hist,
        "thresholds": [float(t) for t in best_thr],
        "val_evaluation": val_eval,
        "evaluation": val_eval,
        "val_per_class_f1": (
            {r["name"]: r["f1"] for r in val_eval["per_class"] if r["evaluated"]}
            if val_eval
            else {}
        ),
        "best_epoch": best_epoch,
        "trained_classes": trained,
        "split": {
            "train_groups": sorted(set(groups_arr[train_idx].tolist())),
            "val_groups": sorted(set(groups_arr[val_idx].tolist())),
            "n_train": len(train_idx),
            "n_val": len(val_idx),
        },
        "train_seconds": time.perf_counter() - t_start,
        "reference": {
            "embeddings": ref_emb,
            "labels": labels[ref_rows],
            "groups": groups_arr[ref_rows].tolist(),
            "rows": ref_rows,
        },
        "spec": {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "classes": list(classes.names),
            "class_slugs": list(classes.slugs),
            "channels": list(roles),
            "um_per_px": um,
            "crop_size": size,
            "normalization": {
                "input": "per field: each channel scaled by its robust range to ~0..1",
                "per_cell": cfg.norm,
            },
            "thresholds": [float(t) for t in best_thr],
            "trained_classes": trained,
            "architecture": cfg.to_dict(),
            "training": {
                "params": p.to_dict(),
                "n_train": len(train_idx),
                "n_val": len(val_idx),
                "best_epoch": best_epoch,
                "val_macro_f1": val_eval["macro_f1"] if val_eval else None,
            },
        },
    }
    return model, info
