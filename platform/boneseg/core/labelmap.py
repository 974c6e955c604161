"""The label contract (docs/architecture.md): ids, names, display colours, and class merging."""
from __future__ import annotations

import numpy as np

# uint8 ids in every label map; single-class models see 0 background, 1 bone
LABEL_IDS = {0: "background", 1: "bone", 2: "kidney", 3: "vessel", 4: "liver"}
BONE = 1
# (R, G, B) 0-255 per id: the ITK-SNAP label file, previews and the report use these
LABEL_COLOURS = {1: (241, 214, 145), 2: (30, 144, 255), 3: (220, 40, 40), 4: (140, 80, 200)}
CLASSES = ("multi", "single")
LABEL_FILE = "itksnap_labels.txt"  # beside segmentations and in annotation workspaces
SLICER_FILE = "slicer_colors.ctbl"  # 3D Slicer's colour table for the same ids


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


def label_description(ids: list[int]) -> str:
    """An ITK-SNAP label description file (Segmentation > Import Label Descriptions)."""
    lines = ["################################################",
             "# ITK-SnAP Label Description File (boneseg)",
             "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
             "################################################",
             '    0     0    0    0     0  0  0    "Clear Label"']
    for i in ids:
        r, g, b = LABEL_COLOURS[i]
        lines.append(f'{i:5d} {r:5d} {g:4d} {b:4d}  1.00  1  1    "{LABEL_IDS[i]}"')
    return "\n".join(lines) + "\n"


def slicer_color_table(ids: list[int]) -> str:
    """A 3D Slicer colour table (.ctbl: `id name R G B A`), loaded with the label map so
    the segments get the study's names and colours."""
    lines = ["# 3D Slicer color table (boneseg)", "0 background 0 0 0 0"]
    lines += [f"{i} {LABEL_IDS[i]} {' '.join(map(str, LABEL_COLOURS[i]))} 255" for i in ids]
    return "\n".join(lines) + "\n"
