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


def fold_soft(soft_u8: np.ndarray, classes: str) -> np.ndarray:
    """(..., 5, S, S) uint8 fractions x255 -> float32 class probabilities that sum to 1
    over the K axis: 5 for multi-class, 2 (background, bone) for single-class."""
    frac = np.asarray(soft_u8, dtype=np.float32)
    frac /= np.maximum(frac.sum(axis=-3, keepdims=True), 1.0)  # undo x255 rounding
    if classes == "single":
        bone = frac[..., 1:2, :, :]
        return np.concatenate([1.0 - bone, bone], axis=-3)
    if classes != "multi":
        raise ValueError(f"classes: expected 'multi' or 'single', got {classes!r}")
    return frac


TARGET_FILES = {"hard": "label.npy", "soft": "soft.npy"}  # per case under data/slices/<case>/


def open_targets(case_dir: Path, targets: str, mmap: bool = True) -> np.ndarray:
    """A case's stored training targets: ids (Z, S, S) or fractions (Z, 5, S, S)."""
    if targets not in TARGET_FILES:
        raise ValueError(f"targets: expected 'hard' or 'soft', got {targets!r}")
    path = Path(case_dir) / TARGET_FILES[targets]
    if not path.is_file():
        raise DataError(f"{path}: not found (slices from an older boneseg). Re-run `boneseg slices`.")
    return np.load(path, mmap_mode="r" if mmap else None)


def fold_targets(stored: np.ndarray, classes: str, targets: str) -> torch.Tensor:
    """Stored targets (one slice or a stack) -> what the loss takes: int64 ids for "hard",
    float32 class fractions for "soft"; single-class folds kidney/vessel/liver into 0."""
    if targets == "soft":
        return torch.from_numpy(fold_soft(stored, classes))
    return torch.from_numpy(fold_labels(np.asarray(stored), classes).astype(np.int64))


def stack_25d(volume_zss: np.ndarray, z: int) -> np.ndarray:
    """(Z, S, S) -> (3, S, S) for slice z: neighbours z-1, z, z+1; edges repeat themselves."""
    n = volume_zss.shape[0]
    idx = [max(z - 1, 0), z, min(z + 1, n - 1)]
    return np.stack([volume_zss[i] for i in idx])


class SliceDataset(Dataset):
    """Every axial slice of `cases`; items are (x (3,S,S) float32, y): y is (S,S) int64
    ids for targets="hard", (K,S,S) float32 label fractions for targets="soft"."""

    def __init__(self, slices_dir: str | Path, cases: list[str], classes: str = "multi", targets: str = "hard"):
        self.root = Path(slices_dir)
        index = load_index(self.root)
        missing = [c for c in cases if c not in index["cases"]]
        if missing:
            raise DataError(f"{self.root}: cases {missing} have no slices. Re-run `boneseg slices`.")
        if targets not in TARGET_FILES:
            raise ValueError(f"targets: expected 'hard' or 'soft', got {targets!r}")
        self.cases, self.classes, self.targets = list(cases), classes, targets
        self.items = [(c, z) for c in self.cases for z in range(index["cases"][c]["z"])]
        self.image_size = index["image_size"]
        self._open: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def _arrays(self, case: str):
        if case not in self._open:  # memory-mapped lazily, per worker process
            d = self.root / case
            self._open[case] = (np.load(d / "image.npy", mmap_mode="r"), open_targets(d, self.targets))
        return self._open[case]

    def __getitem__(self, i: int):
        case, z = self.items[i]
        image, label = self._arrays(case)
        x = stack_25d(image, z).astype(np.float32)
        return torch.from_numpy(x), fold_targets(label[z], self.classes, self.targets)
