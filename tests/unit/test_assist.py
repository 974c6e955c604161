"""Model-assisted labelling (`core.labelling.assist`): the trials' out-of-fold label maps, their
effort beside the other proposal sources, and `boneseg assist --model` for new CTs into
the correction round trip."""
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from boneseg.cli import main as cli
from boneseg.core.config import to_yaml
from boneseg.core.engine.training import fit
from boneseg.core.evaluation.metrics import dice
from boneseg.core.labelling.assist import labelling_effort, oof_maps, oof_sources
from boneseg.core.labelling.correct import import_correction
from boneseg.core.labelling.effort import effort, proposal_qa
from boneseg.core.labelling.labels import derive_labels
from boneseg.core.layout import find_cases, label_path, load_splits
from boneseg.errors import DataError


def with_(cfg, **sections):
    return cfg.model_copy(update={k: getattr(cfg, k).model_copy(update=v) for k, v in sections.items()})


@pytest.fixture(scope="module")
def trials(tiny_pipeline, tmp_path_factory):
    """Both folds of multi-random trained as the sweep lays them out (results/trials)."""
    root = tmp_path_factory.mktemp("trials")
    cfg = with_(tiny_pipeline, sweep={"trials_dir": str(root)})
    results = {k: fit(cfg, "multi-random", k, out_dir=root / "multi-random" / f"fold{k}") for k in (0, 1)}
    return cfg, results


def test_a_trial_writes_the_label_maps_it_scored_on_the_cts_grid(trials):
    cfg, results = trials
    r = results[0]
    folder = Path(r.out_dir) / "predictions"
    rows = r.summary["metric_per_case"] + r.summary["test"]["metric_per_case"]
    assert len(rows) == 3  # 2 validation + 1 test case
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{row['case']}.nii.gz" for row in rows)
    for row in rows:
        pred = nib.load(folder / f"{row['case']}.nii.gz")
        truth = nib.load(label_path(cfg.data.labels_dir, row["case"]))
        assert pred.shape == truth.shape and np.allclose(pred.affine, truth.affine)
        p = np.asarray(pred.dataobj)
        assert p.dtype == np.uint8 and set(np.unique(p)) <= {0, 1, 2, 3, 4}
        # the file is the map that was scored: its bone Dice is the trial's
        assert dice(p == 1, np.asarray(truth.dataobj) == 1) == pytest.approx(row["bone_dice"], abs=1e-9)


def test_each_case_is_proposed_by_the_fold_model_that_did_not_train_on_it(trials):
    cfg, _ = trials
    splits = load_splits(cfg.data.splits_file)
    maps = oof_maps(cfg.sweep.trials_dir, splits, "multi-random")
    for k, fold in enumerate(splits["folds"]):
        for case in fold["val"]:
            assert maps[case].parent.parent.name == f"fold{k}" and case not in fold["train"]
    for case in splits["test"]:
        assert maps[case].parent.parent.name == "fold0"
    assert sorted(maps) == sorted([c for f in splits["folds"] for c in f["val"]] + splits["test"])
    assert oof_maps(cfg.sweep.trials_dir, splits, "single-random") == {}  # no such trials: nothing


def test_out_of_fold_effort_is_scored_against_the_truth_beside_the_other_sources(trials):
    cfg, _ = trials
    metrics = {"multi-random": {"bone_dice_mean": 0.5}}
    oof = oof_sources(cfg, metrics)
    assert oof["variants"] == {"unet": "multi-random"}  # no single-class variant: no unet-bone
    truths = {c["case"]: c["truth"] for c in find_cases(cfg.data.raw_dir) if c["cohort"] == "abdomen"}
    maps = oof_maps(cfg.sweep.trials_dir, load_splits(cfg.data.splits_file), "multi-random")
    assert sorted(oof["cases"]) == sorted(truths)
    for case, q in oof["cases"].items():
        truth = np.asarray(nib.load(truths[case]).dataobj).astype(np.uint8)
        pred = np.asarray(nib.load(maps[case]).dataobj)
        assert q["unet"] == proposal_qa(pred, truth)
        assert q["unet"]["voxels"] == int((pred != truth).sum())
    eff = labelling_effort(cfg, metrics)
    assert list(eff["totals"]) == ["threshold", "filled", "unet"]
    assert eff["totals"]["unet"]["voxels"] == sum(q["unet"]["voxels"] for q in oof["cases"].values())
    assert eff["totals"]["unet"]["cases"] == eff["totals"]["filled"]["cases"] == len(truths)


