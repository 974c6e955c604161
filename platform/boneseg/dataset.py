"""`SliceDataset`: 2.5-D samples (z-1, z, z+1 as channels) over the slices of some cases."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from boneseg.errors import DataError
from boneseg.slices import load_index


def fold_labels(label: np.ndarray, classes: str) -> np.ndarray:
    """Multi-class keeps ids 0-4; single-class folds kidney/vessel/liver (2-4) into 0."""
    if classes == "single":
        return (label == 1).astype(label.dtype)
    if classes != "multi":
        raise ValueError(f"classes: expected 'multi' or 'single', got {classes!r}")
    return label


def stack_25d(volume_zss: np.ndarray, z: int) -> np.ndarray:
    """(Z, S, S) -> (3, S, S) for slice z: neighbours z-1, z, z+1; edges repeat themselves."""
    n = volume_zss.shape[0]
    idx = [max(z - 1, 0), z, min(z + 1, n - 1)]
    return np.stack([volume_zss[i] for i in idx])


class SliceDataset(Dataset):
    """Every axial slice of `cases`; items are (x (3,S,S) float32, y (S,S) int64)."""

    def __init__(self, slices_dir: str | Path, cases: list[str], classes: str = "multi"):
        self.root = Path(slices_dir)
        index = load_index(self.root)
        missing = [c for c in cases if c not in index["cases"]]
        if missing:
            raise DataError(f"{self.root}: cases {missing} have no slices. Re-run `boneseg slices`.")
        self.cases, self.classes = list(cases), classes
        self.items = [(c, z) for c in self.cases for z in range(index["cases"][c]["z"])]
        self.image_size = index["image_size"]
        self._open: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def _arrays(self, case: str):
        if case not in self._open:  # memory-mapped lazily, per worker process
            d = self.root / case
            self._open[case] = (np.load(d / "image.npy", mmap_mode="r"), np.load(d / "label.npy", mmap_mode="r"))
        return self._open[case]

    def __getitem__(self, i: int):
        case, z = self.items[i]
        image, label = self._arrays(case)
        x = stack_25d(image, z).astype(np.float32)
        y = fold_labels(np.asarray(label[z]), self.classes).astype(np.int64)
        return torch.from_numpy(x), torch.from_numpy(y)
