"""Overlap metrics (pure numpy): the Dice policy of DESIGN.md."""
from __future__ import annotations

import numpy as np


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """2|P∩G| / (|P|+|G|) of two boolean masks. Both empty: NaN (left out of means)."""
    p, g = np.asarray(pred, bool), np.asarray(truth, bool)
    denom = int(p.sum()) + int(g.sum())
    if denom == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(p, g).sum()) / denom


def class_dice(pred_labels: np.ndarray, truth_labels: np.ndarray, label_id: int) -> float:
    return dice(pred_labels == label_id, truth_labels == label_id)


def nanmean(values) -> float:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


def best_case(table: dict) -> str:
    """The case with the highest final score (`bone_dice_mean`); NaN ranks lowest.
    One choice for metrics.json, results/model, the registry and the MLflow tag."""
    return max(table, key=lambda c: -np.inf if np.isnan(table[c]["bone_dice_mean"]) else table[c]["bone_dice_mean"])
