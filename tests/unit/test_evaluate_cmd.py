import json
import math

import numpy as np
import pytest

from boneseg.cli import main
from boneseg.core.evaluation.validate import evaluate_folder
from boneseg.core.imaging.nifti import Volume, save_volume
from boneseg.errors import DataError

AFF = np.diag([2.0, 2.0, 5.0, 1.0])  # 20 mm^3 per voxel


def write(path, data):
    save_volume(Volume(np.asarray(data, np.uint8), AFF), path)


def test_hand_built_cases(tmp_path):
    truth = np.zeros((10, 10, 2), np.uint8)
    truth[:5] = 1  # 100 bone voxels
    pred = np.zeros_like(truth)
    pred[:4] = 1  # 80 of them found, none wrong
    write(tmp_path / "t" / "a.nii.gz", truth)
    write(tmp_path / "p" / "a.nii.gz", pred)
    write(tmp_path / "t" / "b.nii.gz", np.zeros_like(truth))  # both empty: NaN, left out, counted
    write(tmp_path / "p" / "b.nii.gz", np.zeros_like(truth))
    res = evaluate_folder(tmp_path / "p", tmp_path / "t")
    a = res["metric_per_case"][0]
    assert a["bone_dice"] == pytest.approx(160 / 180)
    assert (a["tp"]["bone"], a["fp"]["bone"], a["fn"]["bone"]) == (80, 0, 20)
    assert a["volume_ml_truth"]["bone"] == pytest.approx(2.0) and a["volume_ml_pred"][
        "bone"
    ] == pytest.approx(1.6)
    assert math.isnan(res["metric_per_case"][1]["bone_dice"])
    assert res["bone_dice"] == pytest.approx(160 / 180) and res["mean"]["bone"]["n_nan"] == 1
    assert set(res["mean"]) == {"bone", "kidney", "vessel", "liver"}
    assert set(evaluate_folder(tmp_path / "p", tmp_path / "t", "bone")["mean"]) == {"bone"}


def test_cli_writes_json_and_refuses_a_missing_truth(tmp_path, capsys):
    write(tmp_path / "t" / "a.nii.gz", np.ones((4, 4, 2)))
    write(tmp_path / "p" / "a.nii.gz", np.ones((4, 4, 2)))
    assert main(["evaluate", "--pred", str(tmp_path / "p"), "--truth", str(tmp_path / "t"),
                 "--json", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["bone_dice"] == 1.0
    write(tmp_path / "p" / "extra.nii.gz", np.ones((4, 4, 2)))
    with pytest.raises(DataError, match=r"extra\.nii\.gz: no ground truth"):
        evaluate_folder(tmp_path / "p", tmp_path / "t")


def test_geometry_mismatch_refused(tmp_path):
    write(tmp_path / "t.nii.gz", np.ones((4, 4, 2)))
    write(tmp_path / "p.nii.gz", np.ones((4, 5, 2)))
    with pytest.raises(DataError, match="shape"):
        evaluate_folder(tmp_path / "p.nii.gz", tmp_path / "t.nii.gz")
