"""Shared fixtures: tiny synthetic CT made in the test, nothing downloaded."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from boneseg.core.config import SynthConfig
from boneseg.core.imaging.nifti import Volume

RAS = np.diag([0.8, 0.8, 3.0, 1.0])
LPS = np.diag([-0.8, -0.8, 3.0, 1.0])
_PASSED = pytest.StashKey[bool]()


def oblique_affine() -> np.ndarray:
    a = np.deg2rad(17)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([0.7, 0.9, 2.5])
    aff[:3, 3] = [-120.5, 33.25, -410.0]
    return aff


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.stash[_PASSED] = report.passed
    return report


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_teardown(item, nextitem):
    """A passed test's tmp_path is emptied once its fixtures are torn down: a full run writes
    checkpoints, DVC caches and stores by the gigabyte, which a CI machine's disk may not hold.
    The folder itself stays, so pytest never hands its name (and MLflow's cached store for a
    sqlite file in it) to a later test; a failed test keeps everything for debugging."""
    result = yield
    path = item.funcargs.get("tmp_path") if hasattr(item, "funcargs") else None
    if path is not None and item.stash.get(_PASSED, False):
        for child in Path(path).iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
    return result


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
    from boneseg.core.data.slices import build_slices
    from boneseg.core.data.splits import write_splits
    from boneseg.core.data.synth import synthesize
    from boneseg.core.labelling.labels import derive_labels

    root = tmp_path_factory.mktemp("pipeline")
    cfg = Config.model_validate({
        "data": {"raw_dir": str(root / "raw"), "labels_dir": str(root / "labels"),
                 "corrections_dir": str(root / "corr"), "proposals_dir": str(root / "proposals"),
                 "splits_file": str(root / "splits.json"),
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


# Identifiers a test plants in DICOM headers; none may reach data/raw, logs or MLflow.
PLANTED = {
    "PatientName": "Plantedname^Ingrid",
    "PatientID": "PLANTEDID4711",
    "PatientBirthDate": "19230517",
    "StudyDate": "20190211",
    "SeriesDate": "20190211",
    "AcquisitionDate": "20190211",
    "InstitutionName": "Planted General Hospital",
    "ReferringPhysicianName": "Plantdoc^Otto",
    "AccessionNumber": "PLANTACC99",
    "StudyID": "PLANTSTUDY7",
}
UID_ROOT = "1.2.826.0.1.3680043.8.498.4711"  # the planted UIDs all start with this


def write_dicom_series(vol: Volume, folder, series_number: int = 2, modality: str = "CT", study_uid=None,
                       slope: float = 1.0, intercept: float = -1024.0,
                       image_type=("ORIGINAL", "PRIMARY", "AXIAL"), rescale: bool = True,
                       planted: dict | None = None) -> list:
    """`vol` (voxel -> RAS+ affine) as a single-frame CT series, one file per slice, written in
    reverse slice order under names that do not sort by position. Returns the file paths."""
    from pathlib import Path

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ vol.affine
    dc, dr = (float(np.linalg.norm(lps[:3, a])) for a in (0, 1))
    row_cos, col_cos = lps[:3, 0] / dc, lps[:3, 1] / dr
    study_uid = study_uid or generate_uid(prefix=UID_ROOT + ".1.")
    series_uid = generate_uid(prefix=UID_ROOT + ".2.")
    frame_uid = generate_uid(prefix=UID_ROOT + ".3.")
    stored = np.round((np.asarray(vol.data, np.float64) - intercept) / slope).astype(np.int16)
    paths = []
    nz = vol.shape[2]
    for k in reversed(range(nz)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid(prefix=UID_ROOT + ".4.")
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        for key, value in (PLANTED if planted is None else planted).items():
            setattr(ds, key, value)
        ds.PatientSex, ds.StudyTime, ds.Manufacturer = "F", "101010", "Planted Scanner Co"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, series_number, k + 1
        ds.ImageType = list(image_type)
        ds.ImageOrientationPatient = [round(float(v), 8) for v in (*row_cos, *col_cos)]
        ds.ImagePositionPatient = [round(float(v), 6) for v in (lps @ [0, 0, k, 1])[:3]]
        ds.PixelSpacing = [round(dr, 6), round(dc, 6)]
        ds.SliceThickness = round(float(np.linalg.norm(lps[:3, 2])), 6)
        ds.Rows, ds.Columns = vol.shape[1], vol.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        if rescale:
            ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "HU"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()  # (rows = j, columns = i)
        path = folder / f"S{series_number}IM{(k * 7919) % 10007:05d}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


PROJECT = Path(__file__).resolve().parents[1]


def copy_project(repo: Path, gitignore: bool = True) -> None:
    """The project's pipeline into `repo` (dvc.yaml, params.yaml, the code, the settings'
    folders), as a user's checkout holds it, for tests that run DVC in a repository of their own."""
    repo.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", *((".gitignore",) if gitignore else ())):
        shutil.copy(PROJECT / name, repo / name)
    for d in ("experiments", "platform", "data/corrections", "data/sources"):
        shutil.copytree(PROJECT / d, repo / d, ignore=shutil.ignore_patterns("__pycache__"))


def project_env() -> dict[str, str]:
    """The environment for git, DVC and boneseg in such a repository: this Python's tools
    first, no tracking URI, Ray address or DVC root inherited, a git identity."""
    return {
        **{k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "DVC_ROOT")},
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
    }
