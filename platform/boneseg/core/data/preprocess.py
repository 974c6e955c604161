"""Model-input preprocessing shared by training slices, evaluation and inference (pure):
the HU window, in-plane resampling (images, ids, label fractions and back), and the
2.5-D stack (slice z as channels z-1, z, z+1; edge slices repeat their neighbour)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from boneseg.core.labelmap import LABEL_IDS


def apply_window(hu, window):
    """HU -> [0, 1], clipped to the window (low_hu, high_hu): a numpy array as float32,
    a torch tensor in its own dtype (the V-Net's resampled volumes), clamped in place."""
    lo, hi = window
    if not isinstance(hu, np.ndarray) and hasattr(hu, "clamp_"):
        return ((hu - lo) / (hi - lo)).clamp_(0, 1)
    return np.clip((hu.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)


def _plane_mode(shape_xyz, size: int) -> dict:
    """Interpolation for in-plane resampling: area when shrinking, bilinear when growing."""
    if size <= min(shape_xyz[:2]):
        return {"mode": "area"}
    return {"mode": "bilinear", "align_corners": False}


def resize_planes(vol_xyz: np.ndarray, size: int, kind: str) -> np.ndarray:
    """(X, Y, Z) -> (Z, size, size). kind "image": area when shrinking, bilinear when
    growing; "labels": nearest (ids kept exactly)."""
    t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(vol_xyz, 2, 0)))[:, None]  # (Z, 1, X, Y)
    if kind == "labels":
        out = F.interpolate(t.float(), size=(size, size), mode="nearest-exact")
        return out[:, 0].to(torch.uint8).numpy()
    return F.interpolate(t.float(), size=(size, size), **_plane_mode(vol_xyz.shape, size))[:, 0].numpy()


def window_planes(ct_xyz: np.ndarray, size: int, window) -> np.ndarray:
    """CT (X, Y, Z) in HU -> (Z, size, size) float32 model input in [0, 1]: the in-plane
    resampling and HU window that training slices and inference share."""
    return apply_window(resize_planes(ct_xyz, size, "image"), tuple(window))


def resize_soft(
    lab_xyz: np.ndarray, size: int, n_classes: int = len(LABEL_IDS), chunk: int = 16
) -> np.ndarray:
    """(X, Y, Z) ids -> (Z, K, size, size) uint8 label fractions x255: the one-hot map
    area-averaged onto the slice grid (bilinear when growing), a few slices at a time so
    peak memory stays at a few planes. Thin shells that nearest sampling keeps or drops at
    random become partial memberships whose 0.5 contour lies on the true boundary."""
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


def resize_back(planes_zcss: np.ndarray, shape_xy: tuple[int, int]) -> np.ndarray:
    """(Z, C, S, S) float probabilities -> (X, Y, Z, C) on the original in-plane grid."""
    t = torch.from_numpy(np.ascontiguousarray(planes_zcss)).float()
    out = F.interpolate(t, size=tuple(shape_xy), mode="bilinear", align_corners=False)
    return np.transpose(out.numpy(), (2, 3, 0, 1))


def neighbours_25d(z, n_slices: int) -> np.ndarray:
    """Slice indices (N,) -> (N, 3) indices (z-1, z, z+1), clamped at the volume's ends."""
    z = np.atleast_1d(np.asarray(z, dtype=np.int64))
    return np.clip(z[:, None] + np.array([-1, 0, 1]), 0, n_slices - 1)


def stack_25d(volume_zss: np.ndarray, z=None) -> np.ndarray:
    """(Z, S, S) -> (N, 3, S, S) float32: slices `z` (default: all) with their neighbours
    as channels. Works on memory maps: only the rows needed are read."""
    n = volume_zss.shape[0]
    idx = neighbours_25d(np.arange(n) if z is None else z, n)
    return np.asarray(volume_zss[idx.ravel()], dtype=np.float32).reshape(len(idx), 3, *volume_zss.shape[1:])
