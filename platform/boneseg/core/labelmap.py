"""The label contract (docs/architecture.md): ids, names, display colours, and class merging."""
from __future__ import annotations

import numpy as np

# uint8 ids in every label map; single-class models see 0 background, 1 bone
LABEL_IDS = {0: "background", 1: "bone", 2: "kidney", 3: "vessel", 4: "liver"}
BONE = 1
# (R, G, B) 0-255 per id: the ITK-SNAP label file, previews and the report use these
LABEL_COLOURS = {1: (241, 214, 145), 2: (30, 144, 255), 3: (220, 40, 40), 4: (140, 80, 200)}
CLASSES = ("multi", "single")


def n_classes(classes: str) -> int:
    """Output channels of a model: 5 for multi-class, 2 (background, bone) for single."""
    check_classes(classes)
    return len(LABEL_IDS) if classes == "multi" else 2


def check_classes(classes: str) -> None:
    if classes not in CLASSES:
        raise ValueError(f"classes: expected 'multi' or 'single', got {classes!r}")


def merge_classes(label: np.ndarray, classes: str) -> np.ndarray:
    """Multi-class keeps ids 0-4; single-class merges kidney/vessel/liver (2-4) into 0."""
    check_classes(classes)
    return (label == BONE).astype(label.dtype) if classes == "single" else label


def merge_soft_classes(soft_u8: np.ndarray, classes: str) -> np.ndarray:
    """(..., 5, S, S) uint8 fractions x255 -> float32 class probabilities that sum to 1
    over the K axis: 5 for multi-class, 2 (background, bone) for single-class."""
    check_classes(classes)
    frac = np.asarray(soft_u8, dtype=np.float32)
    frac /= np.maximum(frac.sum(axis=-3, keepdims=True), 1.0)  # undo x255 rounding
    if classes == "single":
        bone = frac[..., BONE:BONE + 1, :, :]
        return np.concatenate([1.0 - bone, bone], axis=-3)
    return frac
