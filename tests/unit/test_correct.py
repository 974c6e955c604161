"""The correction round trip (`boneseg correct export/import`) and the effort it measures,
played as an annotator would: export, edit the starting map with nibabel, import."""
import json

import nibabel as nib
import numpy as np
import pytest

from boneseg.cli import main as cli
from boneseg.core.config import to_yaml
from boneseg.core.labelling.correct import export_case, import_correction
from boneseg.core.labelling.effort import effort, proposal_qa
from boneseg.core.labelling.labels import derive_labels
from boneseg.core.layout import find_cases, load_qa
from boneseg.errors import DataError


def test_effort_counts_voxels_regions_per_target_label_and_axial_slices():
    start = np.zeros((8, 8, 5), np.uint8)
    final = start.copy()
    final[1:3, 1:3, 1] = 2  # a kidney blob to paint: 4 voxels, one region, slice 1
    final[5, 5, 1:4] = 1  # a bone column: 3 voxels, one region (face-connected), slices 1-3
    final[7, 0, 1] = 2  # another kidney region, not touching the first
    assert effort(start, final) == {"voxels": 8, "components": 3, "slices": 3}
    assert effort(final, final) == {"voxels": 0, "components": 0, "slices": 0}
    diag = start.copy()
    diag[0, 0, 0] = diag[1, 1, 1] = 1  # touching by a corner only: two regions
    assert effort(start, diag)["components"] == 2
    with pytest.raises(ValueError, match="shapes differ"):
        effort(start, final[..., :4])


def test_proposal_qa_measures_dice_organ_share_and_effort():
    truth = np.zeros((6, 6, 2), np.uint8)
    truth[0:2, 0:2, :] = 1  # 8 bone voxels
    truth[4:6, 4:6, :] = 2  # 8 kidney voxels
    mask = np.zeros_like(truth, dtype=bool)
    mask[0:2, 0:2, :] = True
    mask[4:6, 4:6, 0] = True  # the proposal also catches half of the kidney
    q = proposal_qa(mask, truth)
    assert q["bone_dice"] == pytest.approx(2 * 8 / (12 + 8))
    assert q["on_kidney"] == pytest.approx(4 / 12, abs=1e-4) and q["on_liver"] == 0.0
    assert q["voxels"] == 8 and q["components"] == 1 and q["slices"] == 2  # the kidney relabelled (4 + 4)


def test_export_paint_import_and_labels_prefer_the_correction(tiny_pipeline, tmp_path, capsys):
    cfg = tiny_pipeline.model_copy(update={"data": tiny_pipeline.data.model_copy(update={
        "corrections_dir": str(tmp_path / "corr"), "annotate_dir": str(tmp_path / "annotate"),
        "labels_dir": str(tmp_path / "labels")})})
    case = next(c for c in find_cases(cfg.data.raw_dir) if c["cohort"] == "abdomen")
    params = tmp_path / "params.yaml"
    params.write_text(to_yaml(cfg))
    assert cli(["--params", str(params), "correct", "export", case["case"]]) == 0
    out = capsys.readouterr().out
    ws = tmp_path / "annotate" / case["case"]
    assert f"itksnap -g {ws / 'ct.nii.gz'} -s {ws / 'start.nii.gz'} -l {ws / 'itksnap_labels.txt'}" in out
    assert sorted(p.name for p in ws.iterdir()) == ["README.md", "ct.nii.gz", "itksnap_labels.txt",
                                                    "slicer_colors.ctbl", "start.nii.gz", "workspace.json"]
    assert json.loads((ws / "workspace.json").read_text())["proposal"] == "filled"
    assert "itksnap -g" in (ws / "README.md").read_text() and "4 liver 140 80 200 255" in \
        (ws / "slicer_colors.ctbl").read_text()
    start = nib.load(ws / "start.nii.gz")
    ct = nib.load(case["ct"])
    assert start.shape == ct.shape and np.allclose(start.affine, ct.affine)
    assert set(np.unique(np.asarray(start.dataobj))) <= {0, 1}

    # the annotator paints the truth into the starting map, as ITK-SNAP saves it (uint16)
    truth = np.asarray(nib.load(case["truth"]).dataobj).astype(np.uint16)
    edited = ws / "edited.nii.gz"
    nib.save(nib.Nifti1Image(truth, start.affine), edited)
    assert cli(["--params", str(params), "correct", "import", case["case"], str(edited)]) == 0
    assert "effort:" in capsys.readouterr().out
    record = json.loads((tmp_path / "corr" / f"{case['case']}.json").read_text())
    expected = effort(np.asarray(start.dataobj), truth.astype(np.uint8))
    assert record["started_from"] == "filled" and record["effort"] == expected and expected["voxels"] > 0
    stored = nib.load(tmp_path / "corr" / f"{case['case']}.nii.gz")
    assert stored.get_data_dtype() == np.uint8 and np.array_equal(np.asarray(stored.dataobj), truth)
    # `boneseg labels` takes the correction, and its QA counts exactly the voxels painted
    derive_labels(cfg, progress=False)
    row = next(r for r in load_qa(cfg.data.labels_dir)["cases"] if r["case"] == case["case"])
    assert row["label_source"] == "correction" and row["corrected_voxels"] == expected["voxels"]
    text = json.dumps(record) + (ws / "README.md").read_text() + (ws / "workspace.json").read_text()
    assert "abdomen/" not in text and str(tmp_path) not in json.dumps(record)  # the case id only


