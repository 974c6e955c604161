"""Losses as pure functions of logits (B, K, *spatial) - 2-D slices or 3-D volumes - and a
target that is either ids (B, *spatial) int64 or class fractions (B, K, *spatial) float
(soft targets, summing to 1)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def as_probabilities(target: torch.Tensor, n_classes: int) -> torch.Tensor:
    if target.is_floating_point():
        return target.float()
    return F.one_hot(target, n_classes).movedim(-1, 1).float()


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The study's loss: 1/K sum_k (1 - 2 sum(o_k m_k) / (sum o_k^2 + sum m_k^2 + eps)),
    o = softmax probabilities, m = one-hot (or soft) target, sums over batch and pixels."""
    probs = logits.float().softmax(dim=1)  # (B, K, *spatial)
    onehot = as_probabilities(target, probs.shape[1])
    dims = (0, *range(2, probs.ndim))
    inter = (probs * onehot).sum(dims)
    denom = (probs * probs).sum(dims) + (onehot * onehot).sum(dims) + eps
    return (1 - 2 * inter / denom).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "dice_ce",
                      ce_weight: float = 1.0) -> torch.Tensor:
    """"dice": the study's soft Dice; "dice_ce": + ce_weight x cross-entropy (converges
    much faster in few steps, see docs/training.md)."""
    loss = soft_dice_loss(logits, target)
    if kind == "dice_ce":
        ce_target = target.float() if target.is_floating_point() else target  # probabilities or ids
        loss = loss + ce_weight * F.cross_entropy(logits.float(), ce_target)
    return loss
