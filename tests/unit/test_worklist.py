"""`boneseg correct next`: the cases still to label, ranked by the fold models' disagreement,
and `correct export` with no case taking the top one."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from test_segment import RAS, phantom, save_model

from boneseg.cli import main as cli
from boneseg.core.imaging.nifti import Volume, save_volume
from boneseg.core.labelling.worklist import disagreement


def test_disagreement_is_zero_for_identical_maps_and_one_for_disjoint_ones():
    a = np.zeros((8, 8, 4), np.uint8)
    a[:4] = 1
    b = np.zeros_like(a)
    b[4:] = 1
    assert disagreement([a, a.copy(), a.copy()]) == 0.0
    assert disagreement([a, b]) == 1.0
    c = a.copy()
    c[:4, :, 2:] = 2  # half of a's bone is kidney in c: bone Dice 2/3, kidney Dice 0
    assert disagreement([a, c]) == pytest.approx(((1 - 2 / 3) + 1.0) / 2)
    assert disagreement([np.zeros_like(a)] * 3) == 0.0  # nothing predicted: nothing to disagree on
    assert disagreement([a]) == 0.0


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    for case, shift in [("abd000", 0), ("abd001", 300), ("abd002", -150)]:
        d = root / "raw" / "abdomen" / case
        d.mkdir(parents=True)
        ct = phantom() + shift * (np.arange(phantom().shape[2]) % 2)[None, None, :]  # every other slice
        save_volume(Volume(ct.astype(np.float32), RAS), d / "ct.nii.gz")
    truth = root / "raw" / "abdomen" / "abd003"  # labelled already: never ranked
    truth.mkdir(parents=True)
    save_volume(Volume(phantom(), RAS), truth / "ct.nii.gz")
    save_volume(Volume(np.zeros(phantom().shape, np.uint8), RAS), truth / "truth.nii.gz")
    models = root / "model"
    models.mkdir()
    save_model(models / "fold0.pt", seed=0, fold=0, steps=30)
    save_model(models / "fold1.pt", seed=1, fold=1, steps=8)  # a weaker model: it disagrees somewhere
    params = root / "params.yaml"
    data = {"raw_dir": str(root / "raw"), "corrections_dir": str(root / "corr"),
            "annotate_dir": str(root / "annotate")}
    params.write_text(json.dumps({"data": data, "train": {"device": "cpu", "threads": 2}}))
    return root


def test_correct_next_ranks_the_unlabelled_cases_and_export_takes_the_top_one(project, capsys):
    params = ["--params", str(project / "params.yaml")]
    assert cli([*params, "correct", "next", "--model", str(project / "model"), "--backend", "torch"]) == 0
    out = capsys.readouterr().out
    work = json.loads((project / "annotate" / "worklist.json").read_text())
    rows = work["cases"]
    assert sorted(r["case"] for r in rows) == ["abd000", "abd001", "abd002"]  # abd003 has truth
    scores = [r["disagreement"] for r in rows]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores) and scores[0] > 0
    assert f"1  {rows[0]['case']}" in out and "worklist" in out
    assert cli([*params, "correct", "export"]) == 0  # no case: the top of the worklist
    assert f"the next case on the worklist is {rows[0]['case']}" in capsys.readouterr().out
    assert (project / "annotate" / rows[0]["case"] / "ct.nii.gz").is_file()
    (project / "corr").mkdir(exist_ok=True)  # the top case gets its correction: the next export takes #2
    top = rows[0]["case"]
    shutil.copy(project / "annotate" / top / "start.nii.gz", project / "corr" / f"{top}.nii.gz")
    assert cli([*params, "correct", "export"]) == 0
    assert f"the next case on the worklist is {rows[1]['case']}" in capsys.readouterr().out


def test_identical_fold_models_agree_everywhere_and_one_model_is_refused(project, tmp_path, capsys):
    same = tmp_path / "same"
    same.mkdir()
    save_model(same / "fold0.pt", seed=0, fold=0, steps=30)
    save_model(same / "fold1.pt", seed=0, fold=1, steps=30)
    params = ["--params", str(project / "params.yaml"), "--set", f"data.annotate_dir={tmp_path / 'a'}",
              "--set", f"data.corrections_dir={tmp_path / 'none'}"]  # every unlabelled case is open
    assert cli([*params, "correct", "next", "--model", str(same), "--backend", "torch"]) == 0
    rows = json.loads((tmp_path / "a" / "worklist.json").read_text())["cases"]
    assert [r["disagreement"] for r in rows] == [0.0, 0.0, 0.0]
    assert [r["case"] for r in rows] == ["abd000", "abd001", "abd002"]  # ties: by case id
    capsys.readouterr()
    assert cli([*params, "correct", "next", "--model", str(same / "fold0.pt")]) == 2
    assert "cannot disagree with itself" in capsys.readouterr().err
    assert cli([*params, "--set", f"data.annotate_dir={tmp_path / 'b'}", "correct", "export"]) == 2
    assert "no worklist" in capsys.readouterr().err


def test_labels_ends_with_the_worklist_top_or_says_how_to_rank(project, tmp_path):
    from boneseg.core.config import Config
    from boneseg.stages.labels import next_hint

    data = json.loads((project / "params.yaml").read_text())["data"]
    cfg = Config.model_validate({"data": data, "sweep": {"model_dir": str(project / "model")}})
    todo = ["abd000", "abd001", "abd002"]
    work = project / "annotate" / "worklist.json"
    work.parent.mkdir(exist_ok=True)
    rows = [{"case": "abd002", "disagreement": 0.5}, {"case": "abd003", "disagreement": 0.4},
            {"case": "abd000", "disagreement": 0.25}]  # abd003 has truth: never offered
    saved = work.read_bytes() if work.is_file() else None
    try:
        work.write_text(json.dumps({"cases": rows}))
        corrected = {p.stem.removesuffix(".nii") for p in (project / "corr").glob("*.nii.gz")}
        expect = [r["case"] for r in rows if r["case"] not in corrected | {"abd003"}]
        hint = next_hint(cfg, todo)
        assert hint.startswith("next, by the fold models' disagreement") and f"export {expect[0]}" in hint
        assert "abd003" not in hint and "(0.500)" in hint
    finally:
        work.unlink()
        if saved is not None:
            work.write_bytes(saved)
    none = cfg.model_copy(update={"data": cfg.data.model_copy(update={"annotate_dir": str(tmp_path / "a")})})
    assert "boneseg correct next --model" in next_hint(none, todo)  # fold models, no ranking yet
    bare = none.model_copy(update={"sweep": none.sweep.model_copy(update={"model_dir": str(tmp_path / "m")})})
    assert next_hint(bare, todo) == "next: boneseg correct export abd000"


def test_a_damaged_labelling_curve_is_one_line_naming_the_file(tmp_path):
    from boneseg.core.reporting.curve import load_curve
    from boneseg.errors import DataError

    path = tmp_path / "labelling_curve.json"
    assert load_curve(path) is None
    for text in ("{", '{"orders": {"x": [{"cases": 1}]}, "all_labels": 0.9}',
                 '{"orders": {}, "all_labels": 1}',
                 '{"orders": {"x": [{"cases": 1, "voxels": 2, "bone_dice": "NaN?", "mean_dice": 0}]}}'):
        path.write_text(text)
        with pytest.raises(DataError, match="labelling_curve.json: not a labelling curve"):
            load_curve(path)
