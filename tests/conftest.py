"""Shared fixtures: tiny synthetic CT made in the test, nothing downloaded."""
from __future__ import annotations

import numpy as np
import pytest

from boneseg.core.config import SynthConfig
from boneseg.core.nifti import Volume

RAS = np.diag([0.8, 0.8, 3.0, 1.0])
LPS = np.diag([-0.8, -0.8, 3.0, 1.0])


def oblique_affine() -> np.ndarray:
    a = np.deg2rad(17)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([0.7, 0.9, 2.5])
    aff[:3, 3] = [-120.5, 33.25, -410.0]
    return aff


@pytest.fixture
def tiny_synth() -> SynthConfig:
    return SynthConfig(seed=3, abdomen=2, thigh=1, matrix=64, slices=8)


def make_ct(shape=(24, 20, 6), affine=RAS, seed=0) -> Volume:
    """A little body: air around, soft tissue inside, a bright bone disc."""
    rng = np.random.default_rng(seed)
    data = np.full(shape, -1000, dtype=np.int16)
    data[4:-4, 4:-4, :] = 40
    data[9:13, 8:12, :] = 900
    data = data + rng.integers(-5, 6, size=shape).astype(np.int16)
    return Volume(data, np.asarray(affine, dtype=float))


def make_labels(ct: Volume) -> Volume:
    lab = np.zeros(ct.shape, dtype=np.uint8)
    lab[ct.data > 500] = 1
    lab[5:7, 5:7, :] = 4
    return Volume(lab, ct.affine.copy())


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """A whole tiny data pipeline (synth -> labels -> splits -> slices) and its Config."""
    from boneseg.core.config import Config
    from boneseg.core.labelling import derive_labels
    from boneseg.core.slices import build_slices
    from boneseg.core.splits import write_splits
    from boneseg.core.synth import synthesize

    root = tmp_path_factory.mktemp("pipeline")
    cfg = Config.model_validate({
        "data": {"raw_dir": str(root / "raw"), "labels_dir": str(root / "labels"),
                 "corrections_dir": str(root / "corr"), "splits_file": str(root / "splits.json"),
                 "slices_dir": str(root / "slices"), "image_size": 32,
                 "synth": {"seed": 4, "abdomen": 5, "thigh": 2, "matrix": 64, "slices": 6}},
        "splits": {"folds": 2, "test_cases": 1},
        "train": {"epochs": 1, "batch_size": 2, "out_dir": str(root / "train"), "threads": 2},
        "pretrain": {"epochs": 2},
        "tracking": {"uri": f"sqlite:///{root / 'mlflow.db'}"},
    })
    synthesize(cfg.data.synth, cfg.data.raw_dir, progress=False)
    derive_labels(cfg, progress=False)
    write_splits(cfg)
    build_slices(cfg, progress=False)
    return cfg
