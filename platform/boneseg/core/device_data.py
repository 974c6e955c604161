"""The training slices held on the training device, and batches gathered there by index
(`train.data_on_device`): no DataLoader, no per-sample Python, so the data path cannot
starve a GPU. One tensor holds every training slice (float16, as stored), one the
targets (uint8); a batch is one index_select of the 2.5-D neighbour indices.

It yields exactly the batches `SliceDataset` + the DataLoader give for the same seed and
epoch (the same shuffle: the DataLoader's base-seed draw, then `torch.randperm`, on the
epoch's generator, as RandomSampler draws it; the same float32 values; the same
targets), so results do not change; random crops and augmentation then run on the
device as before (training.train_epoch).
"""
from __future__ import annotations

import numpy as np
import torch

from boneseg.core.dataset import SliceDataset, open_targets
from boneseg.core.labelmap import BONE
from boneseg.core.layout import SLICE_IMAGE
from boneseg.core.preprocess import neighbours_25d

FIT_MARGIN = 0.5  # auto: the slices may take at most half of the device's free memory


class DeviceSlices:
    """`SliceDataset`'s slices as two device tensors; `batches(...)` is an epoch's loader."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, nbr: torch.Tensor, classes: str,
                 soft: bool, device: torch.device):
        self.device, self.classes, self.soft = device, classes, soft
        self.images = images.to(device)  # (N, S, S) float16
        self.targets = targets.to(device)  # (N, S, S) uint8 ids or (N, 5, S, S) uint8 x255
        self.nbr = nbr.to(device)  # (N, 3): each slice's (z-1, z, z+1) rows
        self._half = None  # gather's float16 staging buffer, made on first use

    @classmethod
    def from_dataset(cls, ds: SliceDataset, device: torch.device) -> DeviceSlices:
        """Every slice of `ds`'s cases, read whole once."""
        images, targets, nbr, offset = [], [], [], 0
        for case in ds.cases:
            d = ds.root / case
            image = np.load(d / SLICE_IMAGE, mmap_mode="r")
            images.append(torch.from_numpy(np.array(image)))
            targets.append(torch.from_numpy(np.array(open_targets(d, ds.targets))))
            nbr.append(torch.from_numpy(neighbours_25d(np.arange(image.shape[0]), image.shape[0]) + offset))
            offset += image.shape[0]
        out = cls(torch.cat(images), torch.cat(targets), torch.cat(nbr), ds.classes, ds.targets == "soft",
                  device)
        assert len(out) == len(ds), "the slice index and the arrays disagree"
        return out

    def __len__(self) -> int:
        return len(self.nbr)

    @staticmethod
    def bytes_needed(ds: SliceDataset) -> int:
        total = 0
        for case in ds.cases:
            d = ds.root / case
            total += (d / SLICE_IMAGE).stat().st_size + open_targets(d, ds.targets).nbytes
        return total

    def gather(self, idx: torch.Tensor, out: torch.Tensor | None = None,
               y_out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Items `idx` -> (x (B, 3, S, S) float32, y) as SliceDataset gives them; x (and
        hard-target y) are written into `out` / `y_out` (at least B long) if given, else
        into new tensors."""
        idx = idx.to(self.device)
        rows = self.nbr[idx].reshape(-1)
        if out is None:
            x = self.images[rows].float().view(len(idx), 3, *self.images.shape[1:])
        else:  # reused buffers: no new 40 MB allocation (and its page faults on CPU) per batch
            half = self._half
            if half is None or half.shape[0] < len(rows):
                half = self._half = torch.empty((len(rows), *self.images.shape[1:]), dtype=self.images.dtype,
                                                device=self.device)
            torch.index_select(self.images, 0, rows, out=half[:len(rows)])
            x = out[:len(idx)]
            x.view(len(rows), *self.images.shape[1:]).copy_(half[:len(rows)])
        t = self.targets[idx]
        if not self.soft:
            t = t == BONE if self.classes == "single" else t
            if y_out is None:
                return x, t.long()
            y = y_out[:len(idx)]
            y.copy_(t)
            return x, y
        frac = t.float()
        frac = frac / frac.sum(dim=1, keepdim=True).clamp_min(1.0)  # undo the x255 rounding
        if self.classes == "single":
            bone = frac[:, BONE:BONE + 1]
            return x, torch.cat([1.0 - bone, bone], dim=1)
        return x, frac

    def batches(self, batch_size: int, epoch: int, seed: int):
        """One epoch: the DataLoader's order (shuffle by the (seed, epoch) generator, the
        last incomplete batch dropped when there is at least one full batch)."""
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        torch.empty((), dtype=torch.int64).random_(generator=g)  # the DataLoader's base seed, drawn first
        order = torch.randperm(len(self), generator=g)
        drop_last = len(self) >= batch_size
        stop = len(self) - len(self) % batch_size if drop_last else len(self)
        return EpochBatches(self, order[:stop], batch_size)


class EpochBatches:
    """An epoch's batches, with a length like a DataLoader's. The image batch (and hard
    targets) are written into reused buffers: each batch is valid until the next is drawn, which is how
    train_epoch uses it (forward, backward and step happen before the next draw). Keep a
    batch longer? `.clone()` it."""

    def __init__(self, data: DeviceSlices, order: torch.Tensor, batch_size: int):
        self.data, self.order, self.batch_size = data, order, batch_size

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)

    def __iter__(self):
        d = self.data
        side = d.images.shape[1:]
        buf = torch.empty((self.batch_size, 3, *side), dtype=torch.float32, device=d.device)
        ybuf = None if d.soft else torch.empty((self.batch_size, *side), dtype=torch.int64, device=d.device)
        for i in range(0, len(self.order), self.batch_size):
            yield d.gather(self.order[i:i + self.batch_size], out=buf, y_out=ybuf)


def use_device_data(setting, ds: SliceDataset, device: torch.device) -> bool:
    """train.data_on_device: true / false as given; auto: on CUDA when the slices take at
    most FIT_MARGIN of the free device memory, off on CPU (the DataLoader path)."""
    if setting in (True, False):
        return bool(setting)
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return DeviceSlices.bytes_needed(ds) <= FIT_MARGIN * free
