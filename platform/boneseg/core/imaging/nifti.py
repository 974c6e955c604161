"""CT data layer: NIfTI read / validate / atomic write (nibabel).

Orientation: arrays are kept in the voxel order stored in the file, with the file's
affine (voxel -> RAS+ mm). `boneseg import` reorients incoming scans to the closest
canonical RAS+ order (a lossless axis permutation/flip, nibabel.as_closest_canonical),
so that inside the platform axis 2 is always the slice axis (inferior -> superior).
Written files carry the affine in both qform and sform (code 1, scanner) and never
copy source header text: descrip, db_name, aux_file and intent_name are blank.

lines: over 300 because every header field a hostile or broken file can get wrong has
its own refusal here, checked before the data is read; split up, the order of the checks
(header, size, forms, data, geometry, HU) would no longer read in one place.
"""
from __future__ import annotations

import contextlib
import gzip
import logging
import os
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from boneseg.core.config import MAX_VOXELS
from boneseg.core.io import atomic_write_bytes
from boneseg.core.labelmap import LABEL_IDS
from boneseg.errors import DataError

# Real CT holds air (~-1000 HU); scanners pad outside the field of view with -1024,
# -2048 or -3024. A volume with no value below -500 HU has no air: it is most likely
# stored values without the rescale slope/intercept applied, or not CT at all.
HU_MIN_ALLOWED = -3100.0
HU_MAX_ALLOWED = 32767.0
HU_AIR_REQUIRED = -500.0
AFFINE_ATOL_MM = 1e-3
MAX_VOX_OFFSET = 1 << 20  # where the voxels start: a header plus extensions, never megabytes
ORTHOGONAL_ATOL = 1e-4  # |cos| between two voxel axes of an unsheared grid


@dataclass
class Volume:
    """A 3-D array with its voxel -> RAS+ mm affine."""

    data: np.ndarray  # (X, Y, Z)
    affine: np.ndarray  # (4, 4)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


def _is_gz(path: Path) -> bool:
    return path.name.endswith(".gz")


def is_nifti_name(path: str | os.PathLike) -> bool:
    return Path(path).name.endswith((".nii", ".nii.gz"))


def strip_nifti_suffix(name: str) -> str:
    """"abd000.nii.gz" -> "abd000" (also .nii)."""
    return name.removesuffix(".gz").removesuffix(".nii")


def to_nifti_bytes(data: np.ndarray, affine: np.ndarray, gz: bool, level: int = 6) -> bytes:
    """Serialise deterministically: fresh header, blank text fields, gzip (`level`) with mtime=0."""
    img = nib.Nifti1Image(data, affine)
    hdr = img.header
    hdr.set_data_dtype(data.dtype)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    for field in ("descrip", "db_name", "aux_file", "intent_name"):
        hdr[field] = b""
    hdr.set_xyzt_units("mm", "sec")
    raw = img.to_bytes()
    # gzip's header stores a timestamp; mtime=0 makes equal volumes equal bytes.
    return gzip.compress(raw, compresslevel=level, mtime=0) if gz else raw


def save_volume(vol: Volume, path: str | os.PathLike, level: int = 6) -> Path:
    """`vol` as .nii or .nii.gz (gzip `level`), atomically."""
    path = Path(path)
    if not is_nifti_name(path):
        raise DataError(f"{path}: output must end in .nii or .nii.gz")
    atomic_write_bytes(path, to_nifti_bytes(vol.data, vol.affine, _is_gz(path), level))
    return path


