"""Losses: multi-label classification under class imbalance, and metric learning.

* :func:`asymmetric_loss` (Ridnik et al. 2021, "Asymmetric Loss for Multi-Label
  Classification"): binary cross-entropy whose negatives are down-weighted by a
  focusing term and a probability margin, so the many easy negatives of a
  28-class multi-label problem do not drown the few positives. With
  ``gamma_neg == gamma_pos`` and ``clip == 0`` it is the focal loss; with all
  three 0 it is plain BCE.
* :func:`arcface_loss`: additive angular margin (Deng et al. 2019, ArcFace) on
  the unit-norm embeddings against learned class centres, extended to several
  positives per cell: each positive class is contrasted with the cell's negative
  classes only, so co-occurring locations do not compete.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def asymmetric_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    gamma_neg: float = 4.0,
    gamma_pos: float = 0.0,
    clip: float = 0.05,
    class_weights: torch.Tensor | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Asymmetric multi-label loss, summed over classes and averaged over cells.

    Parameters
    ----------
    logits : (N, K) raw scores.
    targets : (N, K) multi-hot 0/1 (soft labels in [0, 1] also work).
    gamma_neg, gamma_pos : focusing exponents for negatives and positives.
    clip : probability margin shifted off the negatives (0 disables).
    class_weights : optional (K,) weights per class.

    Returns
    -------
    Scalar tensor.
    """
    logits = logits.float()
    targets = targets.float()
    p = torch.sigmoid(logits)
    p_neg = 1.0 - p
    if clip > 0:
        p_neg = (p_neg + clip).clamp(max=1.0)
    loss = targets * torch.log(p.clamp(min=eps)) + (1 - targets) * torch.log(p_neg.clamp(min=eps))
    if gamma_neg > 0 or gamma_pos > 0:
        # The focusing weight is a constant factor (as in the reference code).
        with torch.no_grad():
            pt = p * targets + p_neg * (1 - targets)
            gamma = gamma_pos * targets + gamma_neg * (1 - targets)
            w = torch.pow(1 - pt, gamma)
        loss = loss * w
    if class_weights is not None:
        loss = loss * class_weights.to(loss)
    return -loss.sum(dim=1).mean()


def bce_loss(
    logits: torch.Tensor, targets: torch.Tensor, *, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Binary cross-entropy summed over classes, averaged over cells."""
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    if class_weights is not None:
        loss = loss * class_weights.to(loss)
    return loss.sum(dim=1).mean()


def arcface_loss(
    embeddings: torch.Tensor,
    centres: torch.Tensor,
    targets: torch.Tensor,
    *,
    scale: float = 16.0,
    margin: float = 0.2,
) -> torch.Tensor:
    """Multi-positive ArcFace loss.

    For cell ``i`` and each of its positive classes ``p`` the loss is
    ``-log(exp(s·cos(θ_ip + m)) / (exp(s·cos(θ_ip + m)) + Σ_{j negative} exp(s·cos θ_ij)))``,
    averaged over the positives of the cell and then over cells that have at
    least one positive (cells without labels do not contribute).

    Parameters
    ----------
    embeddings : (N, D) embeddings (normalized here).
    centres : (K, D) class centres (normalized here).
    targets : (N, K) multi-hot 0/1.
    scale : ``s``, the inverse temperature.
    margin : ``m``, the additive angular margin in radians.
    """
    e = F.normalize(embeddings.float(), dim=1)
    w = F.normalize(centres.float(), dim=1)
    cos = (e @ w.t()).clamp(-1 + 1e-6, 1 - 1e-6)
    pos = targets > 0.5
    has_pos = pos.any(dim=1)
    if not bool(has_pos.any()):
        return cos.sum() * 0.0
    cos, pos = cos[has_pos], pos[has_pos]
    # cos(θ + m), with the usual fix that keeps it monotonic for θ + m > π.
    sin = torch.sqrt(1.0 - cos * cos)
    cos_m = cos * math.cos(margin) - sin * math.sin(margin)
    th, mm = math.cos(math.pi - margin), math.sin(math.pi - margin) * margin
    cos_m = torch.where(cos > th, cos_m, cos - mm)
    # A large finite fill (not -inf) keeps gradients finite for a cell whose
    # classes are all positive.
    neg_logits = (scale * cos).masked_fill(pos, -1e4)
    # log Σ_neg exp(s cos θ_ij), one per cell.
    neg_lse = torch.logsumexp(neg_logits, dim=1, keepdim=True)
    pos_logits = scale * cos_m
    # -log softmax of each positive against the negatives: softplus(neg_lse - pos).
    per = F.softplus(neg_lse - pos_logits)
    per = torch.where(pos, per, torch.zeros_like(per))
    per_cell = per.sum(dim=1) / pos.sum(dim=1)
    return per_cell.mean()
