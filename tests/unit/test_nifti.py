import gzip

import nibabel as nib
import numpy as np
import pytest

from boneseg.core.imaging.nifti import (
    Volume,
    check_pair,
    load_ct,
    load_labels,
    load_volume,
    save_volume,
    to_canonical,
)
from boneseg.core.io import atomic_path
from boneseg.errors import DataError
from conftest import LPS, RAS, make_ct, make_labels, oblique_affine


@pytest.mark.parametrize("affine", [RAS, LPS, oblique_affine()], ids=["RAS", "LPS", "oblique"])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_round_trip_keeps_data_and_geometry(tmp_path, affine, suffix):
    ct = make_ct(affine=affine)
    path = save_volume(ct, tmp_path / f"ct{suffix}")
    back = load_ct(path)
    np.testing.assert_array_equal(back.data, ct.data)
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    np.testing.assert_allclose(back.spacing, np.linalg.norm(affine[:3, :3], axis=0), rtol=1e-6)
    img = nib.load(str(path))
    assert nib.aff2axcodes(img.affine) == nib.aff2axcodes(affine)
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    assert img.header["descrip"].item() == b""


def test_same_volume_same_bytes(tmp_path):
    ct = make_ct()
    a = save_volume(ct, tmp_path / "a.nii.gz").read_bytes()
    b = save_volume(ct, tmp_path / "b.nii.gz").read_bytes()
    assert a == b


def test_to_canonical_is_lossless_and_ras(tmp_path):
    ct = make_ct(affine=LPS)
    can = to_canonical(ct)
    assert nib.aff2axcodes(can.affine) == ("R", "A", "S")
    # the same voxel sits at the same world position
    ijk = np.array([3, 5, 2])
    world = ct.affine @ np.r_[ijk, 1]
    ijk2 = np.round(np.linalg.inv(can.affine) @ world).astype(int)[:3]
    assert can.data[tuple(ijk2)] == ct.data[tuple(ijk)]


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.nii\.gz: CT image file not found"):
        load_ct(tmp_path / "nope.nii.gz")


def test_not_nifti(tmp_path):
    p = tmp_path / "x.nii.gz"
    p.write_bytes(gzip.compress(b"this is no nifti header" * 20))
    with pytest.raises(DataError, match=r"x\.nii\.gz: (unreadable|truncated|not a NIfTI)"):
        load_ct(p)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_truncated(tmp_path, suffix):
    p = save_volume(make_ct(), tmp_path / f"ct{suffix}")
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(DataError, match=r"ct\.nii(\.gz)?: (truncated|unreadable)"):
        load_ct(p)


def test_not_3d(tmp_path):
    two_d = Volume(np.zeros((8, 8), np.int16) - 1000, np.eye(4))
    nib.save(nib.Nifti1Image(two_d.data, np.eye(4)), tmp_path / "flat.nii.gz")
    with pytest.raises(DataError, match=r"flat\.nii\.gz: expected a 3-D volume, got shape \(8, 8\)"):
        load_ct(tmp_path / "flat.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.int16), np.eye(4)), tmp_path / "four.nii.gz")
    with pytest.raises(DataError, match="4-D"):
        load_ct(tmp_path / "four.nii.gz")


def test_nan_refused(tmp_path):
    ct = make_ct()
    data = ct.data.astype(np.float32)
    data[1, 2, 3] = np.nan
    save_volume(Volume(data, ct.affine), tmp_path / "nan.nii.gz")
    with pytest.raises(DataError, match=r"nan\.nii\.gz: 1 voxels are NaN or inf"):
        load_ct(tmp_path / "nan.nii.gz")


def test_not_hu_refused(tmp_path):
    raw = Volume(np.random.default_rng(0).integers(0, 4096, (8, 8, 4)).astype(np.int16), RAS)
    save_volume(raw, tmp_path / "raw.nii.gz")
    with pytest.raises(DataError, match=r"raw\.nii\.gz: no voxel below -500 HU.*rescale slope"):
        load_ct(tmp_path / "raw.nii.gz")
    low = Volume(np.full((8, 8, 4), -5000, np.int16), RAS)
    save_volume(low, tmp_path / "low.nii.gz")
    with pytest.raises(DataError, match="outside the HU range"):
        load_ct(tmp_path / "low.nii.gz")


def test_zero_spacing_refused(tmp_path):
    img = nib.Nifti1Image(make_ct().data, None)  # no q/sform: nibabel uses pixdim
    img.header["pixdim"][1:4] = [0.8, 0.0, 3.0]
    nib.save(img, tmp_path / "flat.nii.gz")
    with pytest.raises(DataError, match=r"flat\.nii\.gz: voxel spacing .* zero or negative"):
        load_ct(tmp_path / "flat.nii.gz")


def test_label_values_outside_ids(tmp_path):
    ct = make_ct()
    lab = make_labels(ct)
    lab.data[0, 0, 0] = 7
    save_volume(lab, tmp_path / "lab.nii.gz")
    with pytest.raises(DataError, match=r"lab\.nii\.gz: label values \[7\] are not label ids"):
        load_labels(tmp_path / "lab.nii.gz")


def test_shape_and_affine_mismatch(tmp_path):
    ct = make_ct()
    lab = make_labels(ct)
    with pytest.raises(DataError, match=r"lab: shape .* differs from its image ct"):
        check_pair(ct, Volume(lab.data[:-1], lab.affine), "ct", "lab")
    moved = lab.affine.copy()
    moved[0, 3] += 1.5
    with pytest.raises(DataError, match=r"lab: affine differs from its image ct \(max difference 1\.5 mm\)"):
        check_pair(ct, Volume(lab.data, moved), "ct", "lab")


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


def test_load_volume_reports_what(tmp_path):
    with pytest.raises(DataError, match="label map file not found"):
        load_volume(tmp_path / "x.nii", "label map")
