"""A lab's CT folder in one of three layouts, read case by case (`boneseg import`):
- nifti:            DIR/images/<id>.nii(.gz) [+ DIR/labels/<id>.nii(.gz)]
- totalsegmentator: DIR/sXXXX/ct.nii.gz + DIR/sXXXX/segmentations/<class>.nii.gz, the
                    classes mapped onto our label ids (`ts_label_id`)
- dicom:            every CT series under DIR, by SeriesInstanceUID (`core.imaging.dicom`)
Nothing here writes; `core.data.importing` stages and places what these read."""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from boneseg.core.imaging.dicom import Series, read_series, scan_series
from boneseg.core.imaging.nifti import MAX_VOXELS, Volume, load_ct, load_labels, strip_nifti_suffix
from boneseg.core.vocabulary import Layout
from boneseg.errors import DataError

# TotalSegmentator class -> our label id (later entries win where masks overlap)
TS_VESSELS = ("aorta", "inferior_vena_cava", "portal_vein_and_splenic_vein", "iliac_artery_left",
              "iliac_artery_right", "iliac_vena_left", "iliac_vena_right")
TS_BONE_PREFIXES = ("vertebrae_", "rib_", "femur_", "hip_", "humerus_", "scapula_", "clavicula_")
TS_BONE_NAMES = ("sacrum", "sternum", "skull")


def ts_label_id(name: str) -> int:
    """Label id of a TotalSegmentator class name (0 = not one of our classes)."""
    if name.startswith(TS_BONE_PREFIXES) or name in TS_BONE_NAMES:
        return 1
    if name.startswith("kidney_"):
        return 2
    if name in TS_VESSELS:
        return 3
    if name == "liver":
        return 4
    return 0


@dataclass
class SourceCase:
    source_id: str  # never leaves this module except into the local id map
    image: Path
    labels: Path | None = None  # nifti layout
    masks: dict[str, Path] = field(default_factory=dict)  # totalsegmentator layout
    series: Series | None = None  # dicom layout


def scan_nifti(src: Path) -> list[SourceCase]:
    img_dir, lab_dir = src / "images", src / "labels"
    if not img_dir.is_dir():
        raise DataError(f"{src}: no images/ folder. The nifti layout is DIR/images/<id>.nii.gz "
                        "with optional DIR/labels/<id>.nii.gz.")
    images = {strip_nifti_suffix(p.name): p for p in sorted(img_dir.glob("*.nii*"))}
    labels = (
        {strip_nifti_suffix(p.name): p for p in sorted(lab_dir.glob("*.nii*"))} if lab_dir.is_dir() else {}
    )
    orphans = sorted(set(labels) - set(images))
    if orphans:
        raise DataError(f"{lab_dir / labels[orphans[0]].name}: label map without its image "
                        f"(expected {img_dir}/{orphans[0]}.nii.gz). Add the image or remove the label.")
    return [SourceCase(k, v, labels.get(k)) for k, v in images.items()]


def scan_totalsegmentator(src: Path) -> list[SourceCase]:
    meta = src / "meta.csv"
    listed = None
    if meta.is_file():
        with meta.open(newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter=";"))
        if rows and "image_id" not in rows[0]:
            raise DataError(f"{meta}: no image_id column (TotalSegmentator's meta.csv is ';'-separated).")
        listed = {r["image_id"] for r in rows}
    cases = []
    for d in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if listed is not None and d.name not in listed:
            continue
        masks = {strip_nifti_suffix(p.name): p for p in sorted((d / "segmentations").glob("*.nii*"))}
        cases.append(SourceCase(d.name, d / "ct.nii.gz", None, masks))
    if not cases:
        raise DataError(f"{src}: no sXXXX/ct.nii.gz cases found (TotalSegmentator layout).")
    return cases


def scan_dicom(src: Path, skip_invalid: bool = False) -> tuple[list[SourceCase], list[str]]:
    """One case per CT series; localizers are left out and listed (by series number and folder),
    and so are unreadable files with `skip_invalid` (else the first is refused)."""
    found, unreadable = scan_series(src)
    if unreadable and not skip_invalid:
        raise DataError(f"{unreadable[0]} Nothing was imported (--skip-invalid imports the rest).")
    skipped = [f"{s.name}: localizer (scout), not a CT volume" for s in found if s.localizer] + unreadable
    cases = [SourceCase(f"dicom:{s.uid}", s.files[0], series=s) for s in found if not s.localizer]
    if not cases:
        raise DataError(f"{src}: no DICOM CT series found{' (only localizers)' if skipped else ''}. "
                        "The dicom layout takes a folder with one or more series, in any nesting.")
    return cases, skipped


def merge_ts_masks(case: SourceCase, image: Volume) -> Volume | None:
    """Fold the per-class masks into one label map (bone written last, so it wins)."""
    if not case.masks:
        return None
    out = np.zeros(image.shape, dtype=np.uint8)
    for lid in (4, 2, 3, 1):
        for name, path in case.masks.items():
            if ts_label_id(name) != lid:
                continue
            mask = load_labels(path, image, case.image, allowed=(0, 1))
            out[mask.data > 0] = lid
    return Volume(out, image.affine.copy())


def read_case(case: SourceCase, layout: str, max_voxels: int = MAX_VOXELS) -> tuple[Volume, Volume | None]:
    if layout == "dicom":
        return read_series(case.series, max_voxels).volume, None
    image = load_ct(case.image, max_voxels)
    if layout == Layout.NIFTI:
        labels = load_labels(case.labels, image, case.image) if case.labels else None
    elif layout == Layout.TOTALSEGMENTATOR:
        labels = merge_ts_masks(case, image)
    else:
        raise DataError(f"layout {layout!r}: expected one of {', '.join(Layout)}.")
    return image, labels


def case_name(case: SourceCase) -> str:
    """How messages name a source case: its file id, or a DICOM series' number and folder (no UID)."""
    return case.series.name if case.series is not None else case.source_id
