"""Labelling effort: what turning a proposal into the final label map costs an annotator,
counted the way one works in ITK-SNAP (docs/labelling.md):

- voxels: voxels whose label must change (painted with the brush or polygon tool);
- components: connected regions of those voxels, one per target label (face-connected
  in 3-D): each is one relabel action when a whole region is wrong (a kidney proposed
  as bone is one "paint over" fill, not thousands of voxels) - a lower bound on clicks;
- slices: axial slices with at least one change (each must be visited and checked).

Label maps are (X, Y, Z) uint8 ids on one grid; Z is the axial axis (canonical RAS+).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from boneseg.core.evaluation.metrics import dice
from boneseg.core.labelmap import BONE, LABEL_IDS

FACES = ndimage.generate_binary_structure(3, 1)  # 6-connected: regions touching by a face


def box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The slices of `mask`'s bounding box; None if the mask is empty. Work on a region's
    box instead of the whole volume: a bone or an organ fills a small part of a CT."""
    out = []
    for ax in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax)))
        if hit.size == 0:
            return None
        out.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(out)


def effort(start: np.ndarray, final: np.ndarray) -> dict:
    """The effort of editing `start` into `final` (same shape): {voxels, components, slices}."""
    if start.shape != final.shape:
        raise ValueError(f"effort: shapes differ, {start.shape} vs {final.shape}")
    changed = start != final
    where = box(changed)
    if where is None:
        return {"voxels": 0, "components": 0, "slices": 0}
    changed, final = changed[where], final[where]  # a region's components lie inside its box
    components = 0
    for k in np.flatnonzero(np.bincount(final[changed], minlength=256)):
        region = changed & (final == k)
        components += ndimage.label(region[box(region)], structure=FACES)[1]
    return {"voxels": int(changed.sum()), "components": int(components),
            "slices": int(changed.any(axis=(0, 1)).sum())}


def proposal_qa(mask_or_map: np.ndarray, truth: np.ndarray) -> dict:
    """A proposal against the truth (ids 0-4): its bone Dice, the share of the proposed
    bone that lies on each other organ, and the effort of correcting it into the truth.
    A bone mask (bool) proposes id 1 where True; a label map proposes its own ids."""
    start = mask_or_map.astype(np.uint8) if mask_or_map.dtype == bool else mask_or_map
    bone = start == BONE
    n = max(int(bone.sum()), 1)
    under = np.bincount(truth[bone], minlength=256)  # what the proposed bone lies on
    share = {f"on_{LABEL_IDS[k]}": round(float(under[k] / n), 4) for k in (2, 3, 4)}
    return {"bone_dice": dice(bone, truth == BONE), **share, **effort(start, truth)}
