"""DICOM CT series -> Volume (pydicom): find the series under a folder, check them, and
build each one's HU volume and RAS+ affine.

Why pydicom, not dcm2niix or SimpleITK, converts: every refusal below needs the headers
anyway (modality, image type, geometry per instance, rescale), and reading them in
process gives one pass, messages that name the series, no subprocess, no sidecar and
no file named after header text. The tests check the geometry against dcm2niix, the
field's standard converter.

Geometry (DICOM PS3.3 C.7.6.2): voxel (i = column, j = row, k = slice) lies at
IPP_0 + i * dc * row_cosines + j * dr * column_cosines + k * slice_step in LPS mm,
where PixelSpacing = (dr, dc) and slice_step = the IPP step along the normal. The RAS+
affine is diag(-1, -1, 1) of that. Arrays are kept in that (i, j, k) order; callers
reorder them to the closest RAS+ order (`nifti.to_canonical`), as NIfTI import does.

Privacy: series are named in messages by their SeriesNumber and folder, never by
UID or by any patient, study or institution text. `Series.uid` only groups files: it
leaves this module nowhere (the import keys a case by its voxels, `importing.content_key`).

Hostile or broken headers: every tag that is read is parsed in a guard that turns any
defect into a DataError naming the series, the file and the tag; the size (Rows x
Columns x files) is checked from the headers before any pixel data is decoded.

lines: over 300 because each header defect has its own refusal with its own fix; split,
the order of the checks (headers, size, pixels, geometry) would no longer read in one place.
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from boneseg.core.imaging.nifti import (
    HU_AIR_REQUIRED,
    HU_MAX_ALLOWED,
    HU_MIN_ALLOWED,
    MAX_VOXELS,
    Volume,
    check_ct,
)
from boneseg.errors import DataError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# objects that carry no image: ignored (dose reports, presentation states, key objects, ...)
NON_IMAGE_MODALITIES = {"SR", "PR", "KO", "DOC", "REG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD"}
ORIENTATION_ATOL = 1e-4  # direction cosines
SPACING_RTOL = 0.01  # slice steps may differ by 1 % before the series counts as unevenly spaced
TILT_ATOL_MM = 0.01  # how far a slice origin may sit off the line along the slice normal
HEADER_TAGS = ["Modality", "SeriesInstanceUID", "SeriesNumber", "ImageType", "SOPClassUID", "NumberOfFrames",
               "Rows", "Columns"]
UNIT_ATOL = 1e-3  # ImageOrientationPatient: unit-length, orthogonal direction cosines


@dataclass
class Series:
    uid: str  # SeriesInstanceUID: never logged, only the local id map holds it
    name: str  # "series 3 in scans/ab" for messages: SeriesNumber and folder, no header text
    modality: str
    files: list[Path]
    localizer: bool = False
    multiframe: bool = False
    voxels: int = 0  # Rows x Columns x files (x frames), from the headers: checked before pixels are read
    problem: str | None = None  # a header defect found while scanning: read_series refuses with it


@dataclass
class DicomCT:
    """A series read whole: the HU volume in (column, row, slice) order and its instances
    (pixel data dropped), sorted by slice position (k = 0 first)."""

    volume: Volume
    datasets: list
    name: str


def _pydicom():
    import pydicom

    # every value read is checked here, with a message that names the file and tag; pydicom's
    # own warnings about the same values would only add noise to that one line
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    return pydicom


def is_dicom_file(path: Path) -> bool:
    """Part 10 files: 128 bytes of preamble, then 'DICM'."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _series_name(number, files: list[Path], root: Path) -> str:
    folders = {f.parent for f in files}
    where = os.path.relpath(folders.pop(), root) if len(folders) == 1 else f"{len(folders)} folders"
    num = "?" if number in (None, "") else str(number)
    return f"series {num} in {where if where != '.' else root.name}"


