"""Postprocessing chosen by cross-validation, as nnU-Net's find_best_configuration does:
each candidate rule (`core.inference.postprocess`) is scored on the best variant's
out-of-fold label maps (every validation case, predicted by the fold model that did not
train on it), and a class keeps a rule only if its cross-validated mean Dice rises.

Per class, independently (a rule on one id changes no other id's voxels): keep the
largest component, or remove the components under X ml for each X of
`infer.postprocess_min_ml`. The best candidate is kept when it beats no postprocessing by
more than `infer.postprocess_min_gain`; ties keep the map as it is.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from boneseg.core.evaluation.metrics import dice, nanmean
from boneseg.core.imaging.nifti import check_pair, load_labels
from boneseg.core.inference.postprocess import components, describe, kept
from boneseg.core.labelmap import BONE, LABEL_IDS, LabelSpec


def candidates(min_ml: list[float]) -> list[dict]:
    return [{"op": "largest"}] + [{"op": "min_ml", "ml": float(x)} for x in min_ml]


def _name(op: dict) -> str:
    return "largest" if op["op"] == "largest" else f"min_ml {op['ml']:g}"


def score_case(pred: np.ndarray, truth: np.ndarray, spacing, ids: list[int], ops: list[dict]) -> dict:
    """{id: {"none": Dice, "<op name>": Dice, ...}} for one case."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    out = {}
    for lid in ids:
        p, g = pred == lid, truth == lid
        row = {"none": dice(p, g)}
        lab, sizes = components(p)
        for op in ops:
            row[_name(op)] = dice(kept(lab, sizes, op, voxel_ml), g)
        out[lid] = row
    return out


def choose_postprocessing(pairs: list[tuple[Path, Path]], classes: str, min_ml: list[float],
                          min_gain: float = 0.0) -> dict:
    """(out-of-fold label map, its truth) per validation case -> {"rule", "description",
    "cases", "per_class": {name: {"none": CV Dice, op: CV Dice, ..., "kept": op | None}},
    "bone_dice_before", "bone_dice_after"}."""
    spec = LabelSpec.of(classes)
    ids = [i for i in spec.ids if i != 0]
    ops = candidates(min_ml)
    rows = []
    for pred_path, truth_path in pairs:
        pred, truth = load_labels(pred_path), load_labels(truth_path)
        check_pair(truth, pred, truth_path, pred_path)
        rows.append(score_case(pred.data, spec.merge(truth.data), truth.spacing, ids, ops))
    rule, per_class = {}, {}
    for lid in ids:
        cv = {name: nanmean([r[lid][name] for r in rows]) for name in ["none"] + [_name(o) for o in ops]}
        best = max((o for o in ops if not np.isnan(cv[_name(o)])), key=lambda o: cv[_name(o)], default=None)
        gain = cv[_name(best)] - cv["none"] if best is not None and not np.isnan(cv["none"]) else float("nan")
        chosen = best if best is not None and gain > min_gain else None
        if chosen is not None:
            rule[str(lid)] = chosen
        per_class[LABEL_IDS[lid]] = {**{k: round(v, 6) for k, v in cv.items()},
                                     "kept": _name(chosen) if chosen else None}
    bone = per_class.get(LABEL_IDS[BONE], {})
    after = bone.get(bone["kept"]) if bone.get("kept") else bone.get("none")
    return {"rule": rule, "description": describe(rule), "cases": len(rows), "per_class": per_class,
            "bone_dice_before": bone.get("none"), "bone_dice_after": after}

