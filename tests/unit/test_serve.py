"""The registered version is an MLflow pyfunc: `mlflow models serve -m models:/boneseg@champion
--env-manager local` serves it on 127.0.0.1, and a CT sent to it (bytes or path) comes back
labelled exactly as `boneseg segment` labels it; requests without the token get nothing."""
from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest
from test_segment import RAS, phantom, save_model

from boneseg.cli import main as cli
from boneseg.core.imaging.nifti import Volume, save_volume
from boneseg.tracking.registry import gate, register_model, resolve_model
from boneseg.tracking.served import TOKEN_ENV

TOKEN = "t0k3n-" + "x" * 26


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri, "BONESEG_CACHE": str(root / "cache")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    cwd = os.getcwd()
    os.chdir(root)  # the default artifact root ./mlartifacts lands in the test's folder
    try:
        models = root / "model"
        models.mkdir()
        for k in range(2):
            save_model(models / f"fold{k}.pt", seed=k, fold=k, steps=30)  # 20: fold 0 may find no bone yet
        manifest = {"variant": "multi-random", "folds": [0, 1], "classes": "multi", "sweep_run_id": "s",
                    "scores": {"bone_dice_mean": 0.9, "bone_dice_std": 0.01}, "splits_md5": "aaa",
                    "preprocessing": {"image_size": 32, "window": [-200.0, 1500.0]},
                    "postprocess": {"rule": {"1": {"op": "largest"}}, "description": "bone: largest"},
                    "infer": {"backend": "auto", "precision": "auto", "batch_size": 8, "postprocess": True}}
        (models / "boneseg.json").write_text(json.dumps(manifest))
        client = mlflow.MlflowClient(uri)
        run = client.create_run(client.create_experiment("serve"))
        version = register_model(client, "boneseg", run.info.run_id, models, manifest).rsplit("/", 1)[1]
        assert gate(client, "boneseg", version)[0]
        ct = root / "ct.nii.gz"
        save_volume(Volume(phantom().astype(np.int16), RAS), ct)
        params = root / "params.yaml"
        params.write_text(json.dumps({"tracking": {"uri": uri}}))
        seg = root / "seg.nii.gz"
        assert cli(["--params", str(params), "segment", "--input", str(ct), "--output", str(seg),
                    "--model", "models:/boneseg@champion"]) == 0
        yield {"root": root, "uri": uri, "client": client, "run": run.info.run_id, "ct": ct, "seg": seg,
               "models": models}
    finally:
        os.chdir(cwd)
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def test_the_version_is_a_pyfunc_logged_model_of_the_variant_run_with_a_signature(registered):
    client = registered["client"]
    mv = client.get_model_version_by_alias("boneseg", "champion")
    assert mv.source.startswith("models:/m-")
    info = mlflow.models.get_model_info("models:/boneseg@champion")
    assert info.flavors["python_function"]["loader_module"] == "boneseg.tracking.served"
    assert "cloudpickle" not in json.dumps(info.flavors)  # loaded from the installed package, not unpickled
    assert [c["name"] for c in info.signature.inputs.to_dict()] == ["nifti", "path"]
    assert [c["name"] for c in info.signature.outputs.to_dict()] == ["labels", "bone_ml"]
    assert info.signature.params.to_dict()[0]["name"] == "token"
    logged = client.get_logged_model(mv.source.removeprefix("models:/"))
    assert logged.source_run_id == registered["run"]
    # in the run's own experiment, not the default one (which a team server's user may only read)
    assert logged.experiment_id == client.get_run(registered["run"]).info.experiment_id != "0"
    assert client.get_run(registered["run"]).data.tags["ensemble_model"] == mv.source
    # segment, the run id and the registry reach the very same fold models
    local = sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in registered["models"].glob("fold*.pt"))
    for ref in ("models:/boneseg@champion", f"models:/boneseg/{mv.version}"):
        got = resolve_model(ref, registered["uri"])
        assert sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in got) == local


def test_the_model_does_not_load_without_a_token(registered, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(Exception, match=f"{TOKEN_ENV} is not set"):
        mlflow.pyfunc.load_model("models:/boneseg@champion")


def post(port: int, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def labels_of(answer: dict) -> nib.Nifti1Image:
    raw = base64.b64decode(answer["predictions"][0]["labels"])
    return nib.Nifti1Image.from_bytes(gzip.decompress(raw))


@pytest.mark.slow
def test_mlflow_models_serve_labels_a_ct_as_segment_does_and_refuses_without_the_token(registered):
    port = free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    env = {**os.environ, "MLFLOW_TRACKING_URI": registered["uri"], TOKEN_ENV: TOKEN,
           "PATH": f"{mlflow_bin.parent}{os.pathsep}{os.environ['PATH']}",  # an activated venv: uvicorn
           "BONESEG_CACHE": str(registered["root"] / "cache")}
    log = open(registered["root"] / "serve.log", "w")
    server = subprocess.Popen([str(mlflow_bin), "models", "serve", "-m", "models:/boneseg@champion",
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                              env=env, cwd=registered["root"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while True:
            assert server.poll() is None, (registered["root"] / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, "the server did not answer /ping in 180 s"
            time.sleep(1)
        ct_bytes = registered["ct"].read_bytes()
        frame = {"columns": ["nifti"], "data": [[base64.b64encode(ct_bytes).decode()]]}
        want = nib.load(str(registered["seg"]))
        for params in ({}, {"token": "wrong-" + "y" * 26}):  # no token, a wrong one: nothing is read
            status, answer = post(port, {"dataframe_split": frame, "params": params})
            assert status == 403, answer
            assert "predictions" not in answer and "token" in answer["message"]
        t0 = time.perf_counter()
        status, answer = post(port, {"dataframe_split": frame, "params": {"token": TOKEN}})
        seconds = time.perf_counter() - t0
        assert status == 200, answer
        got = labels_of(answer)
        assert got.shape == want.shape and seconds > 0
        np.testing.assert_allclose(got.affine, want.affine, atol=1e-5)
        assert np.array_equal(np.asarray(got.dataobj), np.asarray(want.dataobj))
        assert (np.asarray(got.dataobj) == 1).any()
        by_path = {"columns": ["path"], "data": [[f"file://{registered['ct']}"]]}
        status, answer = post(port, {"dataframe_split": by_path, "params": {"token": TOKEN}})
        assert status == 200
        assert np.array_equal(np.asarray(labels_of(answer).dataobj), np.asarray(want.dataobj))
        junk = {"columns": ["nifti"], "data": [[base64.b64encode(b"\x1f\x8bnot a ct" * 10).decode()]]}
        status, answer = post(port, {"dataframe_split": junk, "params": {"token": TOKEN}})
        assert status == 400 and "boneseg: row 0:" in answer["message"]
        assert "Traceback" not in json.dumps(answer)
        assert "boneseg-serve-" not in answer["message"]  # the server's temporary paths stay inside
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
