"""The label contract (docs/architecture.md): ids, names, display colours, and class merging."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# uint8 ids in every label map; single-class models see 0 background, 1 bone
LABEL_IDS = {0: "background", 1: "bone", 2: "kidney", 3: "vessel", 4: "liver"}
BONE = 1
# (R, G, B) 0-255 per id: the ITK-SNAP label file, previews and the report use these
LABEL_COLOURS = {1: (241, 214, 145), 2: (30, 144, 255), 3: (220, 40, 40), 4: (140, 80, 200)}
LABEL_FILE = "itksnap_labels.txt"  # beside segmentations and in annotation workspaces
SLICER_FILE = "slicer_colors.ctbl"  # 3D Slicer's colour table for the same ids


@dataclass(frozen=True)
class LabelSpec:
    """Which label ids a model, a target or an output holds: the one answer to "which ids,
    how many channels, bone only?" (like nnU-Net's LabelManager).

    A multi-class spec holds every id of LABEL_IDS; a single-class one holds background
    and bone, kidney/vessel/liver merged into background. `LabelSpec.of` takes a model's
    classes ("multi", "single") or an output choice ("all", "bone")."""

    name: str  # "multi" | "single"

    @staticmethod
    def of(classes: str) -> LabelSpec:
        spec = {"multi": MULTI, "all": MULTI, "single": SINGLE, "bone": SINGLE}.get(classes)
        if spec is None:
            raise ValueError(f"classes: expected 'multi' or 'single' (or 'all'/'bone'), got {classes!r}")
        return spec

    @property
    def bone_only(self) -> bool:
        return self.name == "single"

    @property
    def channels(self) -> int:
        """A model's output channels: 5 (background + 4 classes) or 2 (background, bone)."""
        return 2 if self.bone_only else len(LABEL_IDS)

    @property
    def ids(self) -> list[int]:
        """The foreground ids a label map of this spec can hold."""
        return [BONE] if self.bone_only else [i for i in LABEL_IDS if i]

    def narrowed(self, other: LabelSpec) -> LabelSpec:
        """What an output holds when a model of this spec is asked for `other`'s ids."""
        return SINGLE if self.bone_only or other.bone_only else MULTI

    def merge(self, label):
        """Label ids (numpy or torch, any shape) with this spec's ids: unchanged for
        multi-class, 1 for bone and 0 for the rest for single-class, in the same dtype."""
        if not self.bone_only:
            return label
        hit = label == BONE
        return hit.astype(label.dtype) if isinstance(hit, np.ndarray) else hit.to(label.dtype)

    def soft(self, stored_u8):
        """Stored fractions x255, (..., 5, S, S) uint8 (numpy or torch) -> float32 class
        probabilities that sum to 1 over the K axis, K = `channels`."""
        if isinstance(stored_u8, np.ndarray) or not hasattr(stored_u8, "float"):
            frac = np.asarray(stored_u8, dtype=np.float32)
            frac /= np.maximum(frac.sum(axis=-3, keepdims=True), 1.0)  # undo the x255 rounding
            cat = lambda parts: np.concatenate(parts, axis=-3)  # noqa: E731
        else:  # a torch tensor (torch is imported already)
            import torch

            frac = stored_u8.float()
            frac = frac / frac.sum(dim=-3, keepdim=True).clamp_min(1.0)
            cat = lambda parts: torch.cat(parts, dim=-3)  # noqa: E731
        if not self.bone_only:
            return frac
        bone = frac[..., BONE:BONE + 1, :, :]
        return cat([1.0 - bone, bone])


MULTI = LabelSpec("multi")
SINGLE = LabelSpec("single")


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
