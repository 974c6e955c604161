"""`boneseg segment` on a DICOM series: NIfTI equal to the imported NIfTI's, and a DICOM-SEG
that reads back, frame by frame, as exactly those labels at the source slices' positions."""
from __future__ import annotations

from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from test_dicom import oblique_lps
from test_segment import phantom, save_model

import boneseg
from boneseg.cli import main
from boneseg.core.config import Config, to_yaml
from boneseg.core.data.importing import import_cohort
from boneseg.core.imaging.nifti import Volume, to_canonical
from boneseg.core.inference.dicomseg import plan_output
from boneseg.core.labelmap import LABEL_COLOURS
from boneseg.errors import DataError
from conftest import PLANTED, write_dicom_series


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """Two fold models fitted to the phantom, the phantom as a DICOM series, its import."""
    root = tmp_path_factory.mktemp("dicomseg")
    (root / "model").mkdir()
    for k in range(2):
        save_model(root / f"model/fold{k}.pt", seed=k, fold=k)
    ct = phantom()
    vol = Volume(ct.astype(np.int16), oblique_lps(ct.shape))
    write_dicom_series(vol, root / "series", series_number=3)
    dirs, _, _ = import_cohort(root / "series", root / "raw", "dicom", id_map_path=root / "map.json")
    cfg = Config.model_validate({"train": {"device": "cpu", "threads": 2}})
    (root / "params.yaml").write_text(to_yaml(cfg))
    return root, dirs[0] / "ct.nii.gz"


def segment(root: Path, inp, out, *extra) -> int:
    return main(["--params", str(root / "params.yaml"), "segment", "--input", str(inp), "--output", str(out),
                 "--model", str(root / "model"), *extra])


def test_dicom_input_gives_the_labels_of_the_imported_nifti(case):
    root, nifti = case
    assert segment(root, nifti, root / "from_nifti.nii.gz") == 0
    assert segment(root, root / "series", root / "out_dicom") == 0
    (out,) = (root / "out_dicom").glob("seg-*.nii.gz")  # named by a fresh UID, never the source folder
    a, b = nib.load(str(root / "from_nifti.nii.gz")), nib.load(str(out))
    np.testing.assert_allclose(b.affine, a.affine, atol=1e-5)
    labels = np.asarray(a.dataobj)
    np.testing.assert_array_equal(np.asarray(b.dataobj), labels)
    assert (labels == 1).sum() > 500 and (labels == 4).sum() > 0  # the fitted model finds bone and liver


def test_dicom_seg_reads_back_as_the_same_labels_at_the_source_positions(case):
    root, _ = case
    assert segment(root, root / "series", root / "seg", "--output-format", "dicom-seg") == 0
    assert segment(root, root / "series", root / "ref.nii.gz") == 0
    want_ras = nib.load(str(root / "ref.nii.gz"))
    (path,) = (root / "seg").glob("*.dcm")
    seg = hd.seg.segread(path)
    assert path.name == f"seg-{seg.SeriesInstanceUID}.dcm"  # the SEG's own UID, not the folder's name
    sources = [pydicom.dcmread(f) for f in sorted((root / "series").iterdir())]  # any order: checked in mm
    uids = [d.SOPInstanceUID for d in sources]
    got = seg.get_pixels_by_source_instance(uids, combine_segments=True)  # (slice, row, column)
    assert got.shape == (len(sources), sources[0].Rows, sources[0].Columns)
    # each source slice's label plane, in world space: the NIfTI label at that slice's own voxels
    inv = np.linalg.inv(want_ras.affine)
    lab = np.asarray(want_ras.dataobj)
    for d, plane in zip(sources, got):
        rows, cols = np.meshgrid(np.arange(d.Rows), np.arange(d.Columns), indexing="ij")
        iop = np.array(d.ImageOrientationPatient, float)
        rc, cc = iop[:3], iop[3:]
        dr, dc = (float(v) for v in d.PixelSpacing)
        lps = np.array(d.ImagePositionPatient, float)[:, None, None] + rc[:, None, None] * cols * dc \
            + cc[:, None, None] * rows * dr
        ijk = np.rint(inv @ np.stack([-lps[0], -lps[1], lps[2], np.ones_like(lps[0])]).reshape(4, -1))[:3]
        np.testing.assert_array_equal(plane.reshape(-1), lab[tuple(ijk.astype(int))])
    # every stored frame sits at its source slice's position and names that instance
    by_uid = {d.SOPInstanceUID: d for d in sources}
    # one frame per segment and slice where the segment is present (empty frames omitted)
    assert seg.NumberOfFrames == sum(int((got == n).any(axis=(1, 2)).sum()) for n in (1, 2, 3, 4))
    for fg in seg.PerFrameFunctionalGroupsSequence:
        ref = fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_allclose([float(v) for v in fg.PlanePositionSequence[0].ImagePositionPatient],
                                   [float(v) for v in by_uid[ref].ImagePositionPatient], atol=1e-4)
    # segments: our ids, SNOMED CT codes, label colours, boneseg as the algorithm
    descs = {s.SegmentNumber: s for s in seg.SegmentSequence}
    assert [descs[n].SegmentLabel for n in (1, 2, 3, 4)] == ["bone", "kidney", "vessel", "liver"]
    assert [descs[n].SegmentedPropertyTypeCodeSequence[0].CodeValue for n in (1, 2, 3, 4)] == [
        "272673000", "64033007", "59820001", "10200004"]
    assert descs[1].SegmentedPropertyCategoryCodeSequence[0].CodeValue == "85756007"  # Tissue
    rgb = hd.color.CIELabColor.from_dicom_value(descs[1].RecommendedDisplayCIELabValue).to_rgb()
    assert max(abs(a - b) for a, b in zip(rgb, LABEL_COLOURS[1])) <= 2
    algo = descs[1].SegmentationAlgorithmIdentificationSequence[0]
    assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("boneseg", boneseg.__version__)
    assert str(root) not in algo.AlgorithmParameters and "checkpoints sha256:" in algo.AlgorithmParameters
    # a DICOM-SEG belongs to its study: it keeps the source's patient and study identifiers
    assert seg.PatientID == PLANTED["PatientID"] and seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.SeriesInstanceUID != sources[0].SeriesInstanceUID and seg.Modality == "SEG"
    assert not list((root / "seg").glob(".*.tmp"))


