"""Postprocessing of label maps: connected-component rules per class, as nnU-Net chooses
them by cross-validation (`core.evaluation.postprocess` picks the rule; `segment`
applies it).

A rule is {"<label id>": {"op": "largest"} | {"op": "min_ml", "ml": X}} for some of the
ids; an id it does not name is left alone, and removed voxels become background (0).
Components are 26-connected in 3-D (thin rib and vertebral shells touch only at edges
and corners at CT spacing). The rule comes from the models' manifest, so it is checked
before use: unknown ops, ids or sizes are refused with the file named.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from boneseg.core.labelmap import LABEL_IDS
from boneseg.errors import DataError

CONNECTIVITY = ndimage.generate_binary_structure(3, 3)  # 26-connected
OPS = ("largest", "min_ml")


def check_rule(rule, where: str) -> dict[int, dict]:
    """A rule read from disk -> {label id: op}; a DataError naming `where` if it is not one."""
    if not isinstance(rule, dict):
        raise DataError(f"{where}: the postprocessing rule is not a mapping of label ids. Rerun the sweep, "
                        "or segment with --no-postprocess.")
    out = {}
    for key, op in rule.items():
        lid = int(key) if isinstance(key, str) and key.isdigit() else None
        ok = lid in LABEL_IDS and lid != 0 and isinstance(op, dict) and op.get("op") in OPS
        if ok and op["op"] == "min_ml":
            ml = op.get("ml")
            ok = (isinstance(ml, (int, float)) and not isinstance(ml, bool) and math.isfinite(ml)
                  and 0 < ml < 1e6)
        if not ok:
            raise DataError(f"{where}: postprocessing rule {key!r}: {op!r} is not one of {list(OPS)} for a "
                            "label id 1-4. Rerun the sweep, or segment with --no-postprocess.")
        out[lid] = {"op": op["op"], **({"ml": float(op["ml"])} if op["op"] == "min_ml" else {})}
    return out


def components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-> (component index per voxel, 0 outside; voxel count per component, index 1..n at 0..n-1)."""
    lab, n = ndimage.label(mask, structure=CONNECTIVITY)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:] if n else np.zeros(0, np.int64)
    return lab, sizes


def kept(lab: np.ndarray, sizes: np.ndarray, op: dict, voxel_ml: float) -> np.ndarray:
    """The voxels a class keeps under `op`, from its components."""
    if sizes.size == 0:
        return lab > 0
    if op["op"] == "largest":
        keep = np.zeros(sizes.size + 1, bool)
        keep[1 + int(np.argmax(sizes))] = True
    else:
        keep = np.concatenate([[False], sizes * voxel_ml >= op["ml"]])
    return keep[lab]


def apply_rule(labels: np.ndarray, rule: dict[int, dict], spacing) -> np.ndarray:
    """A label map with `rule` (from `check_rule`) applied; the input is not changed."""
    if not rule:
        return labels
    out = labels.copy()
    voxel_ml = float(np.prod(spacing)) / 1000.0
    for lid, op in rule.items():
        mask = labels == lid
        if mask.any():
            lab, sizes = components(mask)
            out[mask & ~kept(lab, sizes, op, voxel_ml)] = 0
    return out


def describe(rule: dict) -> str:
    """'bone: largest component; kidney: components >= 0.5 ml' (or 'none')."""
    parts = [f"{LABEL_IDS[int(k)]}: " + ("largest component" if op["op"] == "largest"
                                         else f"components >= {op['ml']:g} ml")
             for k, op in sorted(rule.items(), key=lambda kv: int(kv[0]))]
    return "; ".join(parts) or "none"