def scan_series(root: str | os.PathLike) -> tuple[list[Series], list[str]]:
    """Every DICOM image series under `root` (nested folders, no DICOMDIR needed), grouped
    by SeriesInstanceUID. Returns (series, one line per unreadable file)."""
    pydicom = _pydicom()
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: DICOM folder not found.")
    groups: dict[str, list] = defaultdict(list)
    unreadable = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        if not is_dicom_file(path):
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
            uid = str(ds.get("SeriesInstanceUID", "") or "")
            modality = str(ds.get("Modality", "") or "")
        except Exception as exc:
            unreadable.append(f"{path}: unreadable DICOM header ({type(exc).__name__}). The file is "
                              "truncated or corrupt: re-export it, or remove it from the folder.")
            continue
        if not uid or modality in NON_IMAGE_MODALITIES:  # a DICOMDIR, a dose report, ...
            continue
        groups[uid].append((path, ds))
    out = [_series(uid, items, root) for uid, items in groups.items()]
    out.sort(key=lambda s: (s.name, str(s.files[0])))
    return out, unreadable


def _series(uid: str, items: list, root: Path) -> Series:
    files = [p for p, _ in items]
    first = items[0][1]
    try:
        number = first.get("SeriesNumber")
    except Exception:
        number = None
    name = _series_name(number, files, root)
    s = Series(uid, name, str(first.get("Modality", "") or ""), files)
    voxels = 0
    for path, ds in items:
        try:
            image_type = {str(v).upper() for v in (ds.get("ImageType") or [])}
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        except Exception as exc:
            tag = _bad_tag(ds, ("ImageType", "NumberOfFrames", "Rows", "Columns"))
            s.problem = (f"{name}: {path.name} has a malformed {tag} ({type(exc).__name__}). "
                         "Re-export the series.")
            return s
        if frames < 1 or rows < 1 or cols < 1:
            s.problem = (f"{name}: {path.name} declares {rows} rows, {cols} columns, {frames} frames. "
                         "The header is corrupt: re-export the series.")
            return s
        s.localizer |= "LOCALIZER" in image_type
        s.multiframe |= frames > 1
        voxels += rows * cols * frames
    s.voxels = voxels
    return s


def _bad_tag(ds, keys: tuple[str, ...]) -> str:
    """The first of `keys` whose value does not parse."""
    for k in keys:
        try:
            v = ds.get(k)
            if k in ("NumberOfFrames", "Rows", "Columns") and v not in (None, ""):
                int(v)
            elif v is not None:
                list(v) if k == "ImageType" else str(v)
        except Exception:
            return k
    return "header"


def is_dicom_folder(path: Path) -> bool:
    """A folder with at least one DICOM file in it (or below it)."""
    if not path.is_dir():
        return False
    return any(is_dicom_file(p) for p in path.rglob("*") if p.is_file())


def _read_full(path: Path, name: str):
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise DataError(f"{name}: {path.name} is unreadable ({type(exc).__name__}). The file is truncated or "
                        "corrupt: re-export the series.") from None
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        try:
            compressed = syntax is not None and syntax.is_compressed
        except Exception:  # not a transfer syntax at all: reported as unreadable below
            compressed = False
        if compressed:
            raise DataError(f"{name}: {path.name}'s pixel data is compressed ({syntax.name}) and no "
                            "installed decoder reads it (TransferSyntaxUID). Re-export the series "
                            "uncompressed (explicit VR little endian), or install a decoder for it "
                            "(pydicom's docs list them).") from None
        raise DataError(f"{name}: {path.name} has unreadable pixel data ({type(exc).__name__}: {exc}). "
                        "The file is truncated or corrupt: re-export the series.") from None
    return ds, pixels


def _numbers(ds, path: Path, name: str, key: str, n: int) -> np.ndarray:
    """A multi-valued decimal tag as n finite floats, or a DataError naming the file and tag."""
    try:
        v = ds.get(key)
        seq = [v] if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__") else list(v)
        vals = np.array([float(x) for x in seq], dtype=float)
    except Exception:
        vals = np.array([])
    if vals.shape != (n,) or not np.all(np.isfinite(vals)):
        raise DataError(f"{name}: {path.name} has a malformed {key} ({n} finite numbers expected). "
                        "Re-export the series.")
    return vals


def _required(ds, path: Path, name: str, keys: tuple[str, ...]):
    missing = [k for k in keys if ds.get(k) in (None, "")]
    if missing:
        raise DataError(f"{name}: {path.name} has no {', '.join(missing)}. A CT slice needs its geometry "
                        "(ImagePositionPatient, ImageOrientationPatient, PixelSpacing): re-export it.")


