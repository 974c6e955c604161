import math

import numpy as np
import pytest
from scipy.spatial.distance import dice as scipy_dice_dissimilarity

from boneseg.core.evaluation.metrics import (
    best_variant,
    case_metrics,
    dice,
    fold_summary,
    nanmean,
    variant_scores,
)


def test_dice_policy_on_hand_built_volumes():
    empty = np.zeros((4, 4, 3), bool)
    full = np.ones((4, 4, 3), bool)
    assert math.isnan(dice(empty, empty))  # both empty: NaN
    assert dice(full, empty) == 0.0  # ground truth empty, prediction not: 0
    assert dice(empty, full) == 0.0  # prediction empty
    a = np.zeros((4, 4, 3), bool)
    b = np.zeros((4, 4, 3), bool)
    a[:2] = True  # 24 voxels
    b[1:3] = True  # 24 voxels, 12 shared
    assert dice(a, b) == pytest.approx(2 * 12 / 48)


def test_dice_matches_an_independent_implementation():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p, g = rng.random((6, 7, 5)) > 0.6, rng.random((6, 7, 5)) > 0.4
        assert dice(p, g) == pytest.approx(1 - scipy_dice_dissimilarity(p.ravel(), g.ravel()))


def test_case_metrics_counts_and_volumes():
    truth = np.zeros((10, 10, 2), np.uint8)
    pred = np.zeros_like(truth)
    truth[:5] = 1
    pred[:4] = 1
    pred[9, 9, 0] = 2
    m = case_metrics(pred, truth, (2.0, 2.0, 5.0), 5)  # 20 mm^3 per voxel
    assert (m["tp"]["bone"], m["fp"]["bone"], m["fn"]["bone"]) == (80, 0, 20)
    assert m["volume_ml_truth"]["bone"] == pytest.approx(100 * 0.02)
    assert m["dice"]["kidney"] == 0.0 and math.isnan(m["dice"]["liver"])
    assert m["bone_dice"] == pytest.approx(160 / 180)


def test_summary_leaves_nan_out_and_counts_it():
    rows = [{"bone_dice": 0.8, "loss": 1.0, "dice": {"bone": 0.8}, "tp": {"bone": 8}, "fp": {"bone": 2},
             "fn": {"bone": 2}},
            {"bone_dice": float("nan"), "loss": 1.0, "dice": {"bone": float("nan")}, "tp": {"bone": 0},
             "fp": {"bone": 0}, "fn": {"bone": 0}},
            {"bone_dice": 0.6, "loss": 1.0, "dice": {"bone": 0.6}, "tp": {"bone": 3}, "fp": {"bone": 1},
             "fn": {"bone": 3}}]
    s = fold_summary(rows)
    assert s["bone_dice"] == pytest.approx(0.7) and s["n_nan"] == 1 and s["n_cases"] == 3
    assert s["bone_dice_pooled"] == pytest.approx(2 * 11 / (22 + 3 + 5))
    assert math.isnan(nanmean([float("nan")]))


def test_best_variant_is_the_highest_score_and_nan_ranks_lowest():
    nan = float("nan")
    assert best_variant({"a": {"bone_dice_mean": 0.90}, "b": {"bone_dice_mean": 0.95}}) == "b"
    # NaN first or last: plain max() would return it or not depending on the order
    assert best_variant({"a": {"bone_dice_mean": nan}, "b": {"bone_dice_mean": 0.5}}) == "b"
    assert best_variant({"b": {"bone_dice_mean": 0.5}, "a": {"bone_dice_mean": nan}}) == "b"


def fold(score, test, tp, fp, fn, n_nan=0):
    """A trial summary as fit() returns it, reduced to what the variant's scores read."""
    return {"bone_dice": score, "mean": {"bone_tp": tp, "bone_fp": fp, "bone_fn": fn, "n_nan": n_nan},
            "test": {"bone_dice": test}}


def test_variant_scores_from_hand_built_folds():
    s = variant_scores([fold(0.90, 0.80, 90, 10, 10), fold(0.80, float("nan"), 40, 10, 10, n_nan=1),
                        fold(0.70, 0.60, 10, 5, 5)])
    assert s["bone_dice_mean"] == pytest.approx(0.80)  # the study's score: mean of the fold scores
    assert s["bone_dice_std"] == pytest.approx(0.10)  # sample std (ddof=1) of 0.9, 0.8, 0.7
    assert s["bone_dice_pooled"] == pytest.approx(2 * 140 / (2 * 140 + 25 + 25))  # voxels of every fold
    assert s["test_bone_dice"] == pytest.approx(0.70)  # NaN test score left out of the mean
    assert (s["n_folds"], s["n_nan_folds"], s["n_nan_cases"]) == (3, 0, 1)


def test_variant_scores_leave_a_nan_fold_out_and_count_it():
    s = variant_scores(
        [fold(0.9, 0.9, 9, 1, 1), fold(float("nan"), 0.9, 0, 0, 0, n_nan=3), fold(0.7, 0.9, 7, 3, 3)]
    )
    assert s["bone_dice_mean"] == pytest.approx(0.8) and s["n_nan_folds"] == 1 and s["n_nan_cases"] == 3
    one = variant_scores([fold(0.9, 0.9, 9, 1, 1)])
    assert one["bone_dice_std"] == 0.0 and one["bone_dice_mean"] == 0.9
    assert math.isnan(
        variant_scores([fold(0.9, 0.9, 9, 1, 1), fold(float("nan"), 0.9, 0, 0, 0)])["bone_dice_std"]
    )
