"""The promotion gate on a real MLflow sqlite store: `champion` moves to a new version only
when it beats the champion on the same splits; otherwise the version is the `challenger`,
with the reason; `boneseg promote VERSION` moves the alias by hand."""
from __future__ import annotations

import json

import mlflow
import pytest

from boneseg.cli import main as cli
from boneseg.tracking.registry import gate, register_model


def version(client, tmp_path, score: float, splits: str = "aaa") -> str:
    run = client.create_run(client.create_experiment(f"e{score}-{splits}")
                            if client.get_experiment_by_name(f"e{score}-{splits}") is None
                            else client.get_experiment_by_name(f"e{score}-{splits}").experiment_id)
    d = tmp_path / f"m-{run.info.run_id}"
    d.mkdir()
    (d / "fold0.pt").write_bytes(b"weights")
    manifest = {"variant": "multi-random", "folds": [0], "classes": "multi", "sweep_run_id": "s",
                "scores": {"bone_dice_mean": score, "bone_dice_std": 0.01}, "splits_md5": splits}
    (d / "boneseg.json").write_text(json.dumps(manifest))
    return register_model(client, "boneseg", run.info.run_id, d, manifest).rsplit("/", 1)[1]


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    monkeypatch.chdir(tmp_path)
    return mlflow.MlflowClient(uri)


def champion(client) -> str:
    return str(client.get_model_version_by_alias("boneseg", "champion").version)


def test_the_champion_moves_only_to_a_better_version_on_the_same_splits(store, tmp_path, capsys):
    v1 = version(store, tmp_path, 0.80)
    assert gate(store, "boneseg", v1) == (True, "the first scored version") and champion(store) == v1
    v2 = version(store, tmp_path, 0.79)  # worse: the challenger, and the champion stays
    ok, why = gate(store, "boneseg", v2)
    assert not ok and "0.7900 does not beat champion version 1's 0.8000" in why and champion(store) == v1
    mv2 = store.get_model_version("boneseg", v2)
    assert mv2.tags["promotion"] == "challenger" and mv2.tags["promotion_reason"] == why
    assert str(store.get_model_version_by_alias("boneseg", "challenger").version) == v2
    v3 = version(store, tmp_path, 0.95, splits="bbb")  # better, but on other splits: not comparable
    ok, why = gate(store, "boneseg", v3)
    assert not ok and "other splits" in why and "boneseg promote VERSION" in why and champion(store) == v1
    v4 = version(store, tmp_path, 0.81)
    assert gate(store, "boneseg", v4)[0] and champion(store) == v4
    assert store.get_model_version("boneseg", v4).tags["promotion"] == "champion"
    # by hand: the user names the version
    params = tmp_path / "params.yaml"
    params.write_text(f"tracking: {{uri: '{store.tracking_uri}'}}\n")
    assert cli(["--params", str(params), "promote", v3]) == 0
    assert champion(store) == v3 and "was version 4" in capsys.readouterr().out
    assert store.get_model_version("boneseg", v3).tags["promotion_reason"] == "promoted by hand (champion " \
                                                                               "was version 4)"


def test_promote_refuses_a_version_that_does_not_exist_in_one_line(store, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(f"tracking: {{uri: '{store.tracking_uri}'}}\n")
    version(store, tmp_path, 0.5)
    assert cli(["--params", str(params), "promote", "9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "models:/boneseg/9 not found" in err[0]
    assert cli(["--params", str(params), "promote", "latest"]) == 2
    assert "expected a version number" in capsys.readouterr().err
