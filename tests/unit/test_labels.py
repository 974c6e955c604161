import json

import numpy as np
import pytest

from boneseg import synth
from boneseg.config import Config, LabelsConfig, SynthConfig
from boneseg.labels import derive_case, derive_labels, fill_marrow
from boneseg.metrics import dice
from boneseg.nifti import Volume, load_labels, save_volume


@pytest.fixture(scope="module")
def thighs():
    cfg = SynthConfig(seed=5, thigh=3, abdomen=0, matrix=256, slices=8)
    return [synth.make_case("thigh", i, cfg) for i in range(3)]


def test_marrow_fill_reaches_097_on_thigh_while_threshold_is_clearly_lower(thighs):
    cfg = LabelsConfig()
    for case in thighs:
        truth = case.truth.data == 1
        thr = dice(case.ct.data >= cfg.threshold_hu.thigh, truth)
        filled = dice(fill_marrow(case.ct.data, case.ct.spacing, cfg.threshold_hu.thigh, cfg), truth)
        print(f"{case.case_id}: threshold-only {thr:.3f}  threshold+fill {filled:.3f}")
        assert filled >= 0.97
        assert thr < filled - 0.1


def test_fill_closes_a_ring_and_drops_dim_components():
    hu = np.full((40, 40, 3), 40, np.int16)
    yy, xx = np.mgrid[:40, :40]
    r = np.hypot(xx - 12, yy - 12)
    hu[(r >= 5) & (r <= 7)] = 1000  # cortical ring around a marrow cavity
    hu[(np.hypot(xx - 30, yy - 30) <= 3)] = 280  # enhanced vessel: bright but dim for bone
    m = fill_marrow(hu, (1.0, 1.0, 3.0), 200, LabelsConfig(closing_mm=0))
    assert m[12, 12, 1] and not m[30, 30, 1]
    assert m.sum() == 3 * int((r <= 7).sum())


def _raw_case(tmp_path, cohort="abdomen", truth=True):
    case = synth.make_case(cohort, 0, SynthConfig(seed=1, matrix=64, slices=6))
    d = tmp_path / "raw" / cohort / case.case_id
    save_volume(case.ct, d / "ct.nii.gz")
    if truth:
        save_volume(case.truth, d / "truth.nii.gz")
    return case, {"case": case.case_id, "cohort": cohort, "ct": d / "ct.nii.gz",
                  "truth": d / "truth.nii.gz" if truth else None, "phase": case.meta["phase"]}


def fill_proposal(info):
    from boneseg.nifti import load_ct

    ct = load_ct(info["ct"])
    cfg = LabelsConfig()
    return fill_marrow(ct.data, ct.spacing, cfg.threshold_hu.abdomen, cfg).astype(np.uint8)


def test_final_label_order_correction_then_truth_then_proposal(tmp_path):
    case, info = _raw_case(tmp_path)
    corr = tmp_path / "corrections"
    vol, qa = derive_case(info, corr, LabelsConfig())
    assert qa["label_source"] == "truth" and np.array_equal(vol.data, case.truth.data)
    edited = case.truth.data.copy()
    edited[edited == 3] = 0  # someone erased the vessels
    save_volume(Volume(edited, case.ct.affine), corr / f"{case.case_id}.nii.gz")
    vol, qa = derive_case(info, corr, LabelsConfig())
    assert qa["label_source"] == "correction" and np.array_equal(vol.data, edited)
    assert qa["corrected_voxels"] == int((edited != vol.data * 0 + fill_proposal(info)).sum())
    info["truth"] = None
    (corr / f"{case.case_id}.nii.gz").unlink()
    vol, qa = derive_case(info, corr, LabelsConfig())
    assert qa["label_source"] == "proposal-unreviewed" and not qa["reviewed"]
    assert set(np.unique(vol.data)) <= {0, 1}


def test_correction_on_wrong_grid_is_refused(tmp_path):
    case, info = _raw_case(tmp_path)
    corr = tmp_path / "corrections"
    save_volume(Volume(case.truth.data[:-1], case.ct.affine), corr / f"{case.case_id}.nii.gz")
    with pytest.raises(Exception, match=r"abd000\.nii\.gz: shape"):
        derive_case(info, corr, LabelsConfig())


def test_stage_writes_labels_and_qa(tmp_path):
    _raw_case(tmp_path, "abdomen")
    _raw_case(tmp_path, "thigh")
    cfg = Config.model_validate({"data": {"raw_dir": str(tmp_path / "raw"), "labels_dir": str(tmp_path / "labels"),
                                          "corrections_dir": str(tmp_path / "corr")}})
    report = derive_labels(cfg, progress=False)
    qa = json.loads((tmp_path / "labels" / "qa.json").read_text())
    assert qa == json.loads(json.dumps(report))
    assert {r["case"] for r in qa["cases"]} == {"abd000", "thigh000"}
    assert qa["total"]["abdomen_dice_final"] == 1.0
    for r in qa["cases"]:
        assert 0 <= r["dice_threshold"] <= 1 and 0 <= r["dice_filled"] <= 1
        lab = load_labels(tmp_path / "labels" / f"{r['case']}.nii.gz")
        assert lab.data.dtype == np.uint8