@pytest.mark.parametrize("bad, match", [
    ("float", "not an integer label map"),
    ("shape", "differs from its image"),
    ("affine", "affine differs"),
    ("ids", "are not label ids"),
    ("4d", "expected a 3-D volume"),
    ("corrupt", "unreadable as NIfTI|corrupt"),
    ("missing", "not found"),
])
def test_a_bad_edit_is_refused_with_the_file_named_and_nothing_written(tiny_pipeline, tmp_path, bad, match):
    cfg = tiny_pipeline.model_copy(update={"data": tiny_pipeline.data.model_copy(update={
        "corrections_dir": str(tmp_path / "corr"), "annotate_dir": str(tmp_path / "annotate")})})
    case = next(c for c in find_cases(cfg.data.raw_dir) if c["cohort"] == "abdomen")
    ws, _ = export_case(cfg, case["case"])
    start = nib.load(ws / "start.nii.gz")
    data, aff = np.asarray(start.dataobj).astype(np.uint16), start.affine.copy()
    f = ws / "edited.nii.gz"
    if bad == "float":
        data = data.astype(np.float32)
    elif bad == "shape":
        data = data[:, :, :-1]
    elif bad == "affine":
        aff[0, 3] += 0.01
    elif bad == "ids":
        data[0, 0, 0] = 7
    elif bad == "4d":
        data = np.stack([data, data], axis=-1)
    if bad == "corrupt":
        f.write_bytes(b"\x1f\x8b" + b"not a nifti" * 10)
    elif bad != "missing":
        nib.save(nib.Nifti1Image(data, aff), f)
    with pytest.raises(DataError, match=match) as err:
        import_correction(cfg, case["case"], f)
    assert str(f) in str(err.value)
    assert not (tmp_path / "corr").exists() or not any((tmp_path / "corr").iterdir())


def test_export_keeps_an_existing_workspace_and_import_checks_the_workspace_case(tiny_pipeline, tmp_path):
    cfg = tiny_pipeline.model_copy(update={"data": tiny_pipeline.data.model_copy(update={
        "corrections_dir": str(tmp_path / "corr"), "annotate_dir": str(tmp_path / "annotate")})})
    a, b = [c["case"] for c in find_cases(cfg.data.raw_dir) if c["cohort"] == "abdomen"][:2]
    ws, _ = export_case(cfg, a)
    (ws / "start.nii.gz").write_bytes(b"the annotator's unsaved work")
    with pytest.raises(DataError, match="--force"):
        export_case(cfg, a)
    assert (ws / "start.nii.gz").read_bytes() == b"the annotator's unsaved work"
    export_case(cfg, a, force=True)
    assert nib.load(ws / "start.nii.gz").shape == nib.load(find_case_ct(cfg, a)).shape
    with pytest.raises(DataError, match=f"workspace is for case {a}, not {b}"):
        import_correction(cfg, b, ws / "start.nii.gz")
    assert not (tmp_path / "corr").exists()


def find_case_ct(cfg, case_id):
    return next(c["ct"] for c in find_cases(cfg.data.raw_dir) if c["case"] == case_id)


def test_export_refuses_an_unknown_case_and_a_missing_vnet_proposal(tiny_pipeline, tmp_path):
    cfg = tiny_pipeline.model_copy(update={"data": tiny_pipeline.data.model_copy(update={
        "annotate_dir": str(tmp_path / "annotate"), "proposals_dir": str(tmp_path / "proposals")})})
    with pytest.raises(DataError, match="not under"):
        export_case(cfg, "nosuchcase")
    case = next(c for c in find_cases(cfg.data.raw_dir) if c["cohort"] == "abdomen")
    with pytest.raises(DataError, match="boneseg propose"):
        export_case(cfg, case["case"], proposal="vnet")
    assert not (tmp_path / "annotate").exists() or not any((tmp_path / "annotate").iterdir())
