"""docs/own-ct.md, run as written: a lab's DICOM export through settings, `dvc repro`,
correction, the sweep and `segment` to a DICOM-SEG, under real DVC in a real git repo."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from boneseg.core.imaging.nifti import Volume
from conftest import copy_project, project_env, write_dicom_series

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run(cmd, cwd, env, ok=True):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, shell=True)
    assert (r.returncode == 0) == ok, f"{cmd} -> {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


def ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def patient(seed: int) -> Volume:
    """A small abdomen-like CT: air, a body, a vertebra-like bone ring and a bright kidney."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(48) - 24, np.arange(40) - 20, indexing="ij")
    body = (x / 20.0) ** 2 + (y / 16.0) ** 2 < 1
    bone = (((x - 1) ** 2 + (y + 6) ** 2) < 25) & (((x - 1) ** 2 + (y + 6) ** 2) > 6)
    plane = np.where(body, 40, -1000) + np.where(bone, 800, 0)
    plane[(x - 10) ** 2 + (y - 4) ** 2 < 9] = 150
    data = plane[..., None] + rng.normal(0, 10, size=(48, 40, 8))
    return Volume(np.clip(data, -1024, 3000).astype(np.int16), np.diag([0.9, 0.9, 3.0, 1.0]))


@pytest.fixture
def lab(tmp_path):
    repo = tmp_path / "repo"
    copy_project(repo)
    export = tmp_path / "pacs_export"  # as a PACS exports it: folders named after patients
    for i, name in enumerate(["SMITH_JOHN", "DOE_JANE", "ROE_RICHARD", "POE_EDGAR"]):
        write_dicom_series(patient(i), export / name / "study1" / "CT_ABDOMEN", series_number=2 + i)
    write_dicom_series(patient(9), tmp_path / "new_patient" / "MILLER_ANNA", series_number=5)
    env = project_env()
    run("git init -q -b main && dvc init -q && dvc config core.analytics false", repo, env)
    return repo, export, tmp_path / "new_patient" / "MILLER_ANNA", env


def set_params(repo: Path, update) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    update(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def correct(repo: Path, env, case: str) -> None:
    """What an annotator does in ITK-SNAP: take the start map, paint a liver region, save."""
    out = run(f"boneseg correct export {case}", repo, env)
    assert "itksnap -g" in out
    start = nib.load(repo / "annotate" / case / "start.nii.gz")
    edited = np.asarray(start.dataobj).astype(np.uint8)
    edited[30:36, 10:16, :] = 4
    nib.save(nib.Nifti1Image(edited, start.affine), repo / "annotate" / case / "edited.nii.gz")
    assert "effort:" in run(f"boneseg correct import {case} annotate/{case}/edited.nii.gz", repo, env)


def test_own_dicom_ct_end_to_end(lab):
    repo, export, new_series, env = lab
    # 1. the export goes under data/sources and into DVC; 2. params.yaml names it
    shutil.copytree(export, repo / "data/sources/lab1")
    run("dvc add -q data/sources/lab1 && git add -A && git commit -qm 'lab1 export'", repo, env)

    def settings(p):
        p["data"]["sources"] = [{"path": "data/sources/lab1", "layout": "dicom", "cohort": "abdomen"}]
        p["data"]["image_size"] = 32
        p["splits"].update(folds=2, test_cases=1)
        p["train"].update(epochs=2, batch_size=2)
        p["sweep"].update(variants=["multi-random"], log_model=False)

    set_params(repo, settings)
    # 3. the labelling half: import, (no thigh CT: no V-Net), threshold + fill, the list to label
    out = run("dvc repro labels", repo, env)
    assert ran(out) == {"raw", "propose", "labels"}
    assert "no thigh CT to learn from" in out
    assert "to label (4: no truth, no correction" in out and "ct0000 ct0001 ct0002 ct0003" in out
    cases = sorted(p.name for p in (repo / "data/raw/abdomen").iterdir())
    assert cases == ["ct0000", "ct0001", "ct0002", "ct0003"]
    # the documented mistake is refused, not obeyed: import into the stage's folder
    err = run(f"boneseg import --source {export} --layout dicom", repo, env, ok=False)
    assert "is the output of the DVC stage `raw`" in err and "data.sources" in err
    # 4. three corrections, then the whole pipeline
    for case in ("ct0000", "ct0001", "ct0002"):
        correct(repo, env, case)
    out = run("dvc repro", repo, env)
    assert {"labels", "splits", "slices", "pretrain", "sweep", "report"} <= ran(out)
    assert not ran(out) & {"raw", "propose"}
    splits = json.loads((repo / "data/splits.json").read_text())
    assert splits["to_label"] == ["ct0003"]
    assert "ct0003" not in set(splits["test"]) | {c for f in splits["folds"] for c in f["val"]}
    # 5. a second repro is a no-op, and every imported case is still there
    out = run("dvc repro", repo, env)
    assert ran(out) == set() and "Data and pipelines are up to date." in out
    assert sorted(p.name for p in (repo / "data/raw/abdomen").iterdir()) == cases
    assert "up to date" in run("dvc status", repo, env)
    # 6. a further correction re-runs labels and what follows, never the import
    correct(repo, env, "ct0003")
    out = run("dvc repro", repo, env)
    assert {"labels", "splits", "slices", "sweep", "report"} <= ran(out) and not ran(out) & {"raw", "propose"}
    assert "to_label" not in json.loads((repo / "data/splits.json").read_text())
    # 7. a new patient's series -> a DICOM-SEG named by its own UID
    out = run(f"boneseg segment --input {new_series} --output seg --output-format dicom-seg "
              "--model results/model", repo, env)
    (seg,) = (repo / "seg").glob("*.dcm")
    assert seg.name.startswith("seg-") and "MILLER" not in seg.name
    again = (f"boneseg segment --input {new_series} --output {seg} --output-format dicom-seg "
             "--model results/model")
    assert "exists. Nothing was written. Pass --force" in run(again, repo, env, ok=False)
    run(again + " --force", repo, env)
    # nothing of the patients' names reached the data, the results, the id map or MLflow
    names = [b"SMITH", b"DOE_JANE", b"ROE_", b"POE_", b"MILLER"]
    for folder in ("data/raw", "data/labels", "results", ".boneseg"):
        for f in (repo / folder).rglob("*"):
            if f.is_file():
                assert not any(n in f.read_bytes() for n in names), f"{f} names a patient"
    assert not any(n in (repo / "mlflow.db").read_bytes() for n in names)
    imap = repo / ".boneseg/import_idmap.json"
    assert oct(imap.stat().st_mode & 0o777) == "0o600" and oct(imap.parent.stat().st_mode & 0o777) == "0o700"
    assert "import_idmap" not in run("git status --porcelain --ignored=no", repo, env)
