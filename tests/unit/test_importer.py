import json

import nibabel as nib
import numpy as np
import pytest

from boneseg.core.data.importing import ImportOptions, import_cohort
from boneseg.core.data.sources import ts_label_id
from boneseg.core.imaging.nifti import Volume, load_ct, load_labels, save_volume
from boneseg.errors import DataError
from conftest import LPS, make_ct, make_labels


def nifti_source(root, n=2, affine=LPS):
    for i in range(n):
        ct = make_ct(affine=affine, seed=i)
        save_volume(ct, root / "images" / f"patient_Smith_{i}.nii.gz")
        save_volume(make_labels(ct), root / "labels" / f"patient_Smith_{i}.nii.gz")
    return root


def snapshot(d):
    return {p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_nifti_layout_imports_pseudonymous_ras_cases(tmp_path):
    src = nifti_source(tmp_path / "src")
    idmap = tmp_path / "local" / "idmap.json"
    dirs, _, skipped = import_cohort(src, tmp_path / "raw", "nifti", id_map_path=idmap)
    assert skipped == [] and [d.name for d in dirs] == ["ct0000", "ct0001"]
    for d in dirs:
        ct = load_ct(d / "ct.nii.gz")
        truth = load_labels(d / "truth.nii.gz", ct, d / "ct.nii.gz")
        assert nib.aff2axcodes(ct.affine) == ("R", "A", "S")
        assert truth.data.max() == 4
        hdr = nib.load(str(d / "ct.nii.gz")).header
        assert all(hdr[f].item() == b"" for f in ("descrip", "db_name", "aux_file", "intent_name"))
    # the source name appears nowhere in the output, nor in the id map (keyed by content)
    blob = b"".join(snapshot(tmp_path / "raw").values())
    assert b"Smith" not in blob and "Smith" not in idmap.read_text()
    assert sorted(json.loads(idmap.read_text())["cases"].values()) == ["ct0000", "ct0001"]


def test_reimport_keeps_ids_and_new_cases_get_new_ids(tmp_path):
    src = nifti_source(tmp_path / "src")
    idmap = tmp_path / "idmap.json"
    import_cohort(src, tmp_path / "raw", id_map_path=idmap)
    ct = make_ct(seed=9)
    save_volume(ct, src / "images" / "another.nii.gz")
    dirs, _, _ = import_cohort(src, tmp_path / "raw", id_map_path=idmap)
    ids = json.loads(idmap.read_text())["cases"]
    assert sorted(ids.values()) == ["ct0000", "ct0001", "ct0002"]
    assert [d.name for d in dirs] == ["ct0002"]  # the two known CTs are unchanged


def test_header_text_is_blanked(tmp_path):
    ct = make_ct()
    img = nib.Nifti1Image(ct.data, ct.affine)
    img.header["descrip"] = b"Patient John Doe 1970"
    img.header["db_name"] = b"HOSPITAL"
    (tmp_path / "src" / "images").mkdir(parents=True)
    nib.save(img, tmp_path / "src" / "images" / "a.nii.gz")
    dirs, _, _ = import_cohort(tmp_path / "src", tmp_path / "raw", id_map_path=tmp_path / "m.json")
    raw = (dirs[0] / "ct.nii.gz").read_bytes()
    import gzip

    assert b"John" not in gzip.decompress(raw) and b"HOSPITAL" not in gzip.decompress(raw)


def test_one_bad_case_leaves_output_untouched(tmp_path):
    src = nifti_source(tmp_path / "src", n=3)
    out = tmp_path / "raw"
    import_cohort(nifti_source(tmp_path / "first", n=1), out, id_map_path=tmp_path / "m.json")
    before = snapshot(out)
    bad = make_labels(make_ct())
    save_volume(Volume(bad.data[:, :-2], bad.affine), src / "labels" / "patient_Smith_1.nii.gz")
    with pytest.raises(DataError, match=r"case patient_Smith_1 is invalid, nothing was imported.*shape"):
        import_cohort(src, out, id_map_path=tmp_path / "m.json")
    assert snapshot(out) == before
    assert list(json.loads((tmp_path / "m.json").read_text())["cases"].values()) == ["ct0000"]


def test_skip_invalid_imports_the_rest_and_says_why(tmp_path):
    src = nifti_source(tmp_path / "src", n=3)
    (src / "images" / "patient_Smith_2.nii.gz").write_bytes(b"garbage")
    dirs, _, skipped = import_cohort(src, tmp_path / "raw", options=ImportOptions(skip_invalid=True),
                                     id_map_path=tmp_path / "m.json")
    assert len(dirs) == 2
    assert len(skipped) == 1 and skipped[0].startswith("patient_Smith_2:")


def test_label_without_image_refused(tmp_path):
    src = nifti_source(tmp_path / "src", n=1)
    save_volume(make_labels(make_ct()), src / "labels" / "orphan.nii.gz")
    with pytest.raises(DataError, match=r"orphan\.nii\.gz: label map without its image"):
        import_cohort(src, tmp_path / "raw", id_map_path=tmp_path / "m.json")
    assert not (tmp_path / "raw").exists()


def totalseg_source(root, n=2):
    root.mkdir(parents=True)
    lines = ["image_id;age;gender;institute;study_type;split"]
    for i in range(n):
        sid = f"s{i:04d}"
        ct = make_ct(shape=(20, 20, 5), seed=i)
        save_volume(ct, root / sid / "ct.nii.gz")
        masks = {"vertebrae_L1": (slice(2, 5), slice(2, 5)), "rib_left_3": (slice(6, 8), slice(2, 4)),
                 "kidney_left": (slice(10, 13), slice(10, 13)), "aorta": (slice(14, 16), slice(2, 4)),
                 "liver": (slice(2, 6), slice(14, 18)), "spleen": (slice(16, 18), slice(16, 18))}
        for name, (sx, sy) in masks.items():
            m = np.zeros(ct.shape, np.uint8)
            m[sx, sy, :] = 1
            save_volume(Volume(m, ct.affine), root / sid / "segmentations" / f"{name}.nii.gz")
        lines.append(f"{sid};61;f;A;ct abdomen-pelvis;train")
    (root / "meta.csv").write_text("\n".join(lines) + "\n")
    return root


def test_totalsegmentator_layout_maps_classes(tmp_path):
    src = totalseg_source(tmp_path / "ts")
    dirs, _, _ = import_cohort(src, tmp_path / "raw", "totalsegmentator", id_map_path=tmp_path / "m.json")
    lab = load_labels(dirs[0] / "truth.nii.gz").data
    assert (lab[3, 3, 0], lab[7, 3, 0], lab[11, 11, 0], lab[15, 3, 0], lab[3, 15, 0]) == (1, 1, 2, 3, 4)
    assert lab[17, 17, 0] == 0  # spleen is not one of our classes
    meta = json.loads((dirs[0] / "meta.json").read_text())
    assert "61" not in json.dumps(meta) and meta["source"] == "import:totalsegmentator"


def test_totalsegmentator_mask_geometry_checked(tmp_path):
    src = totalseg_source(tmp_path / "ts", n=1)
    bad = Volume(np.zeros((20, 20, 4), np.uint8), np.eye(4))
    save_volume(bad, src / "s0000" / "segmentations" / "liver.nii.gz")
    with pytest.raises(DataError, match=r"liver\.nii\.gz: shape"):
        import_cohort(src, tmp_path / "raw", "totalsegmentator", id_map_path=tmp_path / "m.json")


@pytest.mark.parametrize(
    "name,lid",
    [
        ("femur_left", 1),
        ("hip_right", 1),
        ("sacrum", 1),
        ("sternum", 1),
        ("vertebrae_T12", 1),
        ("rib_right_11", 1),
        ("kidney_right", 2),
        ("inferior_vena_cava", 3),
        ("portal_vein_and_splenic_vein", 3),
        ("iliac_vena_left", 3),
        ("liver", 4),
        ("stomach", 0),
        ("lung_upper_lobe_left", 0),
    ],
)
def test_ts_label_ids(name, lid):
    assert ts_label_id(name) == lid
