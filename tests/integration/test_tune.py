"""`boneseg tune` on a real local Ray and a real MLflow store: a seeded random search with
ASHA, then Optuna without early stopping; one MLflow child per trial with the searched
values as params; the best setting as an override file that `--experiment` loads; the
held-out test cases are never read (their slices are gone during the search)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess

import mlflow
import pytest
import yaml
from test_sweep import boneseg_cmd, own_tmp, sweep_cfg  # noqa: F401 (own_tmp: a fixture)

from boneseg.cli import main as cli
from boneseg.core.config import load_config, to_yaml
from boneseg.core.layout import load_splits

pytestmark = pytest.mark.slow

SPACE = {"train.lr": {"loguniform": [1e-4, 1e-2]}, "train.batch_size": {"choice": [2, 4]}}


@pytest.fixture
def project(tiny_pipeline, tmp_path, monkeypatch):
    """The tiny pipeline's data with the test cases' slices removed, and a params.yaml."""
    slices = tmp_path / "slices"
    shutil.copytree(tiny_pipeline.data.slices_dir, slices)
    test_cases = load_splits(tiny_pipeline.data.splits_file)["test"]
    assert test_cases
    for case in test_cases:
        shutil.rmtree(slices / case)
    cfg = sweep_cfg(tiny_pipeline, tmp_path, variants=("multi-random",), epochs=2)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"slices_dir": str(slices)})})
    params = tmp_path / "params.yaml"
    params.write_text(to_yaml(cfg))
    monkeypatch.chdir(tmp_path)
    return tmp_path, params


def run_tune(params, tune: dict) -> int:
    exp = params.parent / "experiments" / "search.yaml"
    exp.parent.mkdir(exist_ok=True)
    exp.write_text(yaml.safe_dump({"search": SPACE, "tune": tune}))
    return cli(["--params", str(params), "--experiment", "search", "tune"])


def search_tree(uri: str, parent_id: str):
    c = mlflow.MlflowClient(uri)
    parent = c.get_run(parent_id)
    kids = c.search_runs([parent.info.experiment_id], f"tags.search_id = '{parent_id}'")
    return c, parent, kids


def test_random_search_with_asha_tracks_every_trial_and_writes_the_override(project, capsys):
    root, params = project
    assert run_tune(params, {"num_samples": 4, "scheduler": "asha", "grace_epochs": 1, "reduction_factor": 2,
                             "folds": [0, 1], "seed": 3}) == 0
    out = capsys.readouterr().out
    written = sorted((root / "experiments").glob("tuned-*.yaml"))
    assert len(written) == 1, out
    cfg = load_config(params)
    c, parent, kids = search_tree(cfg.tracking.uri, next(
        r.info.run_id for r in mlflow.MlflowClient(cfg.tracking.uri).search_runs(
            [mlflow.MlflowClient(cfg.tracking.uri).get_experiment_by_name("boneseg").experiment_id],
            "tags.kind = 'search'")))
    assert parent.info.status == "FINISHED" and parent.data.tags["override_file"] == str(written[0])
    assert parent.data.params["tune.num_samples"] == "4" and "search.train.lr" in parent.data.params
    assert len(kids) == 4 and all(k.info.status == "FINISHED" for k in kids)
    spent = 0
    for k in kids:  # the searched values are the child's params (MLflow's columns and chart axes)
        lr, bs = float(k.data.params["train.lr"]), int(k.data.params["train.batch_size"])
        assert 1e-4 <= lr <= 1e-2 and bs in (2, 4)
        hist = c.get_metric_history(k.info.run_id, "val_bone_dice")
        n = int(k.data.metrics["validated_epochs"])
        assert [m.step for m in sorted(hist, key=lambda m: m.step)] == list(range(1, n + 1))
        assert {"fold0_bone_dice", "fold1_bone_dice"} <= set(k.data.metrics)
        assert k.data.tags["stopped_early"] == str(n < 2).lower()
        spent += n  # val_every 1: one validated epoch per epoch trained
    assert parent.data.metrics["trial_epochs"] == spent <= 8
    full = [k for k in kids if k.data.metrics["validated_epochs"] == 2]  # the best ran every epoch
    best = next(k for k in full if k.data.tags["trial_id"] == parent.data.tags["best_trial"])
    assert best.data.metrics["val_bone_dice"] == max(k.data.metrics["val_bone_dice"] for k in full)
    assert parent.data.metrics["best_val_bone_dice"] == pytest.approx(best.data.metrics["val_bone_dice"])
    # the override holds the best values (and nothing of the search itself); --experiment loads it
    override = yaml.safe_load(written[0].read_text())
    assert set(override) == {"train"} and "search" not in override
    tuned = load_config(params, experiment=written[0].stem)
    assert tuned.train.lr == pytest.approx(float(best.data.params["train.lr"]))
    assert tuned.train.batch_size == int(best.data.params["train.batch_size"])
    assert f"boneseg sweep --experiment {written[0].stem}" in out


def test_optuna_without_early_stopping_runs_every_trial_out(project, capsys):
    root, params = project
    assert run_tune(params, {"num_samples": 2, "algorithm": "optuna", "scheduler": "none", "seed": 1}) == 0
    cfg = load_config(params)
    client = mlflow.MlflowClient(cfg.tracking.uri)
    parent = client.search_runs([client.get_experiment_by_name("boneseg").experiment_id],
                                "tags.kind = 'search'")[0]
    assert parent.data.tags["search_algorithm"] == "optuna"
    _, _, kids = search_tree(cfg.tracking.uri, parent.info.run_id)
    assert len(kids) == 2 and all(k.data.metrics["validated_epochs"] == 2 for k in kids)
    assert parent.data.metrics["trial_epochs"] == 4
    assert json.loads(parent.data.params["tune.algorithm"]) == "optuna"


def test_an_empty_search_space_is_one_line_before_ray_starts(project, capsys):
    root, params = project
    assert cli(["--params", str(params), "tune"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "search: nothing to search" in err[0]
    assert not (root / "ray").exists()  # no Tune experiment was started


def test_a_killed_search_is_resumed_by_the_same_command(project, own_tmp):  # noqa: F811
    root, params = project
    exp = root / "experiments" / "search.yaml"
    exp.parent.mkdir(exist_ok=True)
    exp.write_text(yaml.safe_dump({"search": SPACE, "tune": {"num_samples": 4, "scheduler": "none"}}))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env.update(TMPDIR=str(own_tmp), RAY_TMPDIR=str(own_tmp))
    cmd = boneseg_cmd(params, "--experiment", "search", "tune")
    first = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    done, first_out = None, []
    for line in first.stdout:  # kill the driver (and its local Ray) once one trial has finished
        first_out.append(line)
        if line.startswith("tune: trial") and "finished after" in line:
            done = line.split()[2]
            break
    os.killpg(first.pid, signal.SIGKILL)
    first.stdout.read()
    first.wait(30)
    assert done, "no trial finished before the kill"
    second = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert sum("tune: resuming search-" in line for line in second.stdout.splitlines()) == 1
    # Tune's experiment state is saved every few seconds, so a trial that finished just before the
    # kill may run again; its MLflow child is continued, never duplicated
    def started(lines):
        return {line.split()[2] for line in lines if line.startswith("tune: trial") and "started" in line}

    assert len(started(first_out) | started(second.stdout.splitlines())) == 4
    cfg = load_config(params)
    client = mlflow.MlflowClient(cfg.tracking.uri)
    exp_id = client.get_experiment_by_name("boneseg").experiment_id
    parents = client.search_runs([exp_id], "tags.kind = 'search'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # one tree, continued
    _, _, kids = search_tree(cfg.tracking.uri, parents[0].info.run_id)
    assert len(kids) == 4 and len({k.data.tags["trial_id"] for k in kids}) == 4
    assert all(k.info.status == "FINISHED" for k in kids)
    assert len(list((root / "experiments").glob("tuned-*.yaml"))) == 1
