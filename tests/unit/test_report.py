"""The report's statistics: paired bootstrap intervals on hand-built per-case scores."""
import math

import numpy as np
import pytest

from boneseg.core.evaluation.stats import paired_bootstrap, per_case, statistics


def test_identical_variants_differ_by_exactly_zero():
    a = {f"p{i}": 0.8 + 0.01 * i for i in range(8)}
    d = paired_bootstrap(a, dict(a), n=2000)
    assert d["mean_diff"] == 0 and d["ci95"] == [0, 0] and d["n_cases"] == 8


def test_a_constant_shift_is_found_with_a_tight_interval_and_pairing_matters():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.6, 0.95, 12)  # patients differ a lot ...
    a = {f"p{i}": float(v + 0.02) for i, v in enumerate(base)}  # ... case a is 0.02 better on every one
    b = {f"p{i}": float(v) for i, v in enumerate(base)}
    d = paired_bootstrap(a, b, n=5000, seed=3)
    assert d["mean_diff"] == pytest.approx(0.02)
    assert d["ci95"][0] == pytest.approx(0.02) and d["ci95"][1] == pytest.approx(0.02)  # paired: no spread
    assert d["p"] == 0.0
    # unpaired, the patient spread (~0.1) would swamp 0.02: the pairing is what makes it visible
    noisy = {k: v + float(rng.normal(0, 0.02)) for k, v in a.items()}
    d2 = paired_bootstrap(noisy, b, n=5000, seed=3)
    assert d2["ci95"][0] < d2["mean_diff"] < d2["ci95"][1]
    assert d2["ci95"][1] - d2["ci95"][0] < 0.05


def test_only_cases_both_variants_scored_are_paired_and_nan_is_left_out():
    rows = [{"variant": "x", "fold": 0, "case": "p1", "bone_dice": 0.9},
            {"variant": "x", "fold": 0, "case": "p2", "bone_dice": float("nan")},
            {"variant": "x", "fold": 1, "case": "p3", "bone_dice": 0.7},
            {"variant": "y", "fold": 0, "case": "p1", "bone_dice": 0.8},
            {"variant": "y", "fold": 1, "case": "p3", "bone_dice": 0.8},
            {"variant": "y", "fold": 1, "case": "p4", "bone_dice": 0.1}]
    assert per_case(rows, "x") == {"p1": 0.9, "p3": 0.7}
    stats = statistics(rows, ["x", "y"], n=1000, seed=0)
    d = stats["differences"][0]
    assert (d["a"], d["b"], d["n_cases"]) == ("x", "y", 2)
    assert d["mean_diff"] == pytest.approx(0.0)  # (0.1 + -0.1) / 2; p4 is not paired
    assert stats["variants"]["y"]["n_cases"] == 3
    lo, hi = stats["variants"]["x"]["ci95"]
    assert 0.7 <= lo <= 0.8 <= hi <= 0.9
    one = paired_bootstrap({"p1": 1.0}, {"p1": 0.5})
    assert one["n_cases"] == 1 and math.isnan(one["mean_diff"])