def load_volume(path: str | os.PathLike, what: str = "image", max_voxels: int = MAX_VOXELS) -> Volume:
    """Read a 3-D NIfTI fully (so truncation is caught here) and check its geometry. The
    header is checked first (shape x dtype against `max_voxels`, where the data starts,
    sform/qform, shear), so a hostile file is refused before its data is decompressed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} file not found. Check the path (expected a .nii or .nii.gz file).")
    try:
        with _quiet():
            img = nib.load(str(path))  # reads the header only
            if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
                raise DataError(f"{path}: not a NIfTI file ({type(img).__name__}). Convert it to NIfTI "
                                "(e.g. dcm2niix for DICOM) first.")
            check_header(img, path, max_voxels)
            data = _read_data(img)
    except DataError:
        raise
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(
            f"{path}: truncated or corrupt compressed data ({exc}). Re-export or re-copy the file."
        ) from None
    except MemoryError:
        raise DataError(f"{path}: not enough memory to read the volume. Free memory or crop the CT."
                        ) from None
    except Exception as exc:  # nibabel raises many types for bad bytes
        raise DataError(
            f"{path}: unreadable as NIfTI ({type(exc).__name__}: {exc}). Re-export the file as .nii/.nii.gz."
        ) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    vol = Volume(np.asarray(data), np.asarray(img.affine, dtype=np.float64))
    check_geometry(vol, path)
    return vol


@contextlib.contextmanager
def _quiet():
    """nibabel's warnings and log lines about header fixes: every field that matters is
    checked here, and a refusal is one line of its own."""
    log = logging.getLogger("nibabel.global")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def _read_data(img) -> np.ndarray:
    """The voxels in the stored dtype, or float32 where the header scales them (nibabel
    would give float64: twice the memory of a CT in HU for nothing)."""
    proxy = img.dataobj
    slope, inter = proxy.slope, proxy.inter
    raw = np.asanyarray(proxy.get_unscaled())
    if (slope, inter) == (1.0, 0.0):
        return raw
    if not (np.isfinite(slope) and np.isfinite(inter)):
        return raw.astype(np.float32) * np.nan  # refused by check_finite as NaN voxels
    out = raw.astype(np.float32)
    del raw
    out *= np.float32(slope)
    out += np.float32(inter)
    return out


def check_header(img, path: Path, max_voxels: int = MAX_VOXELS) -> None:
    """Refusals from the header alone: dimensions, size, data offset, spacing, sform/qform."""
    hdr = img.header
    with nib.openers.ImageOpener(str(path)) as fh:  # as stored: nibabel's fixers turn a zero pixdim into 1
        raw = type(hdr).from_fileobj(fh, check=False)
    shape = tuple(int(d) for d in hdr.get_data_shape())
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise DataError(f"{path}: expected a 3-D volume, got shape {shape} ({len(shape)}-D) in the header's "
                        "dim field. Split 4-D series or stack 2-D slices into one 3-D volume.")
    if min(shape) < 1:
        raise DataError(f"{path}: the header's dim field {list(shape)} has an empty axis. "
                        "Re-export the file.")
    n = int(np.prod(shape, dtype=np.int64))
    if n > max_voxels:
        size = n * hdr.get_data_dtype().itemsize
        raise DataError(f"{path}: the header declares {' x '.join(map(str, shape))} voxels "
                        f"({size / 2**30:.1f} GiB), over the limit of {max_voxels:,} voxels "
                        "(data.max_voxels). Crop or downsample the CT, or raise data.max_voxels if the "
                        "machine has the memory.")
    offset = float(raw["vox_offset"])
    if not np.isfinite(offset) or offset < 0 or offset > MAX_VOX_OFFSET:
        raise DataError(f"{path}: the header's vox_offset {offset:g} is not where NIfTI data starts "
                        f"(0 to {MAX_VOX_OFFSET} bytes). The file is corrupt: re-export it.")
    _check_raw_pixdim(raw, path)
    _check_forms(hdr, path)


def _check_forms(hdr, path: Path) -> None:
    """Both forms set must agree (viewers differ in which one they use), and the grid must
    not be sheared: boneseg writes one affine as both, so it would otherwise change the grid."""
    sform, scode = hdr.get_sform(coded=True)
    qform, qcode = hdr.get_qform(coded=True)
    for name, aff, code in (("sform", sform, scode), ("qform", qform, qcode)):
        if code and (aff is None or not np.all(np.isfinite(aff))):
            raise DataError(f"{path}: the header's {name} holds NaN/inf. Fix the {name} (or set "
                            f"{name}_code to 0).")
    if scode and qcode and not np.allclose(sform, qform, atol=AFFINE_ATOL_MM):
        diff = float(np.abs(sform - qform).max())
        raise DataError(f"{path}: the header's sform and qform disagree (by up to {diff:.4g} mm), so "
                        "viewers would show different grids. Decide which is right and write it as both "
                        "(e.g. nibabel: img.set_qform(img.get_sform())), or set the wrong one's code to 0.")
    aff = sform if scode else qform if qcode else None
    if aff is None:
        return
    axes = np.asarray(aff[:3, :3], dtype=float)
    norms = np.linalg.norm(axes, axis=0)
    if np.all(norms > 0):
        cos = (axes / norms).T @ (axes / norms)
        off = np.abs(cos - np.eye(3)).max()
        if off > ORTHOGONAL_ATOL:
            raise DataError(f"{path}: the {'sform' if scode else 'qform'} is sheared (voxel axes "
                            f"{np.degrees(np.arccos(np.clip(1 - off, -1, 1))):.2f} deg off square). "
                            "boneseg takes orthogonal grids: resample the CT onto one (e.g. with 3D "
                            "Slicer or SimpleITK) first.")


def _check_raw_pixdim(hdr, path: Path) -> None:
    # the header as stored (nibabel replaces a zero pixdim by 1 where it builds the qform)
    pixdim = np.asarray(hdr["pixdim"][1:4], dtype=float)
    if np.any(~np.isfinite(pixdim)) or np.any(pixdim <= 0):
        raise DataError(f"{path}: voxel spacing (pixdim) {pixdim.tolist()} has zero or negative "
                        "entries. Fix pixdim / the affine in the header.")


def check_geometry(vol: Volume, path: str | os.PathLike) -> None:
    aff = vol.affine
    if not np.all(np.isfinite(aff)):
        raise DataError(f"{path}: affine holds NaN/inf. Fix the header's qform/sform.")
    zooms = np.linalg.norm(aff[:3, :3], axis=0)
    if np.any(zooms <= 0) or abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        raise DataError(f"{path}: voxel spacing {np.round(zooms, 4).tolist()} has zero or negative "
                        "entries. Fix pixdim / the affine in the header.")


def check_finite(vol: Volume, path: str | os.PathLike) -> None:
    if np.issubdtype(vol.data.dtype, np.floating):
        bad = ~np.isfinite(vol.data)
        if bad.any():
            raise DataError(f"{path}: {int(bad.sum())} voxels are NaN or inf. Replace them "
                            "(e.g. with -1024 HU outside the body) before importing.")


def check_ct(vol: Volume, path: str | os.PathLike) -> None:
    """Refuse data that cannot be a CT in Hounsfield units."""
    check_finite(vol, path)
    lo, hi = float(vol.data.min()), float(vol.data.max())
    fix = "Expected Hounsfield units (air ~ -1000, water 0, bone > 200): apply the rescale slope/intercept."
    if lo < HU_MIN_ALLOWED or hi > HU_MAX_ALLOWED:
        raise DataError(f"{path}: intensities [{lo:g}, {hi:g}] are outside the HU range "
                        f"[{HU_MIN_ALLOWED:g}, {HU_MAX_ALLOWED:g}]. {fix}")
    if lo > HU_AIR_REQUIRED:
        raise DataError(f"{path}: no voxel below {HU_AIR_REQUIRED:g} HU (min {lo:g}), so the "
                        f"volume holds no air and is not plausibly a CT in HU. {fix}")


def check_labels(vol: Volume, path: str | os.PathLike, allowed: tuple[int, ...] = tuple(LABEL_IDS)) -> None:
    check_finite(vol, path)
    data = vol.data
    if np.issubdtype(data.dtype, np.floating) and np.any(data != np.round(data)):
        raise DataError(f"{path}: label map holds non-integer values. Save it with an integer dtype.")
    values = np.unique(data)
    extra = sorted(set(values.astype(np.int64).tolist()) - set(allowed))
    if extra:
        raise DataError(
            f"{path}: label values {extra[:10]} are not label ids {list(allowed)} "
            f"({', '.join(f'{k} {v}' for k, v in LABEL_IDS.items() if k in allowed)}). Remap them."
        )


def check_pair(image: Volume, label: Volume, image_path, label_path) -> None:
    """The label map must lie on exactly the image's voxel grid."""
    if image.shape != label.shape:
        raise DataError(f"{label_path}: shape {label.shape} differs from its image {image_path} "
                        f"{image.shape}. Resample the label map onto the image grid (nearest neighbour).")
    if not np.allclose(image.affine, label.affine, atol=AFFINE_ATOL_MM):
        raise DataError(f"{label_path}: affine differs from its image {image_path} "
                        f"(max difference {np.abs(image.affine - label.affine).max():.4g} mm). "
                        "Both must share one voxel grid: copy the image's geometry or resample.")


