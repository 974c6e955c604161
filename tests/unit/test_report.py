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


def _manifest(tmp_path, onnx) -> str:
    import json

    (tmp_path / "boneseg.json").write_text(json.dumps({"variant": "multi-pretrained", "onnx": onnx}))
    return str(tmp_path)


def test_the_backends_section_quotes_the_int8_check_and_says_why_int8_is_not_offered(tmp_path):
    from boneseg.core.reporting.backends import backend_summary, backends_html

    onnx = {"opset": 17, "onnxruntime": "1.32.0",
            "parity": {"0": {"max_abs_logit_diff": 6e-6, "labels_differing": 0.0},
                       "1": {"max_abs_logit_diff": 9e-6, "labels_differing": 0.0}},
            "int8": {"offered": False, "why": "int8 loses 0.0150 fold-mean bone Dice against fp32",
                     "mean_bone_dice_loss": 0.015, "max_loss": 0.002,
                     "folds": {"0": {"fp32_bone_dice": 0.9, "int8_bone_dice": 0.88, "diff": -0.02},
                               "1": {"fp32_bone_dice": 0.8, "int8_bone_dice": 0.79, "diff": -0.01}}}}
    s = backend_summary(_manifest(tmp_path, onnx))
    assert s["exported"] and not s["int8_offered"] and s["int8_why"].startswith("int8 loses 0.0150")
    assert [(r["fold"], r["diff"], r["max_abs_logit_diff"]) for r in s["folds"]] == [("0", -0.02, 6e-6),
                                                                                     ("1", -0.01, 9e-6)]
    page = backends_html(s)
    assert "int8 is not offered" in page and "int8 loses 0.0150" in page and "-0.02000" in page
    onnx["int8"].update(offered=True, why="", mean_bone_dice_loss=0.0004)
    page = backends_html(backend_summary(_manifest(tmp_path, onnx)))
    assert "int8 is offered" in page and "0.00040" in page


def test_the_backends_section_trusts_no_value_in_the_manifest(tmp_path):
    from boneseg.core.reporting.backends import backend_summary, backends_html

    assert backend_summary(tmp_path)["exported"] is False  # no manifest at all
    s = backend_summary(_manifest(tmp_path, {"error": "fold0.pt: the ONNX export (opset 17) failed"}))
    assert not s["exported"] and "opset 17" in s["why"] and "opset 17" in backends_html(s)
    hostile = {"parity": {"0": {"max_abs_logit_diff": "<script>", "labels_differing": float("nan")},
                          "<b>": "x"},
               "int8": {"offered": "yes", "why": "<img src=x>", "folds": ["not", "a", "dict"]}}
    s = backend_summary(_manifest(tmp_path, hostile))
    assert s["int8_offered"] is False  # only a literal true offers int8
    assert s["folds"][0]["max_abs_logit_diff"] is None and s["folds"][0]["labels_differing"] is None
    page = backends_html(s)
    assert "<script>" not in page and "<img" not in page and "fold &lt;b&gt;" in page and "&lt;img" in page


def test_the_postprocessing_section_shows_the_cv_dice_with_and_without_the_rule(tmp_path):
    import json

    from boneseg.core.reporting.backends import model_html, model_summary

    assert model_summary(tmp_path)["postprocess"]["chosen"] is False
    bone = {"none": 0.8512, "largest": 0.61, "min_ml 2": 0.8597, "kept": "min_ml 2"}
    pp = {"rule": {"1": {"op": "min_ml", "ml": 2.0}}, "cases": 16, "bone_dice_before": 0.8512,
          "bone_dice_after": 0.8597, "per_class": {"bone": bone}}
    (tmp_path / "boneseg.json").write_text(json.dumps({"postprocess": pp}))
    m = model_summary(tmp_path)
    assert m["postprocess"]["description"] == "bone: components >= 2 ml" and m["postprocess"]["cases"] == 16
    page = model_html(m)
    assert "components &gt;= 2 ml" in page and "0.8512 without, 0.8597 with it" in page
    assert "<th>none</th><th>largest</th><th>min_ml 2</th>" in page  # "none" first, then the candidates
    pp["rule"] = {"1": {"op": "erode"}}  # a manifest that segment would refuse is not shown as applied
    (tmp_path / "boneseg.json").write_text(json.dumps({"postprocess": pp}))
    m = model_summary(tmp_path)
    assert not m["postprocess"]["chosen"] and "No postprocessing" in model_html(m)
