"""Postprocessing chosen by cross-validation: the rules, the choice on out-of-fold maps,
segment applying the models' rule, and refusing a malformed one."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from boneseg.core.evaluation.postprocess import choose_postprocessing
from boneseg.core.imaging.nifti import Volume, load_labels, save_volume
from boneseg.core.inference.postprocess import apply_rule, check_rule, describe
from boneseg.errors import DataError

SPACING = np.diag([2.0, 2.0, 2.5, 1.0])  # 10 mm^3 per voxel: 100 voxels = 1 ml


def blob(shape, box, value, into=None):
    out = np.zeros(shape, np.uint8) if into is None else into
    out[box] = value
    return out


def test_rules_keep_the_largest_component_or_drop_small_ones_per_class():
    lab = np.zeros((30, 30, 10), np.uint8)
    lab[2:12, 2:12, 2:8] = 1  # bone: 600 voxels = 6 ml
    lab[20:22, 20:22, 2:4] = 1  # bone speck: 8 voxels = 0.08 ml
    lab[25, 25, 8] = 1  # and a corner-touching pair: 26-connected, one component of 2 voxels
    lab[26, 26, 9] = 1
    lab[15:18, 2:5, 2:5] = 2  # kidney 27 voxels, untouched by a bone rule
    largest = apply_rule(lab, check_rule({"1": {"op": "largest"}}, "t"), (2.0, 2.0, 2.5))
    assert int((largest == 1).sum()) == 600 and int((largest == 2).sum()) == 27
    assert int((lab == 1).sum()) == 610  # the input is not changed
    small = apply_rule(lab, check_rule({"1": {"op": "min_ml", "ml": 0.05}}, "t"), (2.0, 2.0, 2.5))
    assert int((small == 1).sum()) == 608  # the 8-voxel speck (0.08 ml) stays, the 2-voxel pair (0.02) goes
    assert describe({"1": {"op": "largest"}, "2": {"op": "min_ml", "ml": 0.5}}) == \
        "bone: largest component; kidney: components >= 0.5 ml"


@pytest.mark.parametrize("rule", [
    [1, 2], {"1": {"op": "dilate"}}, {"7": {"op": "largest"}}, {"0": {"op": "largest"}},
    {"1": {"op": "min_ml", "ml": float("nan")}}, {"1": {"op": "min_ml", "ml": -1}},
    {"1": {"op": "min_ml", "ml": True}}, {"bone": {"op": "largest"}},
])
def test_a_malformed_rule_from_disk_is_refused_naming_the_file(rule):
    with pytest.raises(DataError, match="boneseg.json.*--no-postprocess"):
        check_rule(rule, "model/boneseg.json")


def write_case(tmp_path, name, pred, truth):
    p, t = tmp_path / "pred" / f"{name}.nii.gz", tmp_path / "truth" / f"{name}.nii.gz"
    p.parent.mkdir(exist_ok=True)
    t.parent.mkdir(exist_ok=True)
    save_volume(Volume(pred, SPACING), p)
    save_volume(Volume(truth, SPACING), t)
    return p, t


def test_a_rule_is_kept_only_where_the_cross_validated_dice_rises(tmp_path):
    shape = (40, 40, 12)
    pairs = []
    for i in range(3):  # bone: one true blob, predicted with a false-positive speck -> a rule helps
        truth = blob(shape, np.s_[5:20, 5:20, 2:10], 1)
        pred = blob(shape, np.s_[30:33, 30:33, 2:4], 1, truth.copy())
        # kidney: two true components, both predicted -> "largest" would lose one, so no rule
        blob(shape, np.s_[22:26, 2:6, 2:6], 2, truth)
        blob(shape, np.s_[22:26, 30:34, 2:6], 2, truth)
        blob(shape, np.s_[22:26, 2:6, 2:6], 2, pred)
        blob(shape, np.s_[22:26, 30:34, 2:6], 2, pred)
        pairs.append(write_case(tmp_path, f"c{i}", pred, truth))
    res = choose_postprocessing(pairs, "multi", [0.5, 5.0])
    assert res["cases"] == 3
    bone, kidney = res["per_class"]["bone"], res["per_class"]["kidney"]
    assert bone["none"] < 1.0 and bone["largest"] == 1.0 and bone["kept"] in ("largest", "min_ml 0.5")
    assert res["bone_dice_after"] == 1.0 > res["bone_dice_before"]
    assert kidney["kept"] is None and kidney["largest"] < kidney["none"] == 1.0  # both components are real
    assert "2" not in res["rule"] and res["rule"]["1"]["op"] in ("largest", "min_ml")
    # a required gain larger than what the rule brings keeps the maps as they are
    gain = res["bone_dice_after"] - res["bone_dice_before"]
    strict = choose_postprocessing(pairs, "multi", [0.5], min_gain=gain + 1e-3)
    assert strict["rule"] == {} and strict["bone_dice_after"] == strict["bone_dice_before"]


def test_single_class_truth_is_merged_before_scoring(tmp_path):
    shape = (30, 30, 8)
    truth = blob(shape, np.s_[2:12, 2:12, 1:7], 1)
    blob(shape, np.s_[20:28, 20:28, 1:7], 4, truth)  # liver: background for a bone-only model
    pred = blob(shape, np.s_[2:12, 2:12, 1:7], 1)
    res = choose_postprocessing([write_case(tmp_path, "s", pred, truth)], "single", [1.0])
    assert list(res["per_class"]) == ["bone"] and res["per_class"]["bone"]["none"] == 1.0
    assert res["rule"] == {}  # nothing to gain on a perfect map


def test_segment_applies_the_models_rule_unless_told_not_to(tmp_path):
    from test_segment import RAS, phantom, save_model, segment

    ct = tmp_path / "ct.nii.gz"
    save_volume(Volume(phantom(), RAS), ct)
    folder = tmp_path / "model"
    folder.mkdir()
    save_model(folder / "fold0.pt", seed=0)
    plain = segment(ct, tmp_path / "plain.nii.gz", folder, device="cpu", backend="torch")
    assert plain[0]["bone_ml"] > 0
    big = 10 * plain[0]["bone_ml"]  # every bone component is smaller than this: the rule removes all bone
    rule = {"1": {"op": "min_ml", "ml": big}}
    (folder / "boneseg.json").write_text(json.dumps({"postprocess": {"rule": rule}}))
    ruled = segment(ct, tmp_path / "ruled.nii.gz", folder, device="cpu", backend="torch")
    assert ruled[0]["bone_ml"] == 0
    off = segment(ct, tmp_path / "off.nii.gz", folder, device="cpu", backend="torch", postprocess=False)
    assert np.array_equal(load_labels(tmp_path / "off.nii.gz").data,
                          load_labels(tmp_path / "plain.nii.gz").data)
    assert off[0]["bone_ml"] == plain[0]["bone_ml"]
    (folder / "boneseg.json").write_text(json.dumps({"postprocess": {"rule": {"1": {"op": "erode"}}}}))
    with pytest.raises(DataError, match="boneseg.json"):
        segment(ct, tmp_path / "bad.nii.gz", folder, device="cpu", backend="torch")
    assert not (tmp_path / "bad.nii.gz").exists()
    shutil.rmtree(folder)
