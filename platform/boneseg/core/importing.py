"""`boneseg import`: bring real CT (and optional labels) into data/raw under pseudonymous ids.

Three source layouts:
- nifti:            DIR/images/<id>.nii(.gz) [+ DIR/labels/<id>.nii(.gz), ids per docs/architecture.md]
- totalsegmentator: DIR/sXXXX/ct.nii.gz + DIR/sXXXX/segmentations/<class>.nii.gz (+ meta.csv)
- dicom:            every CT series under DIR (nested folders, by SeriesInstanceUID; `core.dicom`),
                    one case per series; localizers are skipped and listed

Every case is validated before anything is written; one bad case stops the import with
the output folder untouched (or, with --skip-invalid, is listed and left out). Source
ids (file names, or DICOM SeriesInstanceUIDs) are replaced by `ct0000`-style ids; the
map lives in a local, git-ignored file (.boneseg/import_idmap.json) and is never logged.
Files are reoriented to the closest RAS+ order and written with fresh headers (no source
header text).
"""
from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from boneseg.core.dicom import Series, read_series, scan_series
from boneseg.core.io import atomic_write_text
from boneseg.core.nifti import Volume, load_ct, load_labels, save_volume, strip_nifti_suffix, to_canonical
from boneseg.errors import DataError

DEFAULT_ID_MAP = ".boneseg/import_idmap.json"

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


def scan_dicom(src: Path) -> tuple[list[SourceCase], list[str]]:
    """One case per CT series; localizers are left out and listed (by series number and folder)."""
    found, _ = scan_series(src)
    skipped = [f"{s.name}: localizer (scout), not a CT volume" for s in found if s.localizer]
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


def read_case(case: SourceCase, layout: str) -> tuple[Volume, Volume | None]:
    if layout == "dicom":
        return read_series(case.series).volume, None
    image = load_ct(case.image)
    if layout == "nifti":
        labels = load_labels(case.labels, image, case.image) if case.labels else None
    else:
        labels = merge_ts_masks(case, image)
    return image, labels


def load_id_map(path: Path) -> dict[str, str]:
    return json.loads(path.read_text()) if path.is_file() else {}


def assign_ids(sources: list[str], id_map: dict[str, str], prefix: str = "ct") -> dict[str, str]:
    """Stable pseudonyms: known sources keep their id, new ones get the next free number."""
    out = dict(id_map)
    used = {int(v[len(prefix):]) for v in out.values() if v.startswith(prefix) and v[len(prefix):].isdigit()}
    nxt = max(used, default=-1) + 1
    for s in sources:
        if s not in out:
            out[s] = f"{prefix}{nxt:04d}"
            nxt += 1
    return out


def case_name(case: SourceCase) -> str:
    """How messages name a source case: its file id, or a DICOM series' number and folder (no UID)."""
    return case.series.name if case.series is not None else case.source_id


def refuse_or_skip(case: SourceCase, exc: DataError, skip_invalid: bool) -> str:
    """The skipped line for an invalid case, or (without --skip-invalid) the refusal."""
    why = str(exc).removeprefix(f"{case_name(case)}: ")  # DICOM messages name their series
    if not skip_invalid:
        raise DataError(f"case {case_name(case)} is invalid, nothing was imported: {why}\n"
                        "Fix or remove it, or pass --skip-invalid to import the rest.") from None
    return f"{case_name(case)}: {why}"


# ct.nii.gz at gzip level 1: CT noise makes level 6 ~7x slower for ~1.5 % smaller files
# (bench/dicom_import.py); still deterministic bytes (mtime 0), the same fresh header
CT_GZIP_LEVEL = 1


def stage_cases(cases, layout, staging: Path, skip_invalid: bool) -> tuple[list, list[str]]:
    """Read and check each case once, writing the valid ones under staging/<n>/ (outside
    the cohort folder, so a refusal leaves the output as it was)."""
    ok, skipped = [], []
    for n, case in enumerate(cases):
        try:
            image, labels = read_case(case, layout)
        except DataError as exc:
            skipped.append(refuse_or_skip(case, exc, skip_invalid))
            continue
        image = to_canonical(image)
        image.data = np.round(image.data).astype(np.int16)
        d = staging / f"{n:05d}"
        save_volume(image, d / "ct.nii.gz", CT_GZIP_LEVEL)
        if labels is not None:
            save_volume(to_canonical(labels), d / "truth.nii.gz")
        ok.append((case, d))
    return ok, skipped


def place_cases(staged, layout: str, out: Path, cohort: str, ids: dict[str, str]) -> list[Path]:
    """Give each staged case its meta.json and move it into place under its pseudonym."""
    final = []
    for case, d in staged:
        meta = {"case": ids[case.source_id], "cohort": cohort, "phase": "unknown",
                "source": f"import:{layout}"}
        atomic_write_text(d / "meta.json", json.dumps(meta, indent=1, sort_keys=True) + "\n")
        dst = out / cohort / ids[case.source_id]
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(d, dst)
        final.append(dst)
    return final


def import_cohort(source: Path, out: Path, layout: str = "nifti", cohort: str = "abdomen",
                  skip_invalid: bool = False, id_map_path: Path = Path(DEFAULT_ID_MAP)):
    """Read, check and stage every case, then move them into place (each read once).
    Returns (case dirs, skipped reasons)."""
    source = Path(source)
    if not source.is_dir():
        raise DataError(f"{source}: source folder not found.")
    listed = []
    if layout == "dicom":
        cases, listed = scan_dicom(source)
    else:
        cases = scan_nifti(source) if layout == "nifti" else scan_totalsegmentator(source)
    out, existed = Path(out), Path(out).exists()
    staging = out / f".import-staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staged, skipped = stage_cases(cases, layout, staging, skip_invalid)
        ids = assign_ids([c.source_id for c, _ in staged], load_id_map(id_map_path))
        dirs = place_cases(staged, layout, out, cohort, ids)
    except BaseException:
        if not existed:  # a refused import leaves no folder behind either
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    skipped = listed + skipped
    atomic_write_text(id_map_path, json.dumps(ids, indent=1, sort_keys=True) + "\n")
    # the skipped list names source ids: it goes to the terminal only, never to files
    return dirs, skipped