def test_refusals_before_any_model_is_loaded(case, tmp_path, capsys):
    root, nifti = case
    assert main(["--params", str(root / "params.yaml"), "segment", "--input", str(nifti), "--output",
                 str(tmp_path / "x.dcm"), "--model", "models:/nowhere/1",
                 "--output-format", "dicom-seg"]) == 2
    assert "a DICOM-SEG needs a DICOM series as input" in capsys.readouterr().err
    with pytest.raises(DataError, match="inside the input series folder"):
        plan_output(root / "series", root / "series/seg", "dicom-seg", "1.2.3")
    with pytest.raises(DataError, match="a .dcm file"):
        plan_output(root / "series", tmp_path / "x.nii.gz", "dicom-seg", "1.2.3")
    # two series in one folder: which one to segment is the user's choice
    two = tmp_path / "two"
    write_dicom_series(Volume(phantom().astype(np.int16), np.diag([0.8, 0.8, 3, 1.0])), two, series_number=5)
    write_dicom_series(Volume(phantom().astype(np.int16), np.diag([0.8, 0.8, 3, 1.0])), two, series_number=6)
    assert segment(root, two, tmp_path / "o.nii.gz") == 2
    assert "2 series (series 5 in two, series 6 in two). Point --input at one" in capsys.readouterr().err
    assert not (tmp_path / "o.nii.gz").exists()


def test_nifti_output_of_a_dicom_series_is_on_the_canonical_grid(case, tmp_path):
    root, _ = case
    assert segment(root, root / "series", tmp_path / "labels.nii", "--classes", "bone") == 0
    img = nib.load(str(tmp_path / "labels.nii"))
    assert set(np.unique(np.asarray(img.dataobj)).tolist()) == {0, 1}
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    want = to_canonical(Volume(phantom(), oblique_lps(phantom().shape)))
    np.testing.assert_allclose(img.affine, want.affine, atol=1e-3)


@pytest.mark.parametrize("missing", ["PatientSex", "StudyTime", "ReferringPhysicianName", "PatientBirthDate",
                                     "AccessionNumber", "StudyID", "StudyDate", "PatientName", "PatientID"])
def test_a_series_without_a_type2_attribute_gets_a_seg_with_it_empty(case, tmp_path, missing):
    root, _ = case
    vol = Volume(phantom().astype(np.int16), oblique_lps(phantom().shape))
    for f in write_dicom_series(vol, tmp_path / "anon", series_number=3):
        ds = pydicom.dcmread(f)
        delattr(ds, missing)
        ds.save_as(f)
    assert segment(root, tmp_path / "anon", tmp_path / "seg", "--output-format", "dicom-seg") == 0
    (path,) = (tmp_path / "seg").glob("*.dcm")
    seg = pydicom.dcmread(path)
    assert missing in seg and str(seg[missing].value or "") == ""
    assert all(missing not in pydicom.dcmread(f) for f in (tmp_path / "anon").iterdir())  # sources untouched


def test_existing_outputs_and_the_labs_data_are_never_overwritten(case, tmp_path, capsys):
    root, nifti = case
    out = tmp_path / "seg.nii.gz"
    out.write_bytes(b"earlier result")
    assert segment(root, nifti, out) == 2
    assert "exists. Nothing was written. Pass --force" in capsys.readouterr().err
    assert out.read_bytes() == b"earlier result"
    assert segment(root, nifti, out, "--force") == 0 and out.read_bytes() != b"earlier result"
    proj = tmp_path / "proj"
    (proj / "data/raw").mkdir(parents=True)
    (proj / "dvc.yaml").write_text("stages: {}\n")
    assert segment(root, nifti, proj / "data/raw/x.nii.gz") == 2
    assert "the project's data folder" in capsys.readouterr().err
    (proj / "tracked").mkdir()
    (proj / "tracked.dvc").write_text("outs:\n- path: tracked\n")
    assert segment(root, nifti, proj / "tracked/x.nii.gz") == 2
    assert "tracked by DVC (tracked.dvc)" in capsys.readouterr().err
    assert not list(proj.rglob("*.nii.gz"))
