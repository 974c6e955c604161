"""Overlap metrics and their reducers (pure numpy), with the Dice policy of docs/architecture.md.

One level each: `case_metrics` (one patient), `fold_summary` (a fold's validation
patients: the fold score), `variant_scores` (a variant's folds: the study's final score).
NaN (both masks empty) is left out of every mean and counted.
"""
from __future__ import annotations

import numpy as np

from boneseg.core.labelmap import BONE, LABEL_IDS


def dice(pred: np.ndarray, truth: np.ndarray, empty: float = float("nan")) -> float:
    """2|P∩G| / (|P|+|G|) of two boolean masks; `empty` when both are empty (NaN: left
    out of means). Ground truth empty, prediction not: 0."""
    p, g = np.asarray(pred, bool), np.asarray(truth, bool)
    denom = int(p.sum()) + int(g.sum())
    if denom == 0:
        return empty
    return 2.0 * int(np.logical_and(p, g).sum()) / denom


def nanmean(values) -> float:
    """Mean of the values that are neither None nor NaN (NaN if none is left)."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


def n_nan(values) -> int:
    return int(sum(1 for x in values if x is None or x != x))


def pooled_dice(tp: float, fp: float, fn: float) -> float:
    """One Dice over all voxels of several patients: 2TP / (2TP + FP + FN)."""
    return 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else float("nan")


def case_metrics(pred: np.ndarray, truth: np.ndarray, spacing, n_classes: int) -> dict:
    """pred/truth (X, Y, Z) label maps on the same grid -> metrics of one patient."""
    ml = float(np.prod(spacing)) / 1000.0
    out = {"bone_dice": dice(pred == BONE, truth == BONE), "dice": {}, "tp": {}, "fp": {}, "fn": {},
           "volume_ml_pred": {}, "volume_ml_truth": {}}
    for lid in range(1, n_classes):
        name = LABEL_IDS[lid]
        p, g = pred == lid, truth == lid
        out["dice"][name] = dice(p, g)
        out["tp"][name] = int((p & g).sum())
        out["fp"][name] = int((p & ~g).sum())
        out["fn"][name] = int((~p & g).sum())
        out["volume_ml_pred"][name] = round(int(p.sum()) * ml, 3)
        out["volume_ml_truth"][name] = round(int(g.sum()) * ml, 3)
    return out


def fold_summary(rows: list[dict]) -> dict:
    """Per-patient rows -> the fold: score = mean bone Dice over patients, pooled Dice,
    bone TP/FP/FN, per-class mean Dice, mean loss, and how many patients were NaN."""
    bone = [r["bone_dice"] for r in rows]
    classes = sorted({k for r in rows for k in r["dice"]})
    tp, fp, fn = (sum(r[k].get("bone", 0) for r in rows) for k in ("tp", "fp", "fn"))
    return {
        "bone_dice": nanmean(bone),
        "bone_dice_pooled": pooled_dice(tp, fp, fn),
        "bone_tp": tp, "bone_fp": fp, "bone_fn": fn,
        "n_cases": len(rows),
        "n_nan": n_nan(bone),
        "loss": nanmean([r["loss"] for r in rows]),
        "dice": {c: nanmean([r["dice"].get(c) for r in rows]) for c in classes},
    }


def variant_scores(folds: list[dict]) -> dict:
    """A variant's trial summaries (one per fold) -> its scores: the study's final score
    (mean of the fold scores), the sample std over folds, the pooled Dice over every
    validation patient, the mean test Dice over fold models, and the NaN counts."""
    scores = np.array([f["bone_dice"] for f in folds], dtype=float)
    kept = scores[~np.isnan(scores)]
    tp, fp, fn = (sum(f["mean"][k] for f in folds) for k in ("bone_tp", "bone_fp", "bone_fn"))
    test = [f["test"]["bone_dice"] for f in folds]
    return {
        "bone_dice_mean": float(kept.mean()) if kept.size else float("nan"),
        # sample std; one fold has no spread (0), several with fewer than 2 scores: NaN
        "bone_dice_std": float(kept.std(ddof=1))
        if kept.size > 1
        else 0.0
        if len(folds) <= 1
        else float("nan"),
        "bone_dice_pooled": pooled_dice(tp, fp, fn),
        "test_bone_dice": nanmean(test),
        "n_folds": len(folds),
        "n_nan_folds": int(np.isnan(scores).sum()),
        "n_nan_cases": int(sum(f["mean"].get("n_nan", 0) for f in folds)),
    }


def best_variant(table: dict) -> str:
    """The variant with the highest final score (`bone_dice_mean`); NaN ranks lowest.
    One choice for metrics.json, results/model, the registry and the MLflow tag."""
    return max(
        table, key=lambda c: -np.inf if np.isnan(table[c]["bone_dice_mean"]) else table[c]["bone_dice_mean"]
    )
