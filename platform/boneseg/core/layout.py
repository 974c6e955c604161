"""The data folder's layout: where each stage's inputs and outputs live, and readers
that say which stage to run when something is missing.

    data/raw/<cohort>/<case>/ct.nii.gz (+ truth.nii.gz, meta.json)
    data/labels/<case>.nii.gz, data/labels/qa.json
    data/corrections/<case>.nii.gz
    data/splits.json
    data/slices/index.json, data/slices/<case>/{image,label,soft}.npy
    data/proposals/<case>.nii.gz (V-Net), data/proposals_unet/<case>.nii.gz (U-Net)
    results/trials/<variant>/fold<k>/predictions/<case>.nii.gz (out-of-fold label maps)
"""
from __future__ import annotations

import json
from pathlib import Path

from boneseg.core.vocabulary import Cohort, parse
from boneseg.errors import DataError

SLICE_INDEX = "index.json"
SLICE_IMAGE = "image.npy"
TARGET_FILES = {
    "hard": "label.npy",
    "soft": "soft.npy",
}  # training targets per case under data/slices/<case>/
QA_FILE = "qa.json"
PROPOSE_SUMMARY = "propose.json"  # data/proposals/propose.json: the V-Net's summary (or why there is none)
PREDICTIONS = "predictions"  # a trial's label maps of the cases it did not train on (val + test)


def find_cases(raw_dir: str | Path) -> list[dict]:
    """Every data/raw/<cohort>/<case>/ with a ct.nii.gz, sorted by case id:
    {"case", "cohort", "ct", "truth" (or None), "phase"}."""
    cases = []
    for ct in sorted(Path(raw_dir).glob("*/*/ct.nii.gz")):
        if ct.parent.name.startswith(".") or ct.parent.parent.name.startswith("."):
            continue  # never a case: a half-written or staged folder
        meta_path = ct.with_name("meta.json")
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        truth = ct.with_name("truth.nii.gz")
        parse(Cohort, ct.parent.parent.name, str(ct.parent.parent))  # an unknown cohort folder is refused
        cases.append({"case": ct.parent.name, "cohort": ct.parent.parent.name, "ct": ct,
                      "truth": truth if truth.is_file() else None, "phase": meta.get("phase", "unknown")})
    if not cases:
        raise DataError(f"{raw_dir}: no cases (<cohort>/<case>/ct.nii.gz). Run `dvc repro raw` (it imports "
                        "data.sources, or writes the synthetic cohort when there are none).")
    ids = [c["case"] for c in cases]
    if len(set(ids)) != len(ids):
        raise DataError(f"{raw_dir}: a case id appears in two cohorts; case ids must be unique.")
    return cases


def find_case(raw_dir: str | Path, case_id: str) -> dict:
    """One case of `find_cases` by its id, or a DataError that says how to list them."""
    for c in find_cases(raw_dir):
        if c["case"] == case_id:
            return c
    raise DataError(f"case {case_id!r}: not under {raw_dir}. Give a case id as `boneseg labels` "
                    "lists them (e.g. abd000).")


def label_path(labels_dir: str | Path, case: str) -> Path:
    return Path(labels_dir) / f"{case}.nii.gz"


def correction_path(corrections_dir: str | Path, case: str) -> Path:
    return Path(corrections_dir) / f"{case}.nii.gz"


def load_index(slices_dir: str | Path) -> dict:
    """data/slices/index.json: the shared preprocessing (image_size, window) and each case's grid."""
    path = Path(slices_dir) / SLICE_INDEX
    if not path.is_file():
        raise DataError(f"{path}: slice index not found. Run `boneseg slices` (or `dvc repro slices`).")
    return json.loads(path.read_text())


def load_splits(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: splits not found. Run `boneseg splits` (or `dvc repro splits`).")
    return json.loads(path.read_text())


def load_qa(labels_dir: str | Path) -> dict | None:
    path = Path(labels_dir) / QA_FILE
    return json.loads(path.read_text()) if path.is_file() else None
