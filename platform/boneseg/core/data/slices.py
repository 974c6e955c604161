"""Training slices: every case in-plane resampled and HU-windowed for 2.5-D input.

Per case: data/slices/<case>/image.npy (Z, S, S) float16 in [0, 1] after the HU window,
label.npy (Z, S, S) uint8 (nearest ids) and soft.npy (Z, K, S, S) uint8: the fraction of
each slice pixel's full-resolution area that each label covers, x255 (area-averaged
one-hot; the soft training targets, see docs/training.md), z-first so one slice (and its
neighbours) is one contiguous, memory-mappable read. data/slices/index.json records the
window and size (the preprocessing that training and inference share) and each case's
original grid. The 2.5-D stack is assembled when read (`preprocess.stack_25d`), not
stored three times. Each worker holds one case at a time: peak memory is one volume per worker
(`core.parallel`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from boneseg.core.config import Config
from boneseg.core.data.preprocess import resize_planes, resize_soft, window_planes
from boneseg.core.imaging.nifti import load_ct, load_labels
from boneseg.core.io import save_npy, write_json
from boneseg.core.layout import SLICE_IMAGE, SLICE_INDEX, TARGET_FILES, find_cases, label_path
from boneseg.core.parallel import Pool, file_sizes
from boneseg.errors import DataError


def slice_case(case: dict, labels_dir: Path, size: int, window) -> dict:
    ct = load_ct(case["ct"])
    lab_path = label_path(labels_dir, case["case"])
    if not lab_path.is_file():
        raise DataError(
            f"{lab_path}: label map for case {case['case']} not found. Run `boneseg labels` first."
        )
    lab = load_labels(lab_path, ct, case["ct"])
    image = window_planes(ct.data, size, window).astype(np.float16)
    return {
        "image": image,
        "label": resize_planes(lab.data, size, "labels"),
        "soft": resize_soft(lab.data, size),
        "info": {
            "cohort": case["cohort"],
            "phase": case["phase"],
            "z": int(ct.shape[2]),
            "shape": list(ct.shape),
            "spacing": [round(s, 5) for s in ct.spacing],
            "affine": np.round(ct.affine, 6).tolist(),
        },
    }


def write_case(case: dict, labels_dir: Path, size: int, window, out: Path) -> dict:
    """One case's slices, written to data/slices/<case>/; returns its index entry (a
    `core.parallel` case function: one volume in memory per worker)."""
    res = slice_case(case, labels_dir, size, window)
    save_npy(out / case["case"] / SLICE_IMAGE, res["image"])
    save_npy(out / case["case"] / TARGET_FILES["hard"], res["label"])
    save_npy(out / case["case"] / TARGET_FILES["soft"], res["soft"])
    return res["info"]


def build_slices(cfg: Config, progress: bool = True, pool: Pool | None = None) -> dict:
    out = Path(cfg.data.slices_dir)
    size, window = cfg.data.image_size, tuple(cfg.data.window)
    index = {"image_size": size, "window": list(window),
             "layout": "(Z, S, S) float16 image, uint8 label; (Z, 5, S, S) uint8 soft (fractions x255)",
             "cases": {}}
    cases = find_cases(cfg.data.raw_dir)
    items = [(c, Path(cfg.data.labels_dir), size, window, out) for c in cases]
    infos = (pool or Pool()).map(write_case, items, [c["case"] for c in cases], "slices", progress,
                                 file_sizes(c["ct"] for c in cases))
    index["cases"] = {c["case"]: info for c, info in zip(cases, infos)}
    write_json(out / SLICE_INDEX, index)
    return index
