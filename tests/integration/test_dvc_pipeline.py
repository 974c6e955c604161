"""Real DVC in a real git repository: repro of the whole pipeline (the sweep on a local Ray
included), no-op repro, param change re-runs only downstream, push/pull to a remote."""
import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from conftest import copy_project, project_env

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run(cmd, cwd, env):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, shell=isinstance(cmd, str))
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


def ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / "repo"
    copy_project(repo, gitignore=False)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["synth"].update(abdomen=5, thigh=2, matrix=48, slices=6)
    params["data"]["image_size"] = 32
    params["splits"].update(folds=2, test_cases=1)
    params["pretrain"].update(epochs=4)
    params["propose"].update(spacing_mm=[4.0, 4.0, 4.0], crop=[16, 16, 16], window=[16, 16, 16], steps=4,
                             val_cases=1)
    params["train"].update(epochs=2, batch_size=2)
    params["sweep"].update(variants=["multi-random"], log_model=False)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = project_env()
    run("git init -q -b main && dvc init -q && dvc config core.analytics false", repo, env)
    run(f"dvc remote add -d local {tmp_path / 'storage'}", repo, env)
    shutil.copytree(ROOT / ".dvc" / "plots", repo / ".dvc" / "plots")  # the project's plot templates
    return repo, env


def test_repro_noop_param_change_push_and_pull(repo, tmp_path):
    repo, env = repo
    first = run("dvc repro", repo, env)
    assert ran_stages(first) == {"raw", "propose", "labels", "splits", "slices", "pretrain", "sweep",
                                 "report"}
    assert sorted(p.name for p in (repo / "data/proposals").iterdir()) == sorted(
        [f"abd00{i}.nii.gz" for i in range(5)] + ["propose.json"])
    assert (repo / "data/slices/index.json").is_file() and (repo / "data/labels/qa.json").is_file()
    assert "multi-random" in (repo / "results/report/index.html").read_text()
    int8 = json.loads((repo / "results/model/boneseg.json").read_text())["onnx"]["int8"]["offered"]
    assert sorted(p.name for p in (repo / "results/model").iterdir()) == sorted(
        ["boneseg.json", "fold0.pt", "fold1.pt", "fold0.onnx", "fold1.onnx"]
        + (["fold0.int8.onnx", "fold1.int8.onnx"] if int8 else []))

    again = run("dvc repro", repo, env)
    assert ran_stages(again) == set() and "Data and pipelines are up to date." in again

    # the annotator's round trip: export a case, edit it (here: the truth without its vessels),
    # import it, and `dvc repro` derives the labels from it and retrains on them
    case = "abd001"
    assert "itksnap -g" in run(f"boneseg correct export {case}", repo, env)
    truth = nib.load(repo / "data/raw/abdomen" / case / "truth.nii.gz")
    edited = np.asarray(truth.dataobj).astype(np.uint16)
    edited[edited == 3] = 0
    nib.save(nib.Nifti1Image(edited, truth.affine), repo / "annotate" / case / "start.nii.gz")
    assert "effort:" in run(f"boneseg correct import {case} annotate/{case}/start.nii.gz", repo, env)
    redo = ran_stages(run("dvc repro", repo, env))
    assert {"labels", "slices", "sweep", "report"} <= redo and not redo & {"raw", "propose"}
    record = json.loads((repo / "data/corrections" / f"{case}.json").read_text())
    qa = json.loads((repo / "data/labels/qa.json").read_text())
    row = next(r for r in qa["cases"] if r["case"] == case)
    assert row["label_source"] == "correction" and row["correction_effort"] == record["effort"]
    label = np.load(repo / "data/slices" / case / "label.npy")
    assert 3 not in np.unique(label) and 1 in np.unique(label)  # what the sweep trained on: the edit

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["splits"]["seed"] = 99
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran_stages(run("dvc repro", repo, env)) == {"splits", "sweep", "report"}

    params["data"]["image_size"] = 64
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran_stages(run("dvc repro", repo, env)) == {"slices", "pretrain", "sweep", "report"}
    assert "up to date" in run("dvc status", repo, env)

    metrics = run("dvc metrics show", repo, env)
    assert "data/labels/qa.json" in metrics and "total.thigh_dice_filled" in metrics
    assert "results/metrics.json" in metrics and "multi-random.bone_dice_mean" in metrics
    shown = subprocess.run(["dvc", "plots", "show", "--json"], cwd=repo, env=env, capture_output=True,
                           text=True)
    plots = json.loads(shown.stdout)
    assert not plots.get("errors"), plots.get("errors")
    (curve,) = plots["data"]["results/curves.json"]  # one line per trial, each trial's validated epochs
    records = curve["content"]["data"]["values"]
    assert {r["trial"] for r in records} == {"multi-random/fold0", "multi-random/fold1"}
    assert curve["content"]["encoding"]["color"]["field"] == "trial"
    history = json.loads((repo / "results/trials/multi-random/fold0/history.json").read_text())
    assert [r["epoch"] for r in records if r["trial"] == "multi-random/fold0"] == \
        [h["epoch"] for h in history if "val_bone_dice" in h]

    run("dvc push -q && git add -A && git commit -qm pipeline", repo, env)
    clone = tmp_path / "clone"
    run(f"git clone -q {repo} {clone}", tmp_path, env)
    run("dvc pull -q", clone, env)
    assert (clone / "data/slices/index.json").read_bytes() == (repo / "data/slices/index.json").read_bytes()
    assert ran_stages(run("dvc repro", clone, env)) == set()