def _geometry(ds, path: Path, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ImagePositionPatient, ImageOrientationPatient, PixelSpacing) of one slice, checked."""
    _required(ds, path, name, ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"))
    ipp = _numbers(ds, path, name, "ImagePositionPatient", 3)
    iop = _numbers(ds, path, name, "ImageOrientationPatient", 6)
    spacing = _numbers(ds, path, name, "PixelSpacing", 2)
    if np.any(spacing <= 0):
        raise DataError(f"{name}: {path.name} has PixelSpacing {spacing.tolist()}: both must be positive "
                        "(mm between rows, columns). Re-export the series.")
    r, c = iop[:3], iop[3:]
    if (abs(np.linalg.norm(r) - 1) > UNIT_ATOL or abs(np.linalg.norm(c) - 1) > UNIT_ATOL
            or abs(float(r @ c)) > UNIT_ATOL):
        raise DataError(f"{name}: {path.name} has ImageOrientationPatient {iop.round(5).tolist()}: not two "
                        "orthogonal unit vectors (a sheared or corrupt grid). Re-export the series.")
    return ipp, iop, spacing


def check_series(series: Series, max_voxels: int = MAX_VOXELS) -> None:
    """Refusals that need no pixel data: header defects, modality, enhanced multi-frame
    objects, and a size over `max_voxels` (Rows x Columns x files)."""
    if series.problem:
        raise DataError(series.problem)
    if series.modality != "CT":
        raise DataError(f"{series.name}: modality {series.modality or 'missing'}, not CT. boneseg imports "
                        "CT only: remove the series from the folder (or pass --skip-invalid).")
    if series.multiframe:
        raise DataError(f"{series.name}: an enhanced multi-frame CT object (NumberOfFrames > 1). Convert it "
                        "to single-frame slices (e.g. dcm2niix to NIfTI, then import the NIfTI layout).")
    if series.voxels > max_voxels:
        raise DataError(f"{series.name}: Rows x Columns x {len(series.files)} files = {series.voxels:,} "
                        f"voxels, over the limit of {max_voxels:,} (data.max_voxels). Crop the series, or "
                        "raise data.max_voxels if the machine has the memory.")


def _hu(ds, pixels: np.ndarray, path: Path, name: str) -> np.ndarray:
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        slope = float(_numbers(ds, path, name, "RescaleSlope", 1)[0])
        intercept = float(_numbers(ds, path, name, "RescaleIntercept", 1)[0])
        if slope == 0:
            raise DataError(f"{name}: {path.name} has RescaleSlope 0, which maps every pixel to one value. "
                            "Re-export the series with its real rescale tags.")
    else:
        lo, hi = float(pixels.min()), float(pixels.max())
        if lo > HU_AIR_REQUIRED or lo < HU_MIN_ALLOWED or hi > HU_MAX_ALLOWED:
            raise DataError(f"{name}: {path.name} has no RescaleSlope/RescaleIntercept and its stored values "
                            f"[{lo:g}, {hi:g}] are not Hounsfield units (no air below {HU_AIR_REQUIRED:g}). "
                            "Re-export the series with its rescale tags (CT usually has intercept -1024).")
        slope, intercept = 1.0, 0.0
    out = pixels.astype(np.float32)
    out *= np.float32(slope)
    out += np.float32(intercept)
    return out


def _slice_order(positions: np.ndarray, normal: np.ndarray, name: str, files: list[Path]) -> np.ndarray:
    """Indices that sort the slices along the normal; refuses duplicates, gaps, uneven steps and tilt."""
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along, positions = along[order], positions[order]
    steps = np.diff(along)
    if np.any(steps < 1e-3):
        k = int(np.argmax(steps < 1e-3))
        raise DataError(f"{name}: {files[order[k]].name} and {files[order[k + 1]].name} lie at the same "
                        f"slice position ({along[k]:.3f} mm): two acquisitions in one series? Export them as "
                        "separate series, or remove the duplicates.")
    step = float(np.median(steps))
    bad = np.abs(steps - step) > SPACING_RTOL * step
    if bad.any():
        k = int(np.argmax(bad))
        n_missing = steps[k] / step - 1
        if abs(n_missing - round(n_missing)) < 0.1 and round(n_missing) >= 1:
            raise DataError(f"{name}: {int(round(n_missing))} slice(s) missing between positions "
                            f"{along[k]:.2f} and {along[k + 1]:.2f} mm ({files[order[k]].name} -> "
                            f"{files[order[k + 1]].name}; slices are {step:.3g} mm apart). Re-export the "
                            "complete series.")
        raise DataError(f"{name}: unevenly spaced slices (steps from {steps.min():.3g} to "
                        f"{steps.max():.3g} mm, first odd one after position {along[k]:.2f} mm). Resample "
                        "it to even spacing (e.g. dcm2niix, then import as NIfTI).")
    off = positions - positions[0] - np.outer(along - along[0], normal)
    if np.abs(off).max() > TILT_ATOL_MM + 1e-3 * abs(along[-1] - along[0]):
        tilt = np.degrees(np.arctan2(np.linalg.norm(off[-1]), abs(along[-1] - along[0])))
        raise DataError(f"{name}: the slices are not stacked along their normal (gantry tilt "
                        f"~{tilt:.1f} deg). Correct the tilt first (dcm2niix does), then import as NIfTI.")
    return order


def read_series(series: Series, max_voxels: int = MAX_VOXELS) -> DicomCT:
    """The whole series as an HU volume with its RAS+ affine, or a DataError naming it."""
    check_series(series, max_voxels)
    if len(series.files) < 2:
        raise DataError(f"{series.name}: one slice only. A CT volume needs at least 2 slices.")
    name, dss, planes, geo = series.name, [], [], []
    for path in series.files:
        ds, pixels = _read_full(path, name)
        geo.append(_geometry(ds, path, name))
        if pixels.ndim != 2:
            raise DataError(f"{name}: {path.name} holds {pixels.shape} pixels, not one 2-D slice.")
        planes.append(_hu(ds, pixels, path, name))
        del ds.PixelData, pixels
        dss.append(ds)
    shapes = sorted({p.shape for p in planes})
    if len(shapes) > 1:
        raise DataError(f"{name}: mixed slice sizes {[f'{r}x{c}' for r, c in shapes]} in one series. "
                        "Split it into one series per size.")
    ipp, iop, spacing = (np.array([g[i] for g in geo]) for i in range(3))
    if np.abs(iop - iop[0]).max() > ORIENTATION_ATOL:
        raise DataError(f"{name}: mixed slice orientations in one series. Split it into one series per "
                        "orientation.")
    if np.abs(spacing - spacing[0]).max() > 1e-4:
        raise DataError(f"{name}: mixed pixel spacings {sorted({tuple(s) for s in spacing.tolist()})} in one "
                        "series. Split it into one series per spacing.")
    row_cos, col_cos = iop[0, :3], iop[0, 3:]
    normal = np.cross(row_cos, col_cos)
    order = _slice_order(ipp, normal, name, series.files)
    ipp = ipp[order]
    lps = np.eye(4)
    lps[:3, 0] = row_cos * spacing[0, 1]
    lps[:3, 1] = col_cos * spacing[0, 0]
    lps[:3, 2] = (ipp[-1] - ipp[0]) / (len(ipp) - 1)
    lps[:3, 3] = ipp[0]
    rows, cols = planes[0].shape
    data = np.empty((cols, rows, len(planes)), np.float32)  # (i, j, k); each plane is freed once placed
    for k, i in enumerate(order):
        data[:, :, k] = planes[i].T
        planes[i] = None
    vol = Volume(data, LPS_TO_RAS @ lps)
    check_ct(vol, name)
    return DicomCT(vol, [dss[i] for i in order], name)


def read_ct_folder(folder: str | os.PathLike) -> tuple[DicomCT, list[str]]:
    """The one CT series in a folder (localizers skipped), as `boneseg segment` takes it.
    Returns it and the names of the skipped localizers."""
    found, unreadable = scan_series(folder)
    if unreadable:
        raise DataError(unreadable[0])
    localizers = [s.name for s in found if s.localizer]
    cts = [s for s in found if not s.localizer]
    if not cts:
        raise DataError(f"{folder}: no DICOM CT series in this folder"
                        f"{' (only localizers)' if localizers else ''}.")
    if len(cts) > 1:
        raise DataError(f"{folder}: {len(cts)} series ({', '.join(s.name for s in cts)}). "
                        "Point --input at one series' folder, or import them all with "
                        "`boneseg import --layout dicom`.")
    return read_series(cts[0]), localizers
