"""`boneseg train` end to end: CLI -> fit -> summary + a FINISHED run in a real MLflow sqlite store."""
import json

import mlflow
import pytest

from boneseg.cli import main
from boneseg.core.config import to_yaml

pytestmark = pytest.mark.slow


def test_train_cli_records_one_finished_mlflow_run(tiny_pipeline, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # MLflow puts a sqlite store's artifacts under ./mlruns
    params = tmp_path / "params.yaml"
    params.write_text(to_yaml(tiny_pipeline))
    uri = f"sqlite:///{tmp_path / 'own.db'}"  # this test's own store: the shared one may hold other runs
    rc = main(
        [
            "--params",
            str(params),
            "--set",
            f"train.out_dir={tmp_path / 'out'}",
            "--set",
            "train.epochs=2",
            "--set",
            f"tracking.uri={uri}",
            "train",
            "--variant",
            "multi-random",
            "--fold",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "validation bone Dice" in out and "baselines on the same validation patients" in out
    summary = json.loads((tmp_path / "out/multi-random/fold1/summary.json").read_text())

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("boneseg")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["variant"] == "multi-random" and run.data.tags["fold"] == "1"
    assert run.data.params["classes"] == "multi" and run.data.params["init"] == "random"
    assert run.data.metrics["bone_dice"] == pytest.approx(summary["bone_dice"])
    # the default train.val_every=4 over 2 epochs: 3-D validation after the last epoch only
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_bone_dice")] == [1]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [0, 1]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"summary.json", "history.json"}


def test_failed_trial_leaves_a_failed_run_not_a_running_one(tiny_pipeline, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    params = tmp_path / "params.yaml"
    params.write_text(to_yaml(tiny_pipeline))
    # a missing splits file makes fit() fail after the run was created
    rc = main(
        [
            "--params",
            str(params),
            "--set",
            f"tracking.uri={uri}",
            "--set",
            f"data.splits_file={tmp_path}/none.json",
            "train",
            "--variant",
            "multi-random",
            "--fold",
            "0",
        ]
    )
    assert rc == 2
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("boneseg").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
