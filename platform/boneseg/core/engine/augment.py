"""Batched, device-side augmentation for 2.5-D slices (pure functions of a generator),
and `prepare_batch`, the data path's last part that every training batch goes through.

A small random affine (rotation, scale, shift) applied identically to image and label,
and an intensity gain/offset on the windowed image. Draws use torch's global generator,
whose state every checkpoint saves, so resumed training sees the same augmentations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from boneseg.core.networks.runtime import Runtime


def random_affine(x: torch.Tensor, y: torch.Tensor, rotate_deg: float, scale: float, shift: float):
    """x (B, C, H, W) float, y (B, H, W) int64 ids or (B, K, H, W) float fractions -> both
    warped by one affine per sample (ids nearest, fractions bilinear; outside = background)."""
    b = x.shape[0]
    ang = (torch.rand(b) * 2 - 1) * math.radians(rotate_deg)
    s = 1 + (torch.rand(b) * 2 - 1) * scale
    t = (torch.rand(b, 2) * 2 - 1) * shift
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    theta = torch.stack([torch.stack([cos, -sin, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)], 1)
    theta = theta.to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if y.is_floating_point():
        y = F.grid_sample(y.to(x.dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        y[:, 0] += 1 - y.sum(1)  # mass from outside the slice is background
        return x, y
    y = F.grid_sample(y[:, None].to(x.dtype), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return x, y[:, 0].round().long()


def random_crop(x: torch.Tensor, y: torch.Tensor, size: int):
    """x (B, C, H, W), y (B, H, W) ids or (B, K, H, W) fractions -> one random size x size
    window per sample, the same for image and target (patch training, as nnU-Net does:
    the fully convolutional U-Net then predicts whole slices at inference)."""
    h, w = x.shape[-2:]
    ph, pw = min(size, h), min(size, w)  # a side shorter than the patch is kept whole
    if (ph, pw) == (h, w):
        return x, y
    b = x.shape[0]
    i0 = torch.randint(0, h - ph + 1, (b,)).tolist()
    j0 = torch.randint(0, w - pw + 1, (b,)).tolist()
    xs = torch.stack([x[k, ..., i:i + ph, j:j + pw] for k, (i, j) in enumerate(zip(i0, j0))])
    ys = torch.stack([y[k, ..., i:i + ph, j:j + pw] for k, (i, j) in enumerate(zip(i0, j0))])
    return xs, ys


def random_intensity(x: torch.Tensor, gain: float, offset: float) -> torch.Tensor:
    b = x.shape[0]
    g = 1 + (torch.rand(b, 1, 1, 1) * 2 - 1) * gain
    o = (torch.rand(b, 1, 1, 1) * 2 - 1) * offset
    return (x * g.to(x) + o.to(x)).clamp_(0, 1)


@dataclass(frozen=True)
class AugmentLimits:
    """The largest random change per sample: rotation (degrees), scale and shift (shares),
    intensity gain and offset (on the [0, 1] window)."""

    rotate_deg: float = 10.0
    scale: float = 0.1
    shift: float = 0.05
    gain: float = 0.1
    offset: float = 0.05


def augment(x: torch.Tensor, y: torch.Tensor, limits: AugmentLimits = AugmentLimits()):
    x, y = random_affine(x, y, limits.rotate_deg, limits.scale, limits.shift)
    return random_intensity(x, limits.gain, limits.offset), y


def prepare_batch(x: torch.Tensor, y: torch.Tensor, tc, rt: Runtime):
    """A loader's batch -> what the train step takes, on the run's device: the random crop
    (`train.patch_size`), then the step's dtypes (after the crop: fewer pixels to
    convert), then augmentation, then the run's memory format. Ids become int64 (the losses
    need it). The image becomes float32, except under autocast without augmentation:
    there it stays as loaded (float16 from `train.data_on_device`), since the model's first
    layer, a convolution, casts its input to the autocast dtype either way, with the same
    result. Augmentation always runs in float32."""
    x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
    if tc.patch_size:
        x, y = random_crop(x, y, tc.patch_size)
    if tc.augment or rt.dtype is None:
        x = x.float()
    if not y.is_floating_point():
        y = y.long()
    if tc.augment:
        x, y = augment(x, y)
    if rt.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y
