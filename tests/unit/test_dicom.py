"""DICOM in (`boneseg import --layout dicom`): geometry against dcm2niix, HU, refusals, privacy."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from boneseg.core.data.importing import ImportOptions, import_cohort
from boneseg.core.imaging.dicom import scan_series
from boneseg.core.imaging.nifti import Volume, load_ct, to_canonical
from boneseg.errors import DataError
from conftest import PLANTED, UID_ROOT, make_ct, write_dicom_series

CT5N = Path(pydicom.data.__file__).parent / "test_files/dicomdirtests/98892001/CT5N"
DCM2NIIX = Path(sys.executable).parent / "dcm2niix"


def dcm2niix(series_dir: Path, out: Path) -> Volume:
    """The second reader: dcm2niix (no JSON sidecar), canonical RAS+ order."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(DCM2NIIX), "-b", "n", "-z", "n", "-f", "ref", "-o", str(out), str(series_dir)],
                   check=True, capture_output=True)
    img = nib.load(str(out / "ref.nii"))
    return to_canonical(Volume(np.asarray(img.dataobj, dtype=np.float64), img.affine))


def oblique_lps(shape) -> np.ndarray:
    """Rows running anterior -> posterior and columns right -> left (as scanners store them),
    then turned 23 degrees about the slice normal and 9 about a row: a non-trivial orientation."""
    a, b = np.radians(23), np.radians(9)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    aff = np.eye(4)
    aff[:3, :3] = rx @ rz @ np.diag([-0.75, -0.9, 2.5])  # i -> left, j -> posterior in RAS
    aff[:3, 3] = [61.5, -12.25, -233.0]
    return aff


def imported(out: Path) -> list[Path]:
    return sorted(p for p in (out / "abdomen").iterdir() if p.is_dir())


def test_ct5n_geometry_equals_dcm2niix_and_values_are_rescaled_pixels(tmp_path):
    # the study folder as exported: CT5N beside CT2N, a real 2-image localizer series
    dirs, _, skipped = import_cohort(CT5N.parent, tmp_path / "raw", "dicom",
                                     id_map_path=tmp_path / "map.json")
    assert len(dirs) == 1 and skipped == ["series 4 in CT2N: localizer (scout), not a CT volume"]
    ours = load_ct(dirs[0] / "ct.nii.gz")
    ref = dcm2niix(CT5N, tmp_path / "ref")
    assert ours.shape == ref.shape == (16, 16, 5)
    np.testing.assert_allclose(ours.affine, ref.affine, atol=1e-3)
    np.testing.assert_array_equal(ours.data, ref.data)
    # every stored pixel x slope + intercept sits at its own world position in the import
    inv = np.linalg.inv(ours.affine)
    for f in sorted(CT5N.iterdir()):
        ds = pydicom.dcmread(f)
        rows, cols = np.meshgrid(np.arange(ds.Rows), np.arange(ds.Columns), indexing="ij")
        iop = np.array(ds.ImageOrientationPatient, float)
        rc, cc = iop[:3], iop[3:]
        dr, dc = (float(v) for v in ds.PixelSpacing)
        lps = (np.array(ds.ImagePositionPatient, float)[:, None, None] + rc[:, None, None] * cols * dc
               + cc[:, None, None] * rows * dr)
        ras = np.stack([-lps[0], -lps[1], lps[2], np.ones_like(lps[0])]).reshape(4, -1)
        ijk = np.rint(inv @ ras)[:3].astype(int)
        hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(ours.data[ijk[0], ijk[1], ijk[2]], hu.reshape(-1))


def test_synthetic_ct_round_trips_with_its_ras_affine_and_no_identifier(tmp_path):
    ct = make_ct(shape=(30, 26, 7), affine=oblique_lps((30, 26, 7)), seed=5)
    write_dicom_series(ct, tmp_path / "export/PLANTEDID4711/study/ser2")
    idmap = tmp_path / "local/map.json"
    dirs, _, _ = import_cohort(tmp_path / "export", tmp_path / "raw", "dicom", id_map_path=idmap)
    got, want = load_ct(dirs[0] / "ct.nii.gz"), to_canonical(ct)
    np.testing.assert_allclose(got.affine, want.affine, atol=1e-3)
    np.testing.assert_array_equal(got.data, want.data)
    assert nib.aff2axcodes(got.affine) == ("R", "A", "S")
    ref = dcm2niix(tmp_path / "export/PLANTEDID4711/study/ser2", tmp_path / "ref")
    np.testing.assert_allclose(ref.affine, got.affine, atol=1e-3)
    meta = json.loads((dirs[0] / "meta.json").read_text())
    assert meta == {"case": "ct0000", "cohort": "abdomen", "phase": "unknown", "source": "import:dicom"}
    planted = [v.encode() for v in PLANTED.values()] + [UID_ROOT.encode(), b"Planted"]
    for f in (tmp_path / "raw").rglob("*"):
        if f.is_file():
            raw = f.read_bytes()
            body = nib.load(str(f)).to_bytes() if f.name.endswith(".nii.gz") else raw
            assert not any(p in raw or p in body for p in planted), f"{f} holds a header identifier"
    # the id map keys the case by its voxels: no UID, no header text, even there
    doc = json.loads(idmap.read_text())
    assert list(doc["cases"].values()) == ["ct0000"] and next(iter(doc["cases"])).startswith("ct-sha256:")
    assert UID_ROOT not in idmap.read_text() and "Planted" not in idmap.read_text()


