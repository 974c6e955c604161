"""Training targets and `SliceDataset`: 2.5-D samples over the slices of some cases."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from boneseg.core.config import TrainConfig
from boneseg.core.data.preprocess import stack_25d
from boneseg.core.labelmap import LabelSpec
from boneseg.core.layout import SLICE_IMAGE, TARGET_FILES, load_index
from boneseg.errors import DataError


def check_targets(targets: str) -> None:
    if targets not in TARGET_FILES:
        raise ValueError(f"targets: expected 'hard' or 'soft', got {targets!r}")


def open_targets(case_dir: Path, targets: str, mmap: bool = True) -> np.ndarray:
    """A case's stored training targets: ids (Z, S, S) or fractions (Z, 5, S, S)."""
    check_targets(targets)
    path = Path(case_dir) / TARGET_FILES[targets]
    if not path.is_file():
        raise DataError(f"{path}: not found. Re-run `boneseg slices` (or `dvc repro slices`).")
    return np.load(path, mmap_mode="r" if mmap else None)


def training_targets(stored: np.ndarray, classes: str, targets: str) -> torch.Tensor:
    """Stored targets (one slice or a stack) -> what the loss takes: int64 ids for "hard",
    float32 class fractions for "soft"; single-class merges kidney/vessel/liver into 0."""
    spec = LabelSpec.of(classes)
    if targets == "soft":
        return torch.from_numpy(spec.soft(stored))
    return torch.from_numpy(spec.merge(np.asarray(stored)).astype(np.int64))


class SliceDataset(Dataset):
    """Every axial slice of `cases`; items are (x (3,S,S) float32, y): y is (S,S) int64
    ids for targets="hard", (K,S,S) float32 label fractions for targets="soft"."""

    def __init__(
        self, slices_dir: str | Path, cases: list[str], classes: str = "multi", targets: str = "hard"
    ):
        self.root = Path(slices_dir)
        index = load_index(self.root)
        missing = [c for c in cases if c not in index["cases"]]
        if missing:
            raise DataError(f"{self.root}: cases {missing} have no slices. Re-run `boneseg slices`.")
        check_targets(targets)
        self.cases, self.classes, self.targets = list(cases), classes, targets
        self.items = [(c, z) for c in self.cases for z in range(index["cases"][c]["z"])]
        self.image_size = index["image_size"]
        self._open: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def _arrays(self, case: str):
        if case not in self._open:  # memory-mapped lazily, per worker process
            d = self.root / case
            self._open[case] = (np.load(d / SLICE_IMAGE, mmap_mode="r"), open_targets(d, self.targets))
        return self._open[case]

    def __getitem__(self, i: int):
        case, z = self.items[i]
        image, label = self._arrays(case)
        return torch.from_numpy(stack_25d(image, z)[0]), training_targets(
            label[z], self.classes, self.targets
        )


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of one epoch's shuffle: it depends on (seed, epoch) only, so a resumed
    run sees exactly the batches an uninterrupted one would (DataLoader and device data)."""
    return torch.Generator().manual_seed(seed * 1000 + epoch)


def make_loader(ds, tc: TrainConfig, epoch: int, seed: int) -> DataLoader:
    """One epoch's loader, shuffled by `epoch_generator(seed, epoch)`."""
    return DataLoader(
        ds,
        batch_size=tc.batch_size,
        shuffle=True,
        generator=epoch_generator(seed, epoch),
        drop_last=len(ds) >= tc.batch_size,
        num_workers=tc.num_workers,
        persistent_workers=False,
    )
