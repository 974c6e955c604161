"""`dvc exp run --queue` is safe: a queued experiment runs in a temporary copy of the project
that DVC deletes afterwards, and its MLflow runs (and their artifacts) still land in the
project's own tracking store (sqlite:///mlflow.db and ./mlruns beside dvc.yaml)."""
import subprocess

import mlflow
import pytest
import yaml

from conftest import copy_project, project_env

pytestmark = pytest.mark.slow


def run(cmd, cwd, env):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, shell=True, timeout=900)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


def test_a_queued_experiment_logs_to_the_projects_mlflow_store(tmp_path):
    repo = tmp_path / "repo"
    copy_project(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["synth"].update(abdomen=2, thigh=2, matrix=48, slices=6)
    params["propose"].update(spacing_mm=[4.0, 4.0, 4.0], crop=[16, 16, 16], window=[16, 16, 16], steps=5,
                             val_cases=1)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = project_env()
    run("git init -q -b main && dvc init -q && dvc config core.analytics false && git add -A "
        "&& git commit -qm project", repo, env)
    run("dvc exp run --queue propose -S propose.steps=4 -n queued", repo, env)
    out = run("dvc exp run --run-all", repo, env)
    status = run("dvc queue status", repo, env)
    logs = run("dvc queue logs queued", repo, env)
    assert "Success" in status and "Failed" not in status, out + status + logs
    assert not list((repo / ".dvc" / "tmp" / "exps").rglob("mlflow.db"))  # nothing left in a copy
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    (exp,) = [e for e in client.search_experiments() if e.name == "boneseg"]
    (r,) = client.search_runs([exp.experiment_id], "tags.kind = 'propose'")
    assert r.data.params["propose.steps"] == "4"  # the queued run's own setting
    assert exp.artifact_location == (repo / "mlruns").as_uri()
    assert [a.path for a in client.list_artifacts(r.info.run_id)] == ["propose.json"]
    assert r.info.artifact_uri.startswith((repo / "mlruns").as_uri())  # not in the deleted copy
    assert (repo / "mlruns" / r.info.run_id / "artifacts" / "propose.json").is_file()