def test_propose_with_a_model_feeds_the_correction_round_trip(trials, tmp_path, capsys):
    cfg, results = trials
    cfg = with_(cfg, data={"unet_proposals_dir": str(tmp_path / "unet"), "annotate_dir": str(tmp_path / "ws"),
                           "corrections_dir": str(tmp_path / "corr")})
    params = tmp_path / "params.yaml"
    params.write_text(to_yaml(cfg))
    model = results[0].out_dir + "/model.pt"
    assert cli(["--params", str(params), "assist", "--model", model]) == 0  # --input: data.raw_dir
    assert "U-Net proposals" in capsys.readouterr().out
    cases = [c for c in find_cases(cfg.data.raw_dir) if c["cohort"] == "abdomen"]
    written = sorted(p.name for p in (tmp_path / "unet").glob("*.nii.gz"))
    assert written == sorted(f"{c['case']}.nii.gz" for c in cases)  # no thigh CT
    manifest = json.loads((tmp_path / "unet" / "proposals.json").read_text())
    assert manifest[written[0]] == {"model": model, "folds": "all"}
    case = cases[0]
    proposal = np.asarray(nib.load(tmp_path / "unet" / f"{case['case']}.nii.gz").dataobj)
    ct = nib.load(case["ct"])
    assert proposal.shape == ct.shape and set(np.unique(proposal)) <= {0, 1, 2, 3, 4}
    assert cli(["--params", str(params), "correct", "export", case["case"], "--proposal", "unet"]) == 0
    ws = tmp_path / "ws" / case["case"]
    assert np.array_equal(np.asarray(nib.load(ws / "start.nii.gz").dataobj), proposal)
    truth = np.asarray(nib.load(case["truth"]).dataobj).astype(np.uint8)
    nib.save(nib.Nifti1Image(truth.astype(np.uint16), ct.affine), ws / "start.nii.gz")  # the annotator's edit
    record = import_correction(cfg, case["case"], ws / "start.nii.gz")
    assert record["started_from"] == "unet" and record["effort"] == effort(proposal, truth)
    # the labels stage does not read the U-Net's folder: its QA row carries the effort as imported
    cfg = with_(cfg, data={"labels_dir": str(tmp_path / "labels")})
    row = next(r for r in derive_labels(cfg, progress=False)["cases"] if r["case"] == case["case"])
    assert row["label_source"] == "correction" and row["proposal"] == "unet"
    assert row["correction_effort"] == record["effort"]
    assert row["corrected_voxels"] == record["effort"]["voxels"]


def test_a_missing_unet_proposal_or_bad_input_is_refused_by_name(trials, tmp_path, capsys):
    cfg, results = trials
    cfg = with_(cfg, data={"unet_proposals_dir": str(tmp_path / "none"),
                           "annotate_dir": str(tmp_path / "ws")})
    params = tmp_path / "params.yaml"
    params.write_text(to_yaml(cfg))
    case = next(c for c in find_cases(cfg.data.raw_dir) if c["cohort"] == "abdomen")["case"]
    assert cli(["--params", str(params), "correct", "export", case, "--proposal", "unet"]) != 0
    err = capsys.readouterr().err
    assert f"no U-Net proposal for {case}" in err and "boneseg assist --model" in err
    assert not (tmp_path / "ws").exists()
    missing = tmp_path / "nothing"
    model = results[0].out_dir
    assert cli(["--params", str(params), "assist", "--model", model, "--input", str(missing)]) != 0
    assert str(missing) in capsys.readouterr().err and not (tmp_path / "none").exists()
    assert cli(["--params", str(params), "assist", "--input", str(missing)]) == 2  # --model is required
    assert "--model" in capsys.readouterr().err
    with pytest.raises(DataError, match="only thigh CTs"):
        from boneseg.core.labelling.assist import input_pairs

        thigh_only = tmp_path / "raw" / "thigh"
        src = next(c for c in find_cases(cfg.data.raw_dir) if c["cohort"] == "thigh")["ct"].parent
        (thigh_only / src.name).mkdir(parents=True)
        (thigh_only / src.name / "ct.nii.gz").write_bytes((src / "ct.nii.gz").read_bytes())
        input_pairs(tmp_path / "raw", tmp_path / "out")
