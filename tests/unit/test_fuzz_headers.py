"""Property-based fuzzing of the import (hypothesis, a fixed seed, bounded examples and data):
500 mutated NIfTI headers and 500 mutated DICOM series. Every one ends in an import or a
DataError (never another exception), and a refused one leaves no output folder behind."""
from __future__ import annotations

import gzip
import shutil
import warnings
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from boneseg.core.data.importing import ImportOptions, import_cohort
from boneseg.core.layout import find_cases
from boneseg.errors import DataError
from conftest import RAS, make_ct, write_dicom_series

EXAMPLES = 500
MAX_VOXELS = 50_000  # a mutated dim may declare anything: keep each read small
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))

NIFTI_FIELDS = ["sizeof_hdr", "dim", "datatype", "bitpix", "pixdim", "vox_offset", "scl_slope", "scl_inter",
                "qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "srow_x",
                "srow_y", "srow_z", "magic", "dim_info", "xyzt_units", "intent_code", "slice_end"]
NUMBERS = st.one_of(
    st.integers(-2**31, 2**31 - 1), st.sampled_from([0, -1, 1, 2, 3, 7, 255, 32767, 65535, 2**20]),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([np.nan, np.inf, -np.inf, 1e30]))


def run_import(src: Path, out: Path, layout: str, outcomes: Counter) -> None:
    """One import; the property: success (a whole case) or a DataError with nothing written."""
    shutil.rmtree(out, ignore_errors=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            options = ImportOptions(max_voxels=MAX_VOXELS)
            written, _, skipped = import_cohort(src, out, layout, options=options,
                                                id_map_path=out.parent / "map.json")
    except DataError as exc:
        message = str(exc).strip()
    else:
        message = None
    if message is not None:
        assert message, "an empty message"
        assert not out.exists(), f"a refused import left {out}"
        outcomes["refused"] += 1
        return
    assert len(written) == 1 and [c["case"] for c in find_cases(out)] == [written[0].name]
    outcomes["imported"] += 1
    assert not list(out.parent.glob(".*staging*"))


def base_nifti() -> bytes:
    img = nib.Nifti1Image(make_ct(shape=(10, 8, 4)).data, RAS)
    img.set_qform(RAS, 1)
    return img.to_bytes()


def test_mutated_nifti_headers_import_or_are_refused(tmp_path):
    base = base_nifti()
    outcomes: Counter = Counter()

    @FUZZ
    @seed(22)
    @given(mutations=st.lists(st.tuples(st.sampled_from(NIFTI_FIELDS), st.integers(0, 7), NUMBERS),
                              min_size=0, max_size=3),
           flips=st.lists(st.tuples(st.integers(0, 347), st.integers(0, 255)), max_size=3),
           gz=st.booleans(), cut=st.sampled_from([None, None, None, 100, 348, 360, 500]))
    def one(mutations, flips, gz, cut):
        hdr = nib.Nifti1Header.from_fileobj(__import__("io").BytesIO(base), check=False)
        for field, index, value in mutations:
            arr = hdr[field]
            try:
                with np.errstate(all="ignore"):
                    if arr.shape:
                        arr = arr.copy()
                        arr.flat[index % arr.size] = value
                        hdr[field] = arr
                    else:
                        hdr[field] = value
            except (ValueError, TypeError, OverflowError):
                continue  # not representable in that field's dtype: no file to try
        raw = bytearray(hdr.binaryblock + base[348:])
        for pos, byte in flips:
            raw[pos] = byte
        raw = bytes(raw[:cut] if cut else raw)
        src = tmp_path / "src"
        shutil.rmtree(src, ignore_errors=True)
        (src / "images").mkdir(parents=True)
        name = "case.nii.gz" if gz else "case.nii"
        (src / "images" / name).write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
        run_import(src, tmp_path / "raw", "nifti", outcomes)

    one()
    print(f"NIfTI fuzz: {dict(outcomes)}")
    assert sum(outcomes.values()) >= EXAMPLES and outcomes["imported"] and outcomes["refused"]


DICOM_TAGS = ["Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
              "SamplesPerPixel", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
              "RescaleSlope", "RescaleIntercept", "NumberOfFrames", "Modality", "SeriesInstanceUID",
              "ImageType", "PhotometricInterpretation", "SliceThickness", "SeriesNumber", "PixelData"]
TEXT = st.one_of(st.text(alphabet="0123456789.-+eE\\ NaIfx", max_size=24),
                 st.sampled_from(["", "0", "-1", "NaN", "inf", "1e309", "abc", "1\\2", "0\\0\\0\\0\\0\\0",
                                  "65535", "9999999"]))


def test_mutated_dicom_series_import_or_are_refused(tmp_path):
    base = tmp_path / "base"
    write_dicom_series(make_ct(shape=(10, 8, 3)), base)
    files = sorted(base.iterdir())
    outcomes: Counter = Counter()

    @FUZZ
    @seed(22)
    @given(mutations=st.lists(st.tuples(st.integers(0, 2), st.sampled_from(DICOM_TAGS),
                                        st.one_of(st.none(), TEXT)), max_size=3),
           flips=st.lists(st.tuples(st.integers(0, 2), st.integers(132, 700), st.integers(0, 255)),
                          max_size=2),
           drop=st.sampled_from([None, None, None, 0, 1]))
    def one(mutations, flips, drop):
        src = tmp_path / "src"
        shutil.rmtree(src, ignore_errors=True)
        shutil.copytree(base, src)
        paths = [src / f.name for f in files]
        for k, tag, value in mutations:
            ds = pydicom.dcmread(paths[k])
            if value is None:
                if tag in ds:
                    delattr(ds, tag)
            else:  # any text under a string VR: what a broken exporter writes
                ds[tag] = pydicom.DataElement(pydicom.datadict.tag_for_keyword(tag), "LO", value)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds.save_as(paths[k], enforce_file_format=True)
        for k, pos, byte in flips:
            raw = bytearray(paths[k].read_bytes())
            raw[min(pos, len(raw) - 1)] = byte
            paths[k].write_bytes(bytes(raw))
        if drop is not None:
            paths[drop].unlink()
        run_import(src, tmp_path / "raw", "dicom", outcomes)

    one()
    print(f"DICOM fuzz: {dict(outcomes)}")
    assert sum(outcomes.values()) >= EXAMPLES and outcomes["imported"] and outcomes["refused"]
