"""The training slices held on the training device, and batches gathered there by index
(`train.data_on_device`): no DataLoader, no per-sample Python, so the data path cannot
starve a GPU. One tensor holds every training slice's 2.5-D stack (float16, as stored),
one the targets (uint8); a batch is one index_select of each.

It yields exactly the batches `SliceDataset` + the DataLoader give for the same seed and
epoch (the same shuffle: the DataLoader's base-seed draw, then `torch.randperm`, on the
epoch's generator, as RandomSampler draws it; the same values; the same targets), in
the stored dtypes (float16 images, uint8 ids): `augment.prepare_batch` then crops,
converts to the step's dtypes and augments on the device, as for the DataLoader's
batches, so results do not change. Under autocast the float16 image goes to the model
as it is (its first layer, a convolution, casts it to the autocast dtype: the values are
the same as from float32), so without augmentation it is never widened to float32.
"""
from __future__ import annotations

import numpy as np
import torch

from boneseg.core.data.dataset import SliceDataset, epoch_generator, open_targets
from boneseg.core.data.preprocess import neighbours_25d
from boneseg.core.labelmap import LabelSpec
from boneseg.core.layout import SLICE_IMAGE

FIT_MARGIN = 0.5  # auto: the slices may take at most half of the device's free memory
CHUNK = 64  # slices stacked at a time while loading (bounds the host's transient copy)


class DeviceSlices:
    """`SliceDataset`'s slices on the device; `batches(...)` is an epoch's loader.

    Every slice's 2.5-D stack (z-1, z, z+1) is stored ready-made, float16 as on disk: 3x
    the slices' bytes (the paper profile: ~1.9 GB), so that a batch is one contiguous
    index_select. With `channels_last` the stacks are stored channel-interleaved,
    (N, S, S, 3), and a batch is a channels_last view of them: no transposing pass per
    batch (on one CPU core that pass cost 4x the gather itself)."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, nbr: torch.Tensor, classes: str,
                 device: torch.device, channels_last: bool = False):
        """images (N0, S, S) float16 and nbr (N, 3), each item's (z-1, z, z+1) rows of it;
        targets uint8: ids (N0, S, S), or soft fractions x255 (N0, 5, S, S)."""
        soft = targets.dim() == 4
        self.device, self.classes, self.soft, self.channels_last = device, classes, soft, channels_last
        side = tuple(images.shape[1:])
        shape = (len(nbr), *side, 3) if channels_last else (len(nbr), 3, *side)
        self.stacks = torch.empty(shape, dtype=images.dtype, device=device)
        for i in range(0, len(nbr), CHUNK):
            st = images[nbr[i:i + CHUNK]]  # (c, 3, S, S)
            self.stacks[i:i + CHUNK].copy_(st.permute(0, 2, 3, 1) if channels_last else st)
        self.targets = targets.to(device)  # (N, S, S) uint8 ids or (N, 5, S, S) uint8 x255

    @classmethod
    def from_dataset(cls, ds: SliceDataset, device: torch.device,
                     channels_last: bool = False) -> DeviceSlices:
        """Every slice of `ds`'s cases, read whole once."""
        images, targets, nbr, offset = [], [], [], 0
        for case in ds.cases:
            d = ds.root / case
            image = np.load(d / SLICE_IMAGE, mmap_mode="r")
            images.append(torch.from_numpy(np.array(image)))
            targets.append(torch.from_numpy(np.array(open_targets(d, ds.targets))))
            nbr.append(torch.from_numpy(neighbours_25d(np.arange(image.shape[0]), image.shape[0]) + offset))
            offset += image.shape[0]
        out = cls(torch.cat(images), torch.cat(targets), torch.cat(nbr), ds.classes, device, channels_last)
        assert out.soft == (ds.targets == "soft"), "stored targets of the wrong kind"
        assert len(out) == len(ds), "the slice index and the arrays disagree"
        return out

    def __len__(self) -> int:
        return len(self.stacks)

    @staticmethod
    def bytes_needed(ds: SliceDataset) -> int:
        total = 0
        for case in ds.cases:
            d = ds.root / case
            total += 3 * (d / SLICE_IMAGE).stat().st_size + open_targets(d, ds.targets).nbytes
        return total

    def gather(self, idx: torch.Tensor, out: torch.Tensor | None = None,
               y_out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Items `idx` -> (x (B, 3, S, S), y) in the stored dtypes: x float16 (a channels_last
        view with `channels_last`); hard targets uint8 ids (bone 1, the rest 0 for single-class),
        soft ones float fractions. The values are SliceDataset's; `augment.prepare_batch`
        turns them into the step's dtypes (after the crop, so fewer pixels are converted).
        x and uint8 ids are written into `out` (shaped like `stacks`) / `y_out` (at least B
        long) if given, else into new tensors."""
        idx = idx.to(self.device)
        x = self.stacks[idx] if out is None else torch.index_select(self.stacks, 0, idx, out=out[:len(idx)])
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)  # (B, 3, S, S), channels_last in memory
        if self.soft:
            return x, LabelSpec.of(self.classes).soft(self.targets[idx])
        t = self.targets[idx] if y_out is None else \
            torch.index_select(self.targets, 0, idx, out=y_out[:len(idx)])
        return x, LabelSpec.of(self.classes).merge(t)

    def batches(self, batch_size: int, epoch: int, seed: int):
        """One epoch: the DataLoader's order (shuffle by the (seed, epoch) generator, the
        last incomplete batch dropped when there is at least one full batch)."""
        g = epoch_generator(seed, epoch)
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
        b = self.batch_size
        buf = torch.empty((b, *d.stacks.shape[1:]), dtype=d.stacks.dtype, device=d.device)
        t = d.targets
        ybuf = None if d.soft else torch.empty((b, *t.shape[1:]), dtype=t.dtype, device=d.device)
        for i in range(0, len(self.order), b):
            yield d.gather(self.order[i:i + b], out=buf, y_out=ybuf)


def use_device_data(setting, ds: SliceDataset, device: torch.device, budget_gib: float | None = None) -> bool:
    """train.data_on_device: true / false as given; auto: on the device when the slices fit
    its budget, else streamed from the memory-mapped slice store (the DataLoader path: the
    same batches, `DeviceSlices.batches`). The budget is `budget_gib` (train.data_memory_gib)
    where set, on any device; else FIT_MARGIN of CUDA's free memory, and on a CPU none (the
    DataLoader path: the step, not the data, bounds a CPU run)."""
    if setting in (True, False):
        return bool(setting)
    need = DeviceSlices.bytes_needed(ds)
    if budget_gib is not None:
        return need <= budget_gib * 2**30
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return need <= FIT_MARGIN * free
