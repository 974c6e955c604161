"""`boneseg slices`: in-plane resampled, HU-windowed volumes for 2.5-D input.

Per case: data/slices/<case>/image.npy (Z, S, S) float16 in [0, 1] after the HU window,
label.npy (Z, S, S) uint8 (nearest ids) and soft.npy (Z, K, S, S) uint8: the fraction of
each slice pixel's full-resolution area that each label covers, x255 (area-averaged
one-hot; the training targets, see docs/training.md), z-first so one slice (and its
neighbours) is one contiguous, memory-mappable read. data/slices/index.json records the window and size
(the preprocessing that training and inference share) and each case's original grid.
The 2.5-D stack (z-1, z, z+1; edges repeat) is assembled when read (`SliceDataset`),
not stored three times. Cases are processed one at a time: peak memory is one volume.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from boneseg.config import Config
from boneseg.errors import DataError
from boneseg.labels import find_cases
from boneseg.nifti import atomic_path, atomic_write_text, load_ct, load_labels

INDEX = "index.json"


def apply_window(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    lo, hi = window
    return np.clip((hu.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)


def _plane_mode(shape_xyz, size: int) -> dict:
    """Interpolation for in-plane resampling: area when shrinking, bilinear when growing."""
    if size <= min(shape_xyz[:2]):
        return {"mode": "area"}
    return {"mode": "bilinear", "align_corners": False}


def resize_planes(vol_xyz: np.ndarray, size: int, kind: str) -> np.ndarray:
    """(X, Y, Z) -> (Z, size, size). kind "image": area when shrinking, bilinear when
    growing; "labels": nearest (ids kept exactly)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(vol_xyz, 2, 0)))[:, None]  # (Z, 1, X, Y)
    if kind == "labels":
        out = F.interpolate(t.float(), size=(size, size), mode="nearest-exact")
        return out[:, 0].to(torch.uint8).numpy()
    return F.interpolate(t.float(), size=(size, size), **_plane_mode(vol_xyz.shape, size))[:, 0].numpy()


def window_planes(ct_xyz: np.ndarray, size: int, window) -> np.ndarray:
    """CT (X, Y, Z) in HU -> (Z, size, size) float32 model input in [0, 1]: the in-plane
    resampling and HU window that training slices (`slice_case`) and inference
    (`boneseg segment`) share."""
    return apply_window(resize_planes(ct_xyz, size, "image"), tuple(window))


def resize_soft(lab_xyz: np.ndarray, size: int, n_classes: int = 5, chunk: int = 16) -> np.ndarray:
    """(X, Y, Z) ids -> (Z, K, size, size) uint8 label fractions x255: the one-hot map
    area-averaged onto the slice grid (bilinear when growing), a few slices at a time so
    peak memory stays at a few planes. Thin shells that nearest sampling keeps or drops at
    random become partial memberships whose 0.5 contour lies on the true boundary."""
    import torch
    import torch.nn.functional as F

    z_first = np.moveaxis(lab_xyz, 2, 0)
    mode = _plane_mode(lab_xyz.shape, size)
    eye = torch.eye(n_classes)
    out = np.empty((z_first.shape[0], n_classes, size, size), np.uint8)
    for i in range(0, z_first.shape[0], chunk):
        ids = torch.from_numpy(np.ascontiguousarray(z_first[i:i + chunk])).long()
        onehot = eye[ids].permute(0, 3, 1, 2)  # (z, K, X, Y)
        frac = F.interpolate(onehot, size=(size, size), **mode)
        out[i:i + chunk] = (frac * 255).round_().clamp_(0, 255).to(torch.uint8).numpy()
    return out


def resize_back(planes_zss: np.ndarray, shape_xy: tuple[int, int]) -> np.ndarray:
    """(Z, C, S, S) float probabilities -> (X, Y, Z, C) on the original in-plane grid."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(planes_zss)).float()
    out = F.interpolate(t, size=tuple(shape_xy), mode="bilinear", align_corners=False)
    return np.transpose(out.numpy(), (2, 3, 0, 1))


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr)


def slice_case(case: dict, labels_dir: Path, size: int, window) -> dict:
    ct = load_ct(case["ct"])
    lab_path = Path(labels_dir) / f"{case['case']}.nii.gz"
    if not lab_path.is_file():
        raise DataError(f"{lab_path}: label map for case {case['case']} not found. Run `boneseg labels` first.")
    lab = load_labels(lab_path, ct, case["ct"])
    image = window_planes(ct.data, size, window).astype(np.float16)
    return {"image": image, "label": resize_planes(lab.data, size, "labels"), "soft": resize_soft(lab.data, size),
            "info": {"cohort": case["cohort"], "phase": case["phase"], "z": int(ct.shape[2]),
                     "shape": list(ct.shape), "spacing": [round(s, 5) for s in ct.spacing],
                     "affine": np.round(ct.affine, 6).tolist()}}


def build_slices(cfg: Config, progress: bool = True) -> dict:
    from tqdm import tqdm

    out = Path(cfg.data.slices_dir)
    size, window = cfg.data.image_size, tuple(cfg.data.window)
    index = {"image_size": size, "window": list(window), "layout": "(Z, S, S) float16 image, uint8 label; (Z, 5, S, S) uint8 soft (fractions x255)",
             "cases": {}}
    for case in tqdm(find_cases(Path(cfg.data.raw_dir)), desc="slices", unit="case", disable=not progress):
        res = slice_case(case, Path(cfg.data.labels_dir), size, window)  # one case in memory at a time
        _save_npy(out / case["case"] / "image.npy", res["image"])
        _save_npy(out / case["case"] / "label.npy", res["label"])
        _save_npy(out / case["case"] / "soft.npy", res["soft"])
        index["cases"][case["case"]] = res["info"]
    atomic_write_text(out / INDEX, json.dumps(index, indent=1) + "\n")
    return index


def load_index(slices_dir: str | Path) -> dict:
    path = Path(slices_dir) / INDEX
    if not path.is_file():
        raise DataError(f"{path}: slice index not found. Run `boneseg slices` (or `dvc repro slices`).")
    return json.loads(path.read_text())


def add_parser(sub) -> None:
    p = sub.add_parser("slices", help="resample + window every case for 2.5-D input (data/slices)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace, cfg: Config) -> int:
    index = build_slices(cfg)
    n = sum(c["z"] for c in index["cases"].values())
    print(f"slices: {len(index['cases'])} cases, {n} slices at {index['image_size']}x{index['image_size']}, "
          f"window {index['window']} HU -> {cfg.data.slices_dir}")
    return 0