def load_ct(path, max_voxels: int = MAX_VOXELS) -> Volume:
    vol = load_volume(path, "CT image", max_voxels)
    check_ct(vol, path)
    return vol


def load_labels(path, image: Volume | None = None, image_path=None, allowed=tuple(LABEL_IDS)) -> Volume:
    vol = load_volume(path, "label map")
    check_labels(vol, path, allowed)
    vol.data = vol.data.astype(np.uint8)
    if image is not None:
        check_pair(image, vol, image_path, path)
    return vol


def to_canonical(vol: Volume) -> Volume:
    """Reorder/flip axes to the closest RAS+ orientation (lossless; no resampling)."""
    ornt = nib.orientations.io_orientation(vol.affine)
    data = nib.orientations.apply_orientation(vol.data, ornt)
    inv = nib.orientations.inv_ornt_aff(ornt, vol.data.shape)
    return Volume(np.ascontiguousarray(data), vol.affine @ inv)


def to_hu16(data: np.ndarray) -> np.ndarray:
    """HU as int16 (rounded), converting in place where the data is float: the import's
    memory stays near one float32 volume."""
    if np.issubdtype(data.dtype, np.integer):
        return data.astype(np.int16, copy=False)
    np.rint(data, out=data)
    return data.astype(np.int16)
