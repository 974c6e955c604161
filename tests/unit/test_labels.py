import json

import numpy as np
import pytest

from boneseg.core.config import Config, LabelsConfig, SynthConfig
from boneseg.core.data import synth
from boneseg.core.evaluation.metrics import dice
from boneseg.core.imaging.nifti import Volume, load_labels, save_volume
from boneseg.core.labelling.labels import derive_case, derive_labels, fill_marrow
from boneseg.errors import DataError
from conftest import make_ct


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


def _whole_volume_fill(hu, spacing, level, cfg):
    """fill_marrow by its definition, every step over the whole volume."""
    from scipy import ndimage
    mask = hu >= level
    lab, n = ndimage.label(mask)
    idx = np.arange(1, n + 1)
    keep = ((ndimage.sum_labels(mask, lab, idx) >= cfg.min_component_voxels)
            & (ndimage.mean(hu, lab, idx) >= cfg.component_min_mean_hu))
    mask = np.isin(lab, idx[keep])
    r = int(round(cfg.closing_mm / min(spacing[0], spacing[1])))
    if r:
        st = ndimage.iterate_structure(ndimage.generate_binary_structure(2, 1), r)[..., None]
        mask = ndimage.binary_closing(np.pad(mask, ((r, r), (r, r), (0, 0))), structure=st)[r:-r, r:-r]
    return np.stack([ndimage.binary_fill_holes(mask[..., z]) for z in range(mask.shape[2])], axis=2)


def _whole_volume_effort(start, final):
    from scipy import ndimage
    changed = start != final
    faces = ndimage.generate_binary_structure(3, 1)
    parts = sum(ndimage.label(changed & (final == k), structure=faces)[1] for k in np.unique(final[changed]))
    return {"voxels": int(changed.sum()), "components": int(parts),
            "slices": int(changed.any(axis=(0, 1)).sum())}


@pytest.mark.parametrize("seed", range(6))
def test_fill_and_effort_in_the_bones_box_equal_the_whole_volume(seed):
    """fill_marrow and effort work inside bounding boxes: the same masks and counts as
    over the whole volume, with rings and blobs cut by the volume's edges, or none at all."""
    from boneseg.core.labelling.effort import effort
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(20, 48)), int(rng.integers(20, 48)), int(rng.integers(1, 6)))
    hu = rng.normal(0, 60, shape).astype(np.int16)
    yy, xx = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    for _ in range(int(rng.integers(0, 5))):  # rings (marrow to fill) and blobs, some past the edge
        cy, cx = rng.integers(-5, shape[0] + 5), rng.integers(-5, shape[1] + 5)
        r = np.hypot(yy - cy, xx - cx)
        outer = rng.uniform(2, 9)
        z0 = int(rng.integers(0, shape[2]))
        hu[..., z0:][(r <= outer) & (r >= outer - rng.uniform(1, 3))] = rng.choice([250, 700, 1200])
    for closing_mm in (0.0, 1.5, 3.0):
        cfg = LabelsConfig(closing_mm=closing_mm, min_component_voxels=int(rng.integers(1, 30)))
        got = fill_marrow(hu, (1.0, 1.0, 2.0), 200, cfg)
        assert np.array_equal(got, _whole_volume_fill(hu, (1.0, 1.0, 2.0), 200, cfg))
        truth = rng.integers(0, 5, shape).astype(np.uint8) * (rng.random(shape) < 0.2)
        for start in (got.astype(np.uint8), truth.copy(), np.zeros(shape, np.uint8)):
            assert effort(start, truth) == _whole_volume_effort(start, truth)


def _raw_case(tmp_path, cohort="abdomen", truth=True):
    case = synth.make_case(cohort, 0, SynthConfig(seed=1, matrix=64, slices=6))
    d = tmp_path / "raw" / cohort / case.case_id
    save_volume(case.ct, d / "ct.nii.gz")
    if truth:
        save_volume(case.truth, d / "truth.nii.gz")
    return case, {"case": case.case_id, "cohort": cohort, "ct": d / "ct.nii.gz",
                  "truth": d / "truth.nii.gz" if truth else None, "phase": case.meta["phase"]}


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
    info["truth"] = None
    (corr / f"{case.case_id}.nii.gz").unlink()
    vol, qa = derive_case(info, corr, LabelsConfig())
    assert qa["label_source"] == "proposal-unreviewed" and not qa["reviewed"]
    assert set(np.unique(vol.data)) <= {0, 1}


def test_correction_effort_counts_the_voxels_an_annotator_changed(tmp_path):
    """A CT whose proposal is known by construction: one 4 x 4 x 6 bone block at 900 HU
    (96 voxels; threshold + fill gives exactly the block). The correction removes 4 bone
    voxels and paints a 2 x 2 x 6 kidney: 28 voxels changed, 4 of them bone."""
    ct = make_ct()  # the bone block lies at [9:13, 8:12, :]
    d = tmp_path / "raw" / "abdomen" / "abd000"
    save_volume(ct, d / "ct.nii.gz")
    info = {"case": "abd000", "cohort": "abdomen", "ct": d / "ct.nii.gz", "truth": None, "phase": "none"}
    _, qa = derive_case(info, tmp_path / "corr", LabelsConfig())
    assert qa["label_source"] == "proposal-unreviewed" and qa["corrected_voxels"] == 0
    edited = np.zeros(ct.shape, np.uint8)
    edited[9:13, 8:12, :] = 1
    edited[9, 8:12, 0] = 0
    edited[5:7, 5:7, :] = 2
    save_volume(Volume(edited, ct.affine), tmp_path / "corr" / "abd000.nii.gz")
    vol, qa = derive_case(info, tmp_path / "corr", LabelsConfig())
    assert qa["label_source"] == "correction" and np.array_equal(vol.data, edited)
    assert (qa["corrected_voxels"], qa["corrected_bone_voxels"]) == (28, 4)


def test_correction_on_wrong_grid_is_refused(tmp_path):
    case, info = _raw_case(tmp_path)
    corr = tmp_path / "corrections"
    save_volume(Volume(case.truth.data[:-1], case.ct.affine), corr / f"{case.case_id}.nii.gz")
    with pytest.raises(DataError, match=r"abd000\.nii\.gz: shape"):
        derive_case(info, corr, LabelsConfig())


def test_stage_writes_labels_and_qa(tmp_path):
    _raw_case(tmp_path, "abdomen")
    _raw_case(tmp_path, "thigh")
    cfg = Config.model_validate(
        {
            "data": {
                "raw_dir": str(tmp_path / "raw"),
                "labels_dir": str(tmp_path / "labels"),
                "corrections_dir": str(tmp_path / "corr"), "proposals_dir": str(tmp_path / "proposals"),
            }
        }
    )
    report = derive_labels(cfg, progress=False)
    qa = json.loads((tmp_path / "labels" / "qa.json").read_text())
    assert qa == json.loads(json.dumps(report))
    assert {r["case"] for r in qa["cases"]} == {"abd000", "thigh000"}
    assert qa["total"]["abdomen_dice_final"] == 1.0
    for r in qa["cases"]:
        assert 0 <= r["dice_threshold"] <= 1 and 0 <= r["dice_filled"] <= 1
        lab = load_labels(tmp_path / "labels" / f"{r['case']}.nii.gz")
        assert lab.data.dtype == np.uint8