def test_nested_series_become_cases_localizers_are_skipped_and_listed(tmp_path):
    src = tmp_path / "pacs"
    write_dicom_series(make_ct(seed=1), src / "a/1", series_number=3)
    write_dicom_series(make_ct(seed=2), src / "a/1", series_number=4)  # two series, one folder
    write_dicom_series(make_ct(seed=3), src / "b/deep/er", series_number=7)
    write_dicom_series(make_ct(shape=(24, 20, 2)), src / "scout", series_number=1,
                       image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    (src / "README.txt").write_text("not dicom")
    dirs, _, skipped = import_cohort(src, tmp_path / "raw", "dicom", id_map_path=tmp_path / "m.json")
    assert [d.name for d in dirs] == ["ct0000", "ct0001", "ct0002"]
    assert skipped == ["series 1 in scout: localizer (scout), not a CT volume"]
    series, unreadable = scan_series(src)
    assert unreadable == [] and sorted(s.name for s in series) == [
        "series 1 in scout", "series 3 in a/1", "series 4 in a/1", "series 7 in b/deep/er"]
    # a second import of the same export keeps the ids
    before = {p: p.read_bytes() for p in (tmp_path / "raw").rglob("*") if p.is_file()}
    dirs2, same, _ = import_cohort(src, tmp_path / "raw", "dicom", id_map_path=tmp_path / "m.json")
    assert dirs2 == [] and [d.name for d in same] == ["ct0000", "ct0001", "ct0002"]
    assert {p: p.read_bytes() for p in (tmp_path / "raw").rglob("*") if p.is_file()} == before


def _drop_middle(files):
    files[len(files) // 2].unlink()


def _truncate(files):
    raw = files[2].read_bytes()
    files[2].write_bytes(raw[: len(raw) - 300])


def _mixed_sizes(files, folder):
    # a second stack of another size, written into the first one's series
    uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    for f in write_dicom_series(make_ct(shape=(20, 20, 3), seed=9), folder / "other"):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = uid
        ds.save_as(f)


def _tilt(files):
    for f in files:
        ds = pydicom.dcmread(f)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, round(y + 0.4 * z, 4), z]
        ds.save_as(f)


def _uneven(files):
    ds = pydicom.dcmread(files[0])  # the last slice (written in reverse): moved 1 mm further
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    ds.ImagePositionPatient = [x, y, z + 1.0]
    ds.save_as(files[0])


BAD_SRC = r"case series 2 in src is invalid, nothing was imported: "


@pytest.mark.parametrize("case, match", [
    ("missing_slice", BAD_SRC + r"1 slice\(s\) missing between positions .* slices are 3 mm apart"),
    ("not_ct", BAD_SRC + r"modality MR, not CT.*remove the series"),
    ("truncated", r"unreadable pixel data .*truncated"),
    ("mixed", r"case series 2 in 2 folders is invalid, nothing was imported: "
              r"mixed slice sizes \['20x20', '20x24'\]"),
    ("no_rescale", r"no RescaleSlope/RescaleIntercept and its stored values \[\d+, \d+\] are not Hounsfield"),
    ("tilt", r"not stacked along their normal \(gantry tilt"),
    ("uneven", r"unevenly spaced slices \(steps from 3 to 4 mm"),
])
def test_bad_dicom_is_refused_naming_the_series_and_nothing_is_written(tmp_path, case, match):
    src = tmp_path / "src"
    ct = make_ct()
    kw = {"modality": "MR"} if case == "not_ct" else {}
    if case == "no_rescale":
        kw = {"rescale": False}
    files = write_dicom_series(ct, src, **kw)
    {"missing_slice": _drop_middle, "truncated": _truncate, "tilt": _tilt, "uneven": _uneven,
     "mixed": lambda f: _mixed_sizes(f, src)}.get(case, lambda f: None)(files)
    out = tmp_path / "raw"
    write_dicom_series(make_ct(seed=4), tmp_path / "good")
    import_cohort(tmp_path / "good", out, "dicom", id_map_path=tmp_path / "m.json")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(DataError, match=match):
        import_cohort(src, out, "dicom", id_map_path=tmp_path / "m.json")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not any(".import-staging" in str(p) for p in out.rglob("*"))
    with pytest.raises(DataError):
        import_cohort(src, tmp_path / "new", "dicom", id_map_path=tmp_path / "m.json")
    assert not (tmp_path / "new").exists()


def test_skip_invalid_imports_the_good_series_and_lists_the_bad_one(tmp_path):
    write_dicom_series(make_ct(seed=1), tmp_path / "src/ok", series_number=5)
    _drop_middle(write_dicom_series(make_ct(seed=2), tmp_path / "src/gap", series_number=6))
    dirs, _, skipped = import_cohort(tmp_path / "src", tmp_path / "raw", "dicom",
                                     options=ImportOptions(skip_invalid=True),
                                     id_map_path=tmp_path / "m.json")
    assert len(dirs) == 1 and len(skipped) == 1
    assert skipped[0].startswith("series 6 in gap: ") and "missing between positions" in skipped[0]


def test_cli_import_prints_no_header_identifier(tmp_path, capsys, monkeypatch):
    from boneseg.cli import main
    from boneseg.core.config import Config, to_yaml

    write_dicom_series(make_ct(seed=1), tmp_path / "src/x")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(to_yaml(Config()))
    rc = main(["import", "--layout", "dicom", "--source", str(tmp_path / "src"),
               "--out", str(tmp_path / "raw")])
    out = capsys.readouterr()
    assert rc == 0 and "wrote 1 cases" in out.out
    text = out.out + out.err
    assert not any(v in text for v in PLANTED.values()) and UID_ROOT not in text
    assert os.path.isfile(tmp_path / ".boneseg/import_idmap.json")
