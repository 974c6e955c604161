"""The sweep with real Ray (local, and a two-node cluster on 127.0.0.1) and real MLflow
(sqlite file, and an `mlflow server` process); faults are injected, nothing is mocked."""
import argparse
import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest

from boneseg.core.config import VARIANTS, to_yaml
from boneseg.errors import ConfigError
from boneseg.sweep.driver import run_sweep

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
FAULTS = Path(__file__).resolve().parents[1] / "faults"  # the injector, on the trials' PYTHONPATH only


def inject_fault(monkeypatch, spec: str) -> None:
    """One trial fails once as `spec` says (tests/faults/fault_injector.py): the Ray
    workers started after this pick it up through sitecustomize.py."""
    monkeypatch.setenv("BONESEG_INJECT_FAULT", spec)
    path = [str(FAULTS), os.environ.get("PYTHONPATH")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in path if p))


def sweep_cfg(base, tmp_path, variants=("multi-random", "single-random"), epochs=1, uri=None, val_every=1,
              **sweep):
    s = {
        "variants": list(variants),
        "storage_path": str(tmp_path / "ray"),
        "metrics_file": str(tmp_path / "metrics.json"),
        "folds_file": str(tmp_path / "folds.csv"),
        "curves_file": str(tmp_path / "curves.json"),
        "log_model": False,
        "model_dir": str(tmp_path / "model"),
        "trials_dir": str(tmp_path / "trials"),
        **sweep,
    }
    return base.model_copy(update={
        "sweep": base.sweep.model_copy(update=s),
        "report": base.report.model_copy(update={"out_dir": str(tmp_path / "report"), "bootstrap": 500}),
        "train": base.train.model_copy(update={"epochs": epochs, "out_dir": str(tmp_path / "train"),
                                               "val_every": val_every}),
        "tracking": base.tracking.model_copy(update={"uri": uri or f"sqlite:///{tmp_path / 'mlflow.db'}"})})


def runs_by_level(uri):
    c = mlflow.MlflowClient(uri)
    exp = c.get_experiment_by_name("boneseg")
    out = {}
    for r in c.search_runs([exp.experiment_id]):
        out.setdefault(r.data.tags.get("level", "parent"), []).append(r)
    return c, out


def check_tree(uri, variants, n_folds):
    c, runs = runs_by_level(uri)
    assert len(runs["parent"]) == 1 and len(runs["variant"]) == len(variants)
    assert len(runs["fold"]) == len(variants) * n_folds
    assert {r.info.status for rs in runs.values() for r in rs} == {"FINISHED"}
    parent = runs["parent"][0].info.run_id
    assert sorted(r.data.tags["variant"] for r in runs["variant"]) == sorted(variants)
    for variant_run in runs["variant"]:
        variant = variant_run.data.tags["variant"]
        assert variant_run.data.tags["mlflow.parentRunId"] == parent
        folds = [r for r in runs["fold"] if r.data.tags["mlflow.parentRunId"] == variant_run.info.run_id]
        assert sorted(int(f.data.params["fold"]) for f in folds) == list(range(n_folds))
        classes, init = VARIANTS[variant].classes, VARIANTS[variant].init
        for f in folds:
            assert (f.data.params["variant"], f.data.tags["variant"], f.data.params["classes"]) == \
                (variant, variant, classes)
            assert f.data.params["init"] == ("random" if init == "random" else "pretrained:thigh")
        assert variant_run.data.metrics["bone_dice_mean"] == pytest.approx(
            np.mean([f.data.metrics["bone_dice"] for f in folds]))
    return c, runs


def assert_no_tune_errors(text: str) -> None:
    """A sweep logs no ERROR line (Tune logs failed experiment-state uploads this way)."""
    bad = [line for line in text.splitlines() if " ERROR " in line or line.startswith("ERROR")]
    assert not bad, "\n".join(bad[:5])


@pytest.fixture
def own_tmp(monkeypatch):
    """This test's own temp folder for Ray's session files and the trials' scratch (short:
    Ray's socket paths must stay under 108 characters), instead of the machine's /tmp."""
    d = Path(tempfile.mkdtemp(prefix="bs", dir="/tmp"))
    monkeypatch.setenv("RAY_TMPDIR", str(d))
    monkeypatch.setenv("TMPDIR", str(d))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_tiny_sweep_tree_metrics_and_dvc_outputs(tiny_pipeline, tmp_path, monkeypatch, own_tmp, capfd):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = sweep_cfg(tiny_pipeline, tmp_path, log_model=True)
    table = run_sweep(cfg)
    out = capfd.readouterr()
    assert_no_tune_errors(out.out + out.err)
    assert out.out.count("sweep: done") == 4
    assert list(own_tmp.glob("ray/session_*")), "Ray did not use this test's temp folder"
    # Ray's session folder (never cleaned by Ray) and the trials' scratch hold no model or checkpoint
    assert not list(own_tmp.rglob("*.pt")) and not list(own_tmp.glob(f"boneseg-scratch-{os.getuid()}/*"))
    c, runs = check_tree(cfg.tracking.uri, cfg.sweep.variants, 2)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for variant in cfg.sweep.variants:
        assert metrics[variant]["bone_dice_mean"] == pytest.approx(table[variant]["bone_dice_mean"], abs=1e-6)
        assert metrics[variant]["n_folds"] == 2
    assert metrics["best_variant"] in cfg.sweep.variants
    lines = (tmp_path / "folds.csv").read_text().splitlines()
    assert lines[0] == "variant,fold,case,bone_dice" and len(lines) == 1 + 2 * 4  # 2 variants x 4 val cases
    val = {c for f in json.loads(Path(cfg.data.splits_file).read_text())["folds"] for c in f["val"]}
    assert {line.split(",")[2] for line in lines[1:]} == val
    parent = runs["parent"][0]
    assert parent.data.tags["git_commit"] and "ray_storage_path" in parent.data.tags
    assert parent.data.tags["best_variant"] == metrics["best_variant"]
    assert {a.path for a in c.list_artifacts(parent.info.run_id)} >= {"variants.md", "variants.csv"}
    fold = runs["fold"][0]
    assert [m.step for m in c.get_metric_history(fold.info.run_id, "val_bone_dice")] == [0]
    assert "summary.json" in {a.path for a in c.list_artifacts(fold.info.run_id)}

    # the best variant's fold models: on disk for DVC, and registered in MLflow
    best = metrics["best_variant"]
    manifest = json.loads((tmp_path / "model" / "boneseg.json").read_text())
    assert manifest["variant"] == best and manifest["folds"] == [0, 1]
    assert manifest["scores"]["bone_dice_mean"] == pytest.approx(metrics[best]["bone_dice_mean"], abs=1e-6)
    index = json.loads((tmp_path / "trials" / "index.json").read_text())
    assert index["registered_model"] == "models:/boneseg/1" and index["best_variant"] == best
    assert manifest["preprocessing"] == {"image_size": 32, "window": [-200.0, 1500.0]}
    assert sorted(p.name for p in (tmp_path / "model").glob("fold*.pt")) == ["fold0.pt", "fold1.pt"]
    mv = c.get_model_version("boneseg", "1")
    assert (
        mv.tags["variant"] == best and mv.tags["folds"] == "0,1" and mv.tags["sweep_id"] == parent.info.run_id
    )
    assert parent.data.tags["registered_model"] == "models:/boneseg/1"
    assert mv.tags["onnx"] == ("fp32+int8" if manifest["onnx"]["int8"]["offered"] else "fp32")
    # the first scored version passes the promotion gate; its splits are the ones it was scored on
    assert str(c.get_model_version_by_alias("boneseg", "champion").version) == "1"
    assert mv.tags["promotion"] == "champion" and mv.tags["splits_md5"] == manifest["splits_md5"] != ""
    assert sorted(p.parent.name for p in (tmp_path / "trials" / best).glob("fold*/history.json")) == [
        "fold0",
        "fold1",
    ]
    splits = json.loads(Path(cfg.data.splits_file).read_text())
    for variant in cfg.sweep.variants:  # each trial's maps of the cases it did not train on, through Ray
        for k, f in enumerate(splits["folds"]):
            folder = tmp_path / "trials" / variant / f"fold{k}" / "predictions"
            got = sorted(p.name for p in folder.iterdir())
            assert got == sorted(f"{case}.nii.gz" for case in f["val"] + splits["test"])
    check_outputs_are_documented(tmp_path, metrics, manifest, c, fold)
    check_segment_and_report(cfg, tmp_path, c, parent.info.run_id, metrics, monkeypatch)


def check_outputs_are_documented(tmp_path, metrics, manifest, client, fold_run):
    """docs/reference/outputs.md lists exactly the keys the sweep wrote."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from outputs_doc import documented_keys

    doc = documented_keys()
    summary = json.loads(next((tmp_path / "trials").glob("*/fold0/summary.json")).read_text())
    written = {
        "metrics.variant": {k for v, m in metrics.items() if v != "best_variant" for k in m},
        "folds.columns": set((tmp_path / "folds.csv").read_text().splitlines()[0].split(",")),
        "summary": set(summary),
        "summary.mean": set(summary["mean"]),
        "summary.case": {k for row in summary["metric_per_case"] for k in row},
        "summary.timing": set(summary["timing"]),
        "curves": {k for r in json.loads((tmp_path / "curves.json").read_text()) for k in r},
        "model": set(manifest),
        "mlflow.fold": {k for k in client.get_run(fold_run.info.run_id).data.metrics
                        if not k.startswith(("val_", "train_")) and k not in ("lr", "images_per_s")},
    }
    assert set(doc) == set(written), "docs/reference/outputs.md: tables and checks differ"
    for name, keys in written.items():
        extra, missing = sorted(doc[name] - keys), sorted(keys - doc[name])
        assert doc[name] == keys, f"docs/reference/outputs.md [{name}]: documented {extra} not written, " \
                                  f"written {missing} not documented"


def check_segment_and_report(cfg, tmp_path, client, parent_id, metrics, monkeypatch):
    """`segment --model models:/boneseg/1` == the same fold models from results/model or the
    sweep's run id; the output lies on the CT's grid; the report quotes metrics.json."""
    import nibabel as nib

    from boneseg.cli import main as cli
    from boneseg.stages.report import main as report_main

    monkeypatch.setenv("BONESEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cfg.tracking.uri)
    params = tmp_path / "params.yaml"
    params.write_text(to_yaml(cfg))
    ct = sorted(Path(cfg.data.raw_dir).glob("*/abd*/ct.nii.gz"))[0]
    import hashlib

    from boneseg.tracking.registry import resolve_model

    def digests(paths):
        return sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in paths)

    refs = {"registry": "models:/boneseg@champion", "folder": str(tmp_path / "model"), "run": parent_id}
    local = digests((tmp_path / "model").glob("fold*.pt"))
    for name, ref in refs.items():  # the very same fold models, whichever way they are named
        assert digests(resolve_model(ref, cfg.tracking.uri)) == local, name
    outs = {}
    # registry, folder and the sweep's run id (its best variant's `ensemble` artifact) carry the
    # ONNX export (infer.backend auto: int8 ONNX Runtime when offered; at these 32 px slices PyTorch
    # otherwise) and the postprocessing rule; --backend torch runs the fold*.pt, with the same rule
    runs = [*((n, r, "auto") for n, r in refs.items()), ("torch", refs["folder"], "torch")]
    for name, ref, backend in runs:
        out = tmp_path / "seg" / name / "seg.nii.gz"
        assert cli(["--params", str(params), "segment", "--input", str(ct), "--output", str(out),
                    "--model", ref, "--backend", backend]) == 0
        outs[name] = nib.load(str(out))
    onnx = json.loads((tmp_path / "model" / "boneseg.json").read_text())["onnx"]
    logged = client.get_model_version("boneseg", "1").source.removeprefix("models:/")  # a pyfunc LoggedModel
    registered = {Path(a.path).name for a in client.list_logged_model_artifacts(logged, "data/ensemble")}
    for fold, files in onnx["files"].items():  # the registered version carries the exports too
        assert {f["file"] for f in files.values()} <= registered
        assert onnx["parity"][fold]["max_abs_logit_diff"] <= 1e-4
    src = nib.load(str(ct))
    assert outs["registry"].shape == src.shape
    np.testing.assert_allclose(outs["registry"].affine, src.affine, atol=1e-5)
    a = np.asarray(outs["registry"].dataobj)
    assert np.array_equal(a, np.asarray(outs["folder"].dataobj))
    assert np.array_equal(a, np.asarray(outs["run"].dataobj))
    if not onnx["int8"]["offered"]:  # fp32 ONNX Runtime: the same labels as PyTorch
        assert np.array_equal(a, np.asarray(outs["torch"].dataobj))
    assert (tmp_path / "seg" / "registry" / "itksnap_labels.txt").is_file()

    curve = {"all_labels": 0.9, "orders": {  # bench/labelling_curve.py --json beside metrics.json
        "case id": [{"cases": 2, "voxels": 500, "bone_dice": 0.7, "mean_dice": 0.5},
                    {"cases": 4, "voxels": 900, "bone_dice": 0.9, "mean_dice": 0.6}],
        "disagreement": [{"cases": 2, "voxels": 500, "bone_dice": 0.7, "mean_dice": 0.5},
                         {"cases": 3, "voxels": 650, "bone_dice": 0.895, "mean_dice": 0.6}]}}
    (Path(cfg.sweep.metrics_file).parent / "labelling_curve.json").write_text(json.dumps(curve))
    assert report_main(argparse.Namespace(address=None), cfg) == 0
    page = (tmp_path / "report" / "index.html").read_text()
    assert "What to correct next" in page and "boneseg correct next" in page  # no worklist: how to rank
    assert (tmp_path / "report" / "fig_labelling_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "report" / "report.json").read_text())["labelling_curve"]["reached"] == {
        "case id": [4, 900], "disagreement": [3, 650]}  # first round within 0.01 of the all-labels model
    for variant in cfg.sweep.variants:
        assert f"{metrics[variant]['bone_dice_mean']:.4f}" in page
        assert f"{metrics[variant]['bone_dice_std']:.4f}" in page
    for f in ("fig_folds.png", "fig_curves.png", "fig_overlays.png"):
        assert (tmp_path / "report" / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["metrics"] == metrics and saved["figures"] == [
        "fig_folds.png",
        "fig_curves.png",
        "fig_overlays.png",
    ]
    rows = [line.split(",") for line in (tmp_path / "folds.csv").read_text().splitlines()[1:]]
    for variant in cfg.sweep.variants:  # each variant's CI is over exactly its rows of folds.csv
        dice = [float(r[3]) for r in rows if r[0] == variant]
        st = saved["statistics"]["variants"][variant]
        assert st["n_cases"] == len(dice) and st["case_mean"] == pytest.approx(np.nanmean(dice))
    (d,) = saved["statistics"]["differences"]
    assert (d["a"], d["b"]) == tuple(cfg.sweep.variants) and d["n_cases"] == 4
    best_rows = {r[2] for r in rows if r[0] == metrics["best_variant"]}
    assert [o["kind"] for o in saved["overlays"]] == ["best", "worst"]
    assert {o["case"] for o in saved["overlays"]} <= best_rows
    for o in saved["overlays"]:  # the figure draws the very map that was scored: its counts give the Dice
        assert 2 * o["tp"] / (2 * o["tp"] + o["fp"] + o["fn"]) == pytest.approx(o["dice"], abs=1e-6)
    assert "report/index.html" in {a.path for a in client.list_artifacts(parent_id, "report")}
    pp = json.loads((tmp_path / "model" / "boneseg.json").read_text())["postprocess"]
    val_cases = [r for r in rows if r[0] == metrics["best_variant"]]
    assert pp["cases"] == len(val_cases)  # every out-of-fold validation map, and nothing else
    bone = pp["per_class"]["bone"]
    assert pp["bone_dice_before"] == bone["none"] and pp["bone_dice_after"] >= pp["bone_dice_before"]
    assert (bone["kept"] is None) == ("1" not in pp["rule"])
    assert saved["postprocess"]["chosen"] and html.escape(saved["postprocess"]["description"]) in page
    backends = saved["backends"]  # the ONNX export's parity and int8 check, quoted from boneseg.json
    assert backends["exported"] and backends["int8_offered"] == onnx["int8"]["offered"]
    assert [r["fold"] for r in backends["folds"]] == sorted(onnx["parity"])
    for r in backends["folds"]:
        assert r["max_abs_logit_diff"] == onnx["parity"][r["fold"]]["max_abs_logit_diff"] <= 1e-4
    assert "Segmentation backends" in page and ("int8 is offered" in page) == onnx["int8"]["offered"]
    effort = saved["labelling_effort"]  # the U-Net's out-of-fold proposals beside the labels QA's
    assert effort["unet_variants"] == {"unet": "multi-random", "unet-bone": "single-random"}
    assert list(effort["totals"]) == ["threshold", "filled", "unet", "unet-bone"]
    totals = effort["totals"]
    assert totals["unet"]["cases"] == totals["filled"]["cases"] == len(effort["cases"]) == 5
    assert "U-Net (multi-random, out of fold)" in page


def test_preflight_reports_each_problem_in_one_line(tiny_pipeline, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = sweep_cfg(tiny_pipeline, tmp_path, variants=("multi-pretrained",), uri="http://127.0.0.1:9")
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"slices_dir": str(tmp_path / "none")})})
    with pytest.raises(ConfigError) as err:
        run_sweep(cfg)
    text = str(err.value)
    assert "no trial was started" in text
    assert "data:" in text and "encoder weights:" in text and "boneseg pretrain" in text and "MLflow:" in text


@pytest.mark.parametrize("kind", ["raise", "sigkill"])
def test_failed_trial_is_retried_from_its_checkpoint_without_duplicates(
    kind, tiny_pipeline, tmp_path, monkeypatch, own_tmp
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    marker = tmp_path / "fault.done"
    inject_fault(monkeypatch, f"{kind}:multi-random:0:0:{marker}")
    cfg = sweep_cfg(tiny_pipeline, tmp_path, variants=("multi-random",), epochs=2)
    run_sweep(cfg)
    assert marker.read_text() == kind  # the fault did happen
    c, runs = check_tree(cfg.tracking.uri, ["multi-random"], 2)
    run = next(r for r in runs["fold"] if r.data.tags["fold"] == "0")
    steps = [m.step for m in c.get_metric_history(run.info.run_id, "val_bone_dice")]
    assert steps == [0, 1]  # epoch 0 logged once
    assert run.data.tags["resumed_from_epoch"] == "1"  # the retry continued from the epoch-0 checkpoint
    summary = json.loads(c.download_artifacts(run.info.run_id, "summary.json", str(tmp_path)) and
                         (tmp_path / "summary.json").read_text())
    assert summary["fold"] == 0
    # a SIGKILLed worker cannot remove its scratch folder (checkpoint.pt): the retry removed it
    assert not list(own_tmp.glob(f"boneseg-scratch-{os.getuid()}/*"))


def test_damaged_or_planted_resume_points_never_block_their_trials(tiny_pipeline, tmp_path, monkeypatch,
                                                                    own_tmp, capfd):
    """After epoch 0, fold 0's resume point is cut in half and fold 1's is replaced by a pickle
    that would run code; both trials then fail. Each retry discards its resume point with a
    warning naming it and trains afresh: every trial finishes once and the payload never runs."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cut, planted = tmp_path / "cut.done", tmp_path / "plant.done"
    inject_fault(monkeypatch, f"truncate:multi-random:0:0:{cut},plant:multi-random:1:0:{planted}")
    monkeypatch.setenv("BONESEG_FAULT_STORAGE", str(tmp_path / "ray"))
    cfg = sweep_cfg(tiny_pipeline, tmp_path, variants=("multi-random",), epochs=2)
    run_sweep(cfg)
    assert cut.read_text() == "truncate" and planted.read_text() == "plant"  # both faults happened
    assert not (tmp_path / "plant.done.pwned").exists()  # the planted pickle never ran
    c, runs = check_tree(cfg.tracking.uri, ["multi-random"], 2)  # each (variant, fold) FINISHED once
    for r in runs["fold"]:
        assert r.data.tags["resumed_from_epoch"] == "0"  # started afresh, not from the bad point
        assert [m.step for m in c.get_metric_history(r.info.run_id, "val_bone_dice")] == [0, 1]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["multi-random"]["n_folds"] == 2
    err = capfd.readouterr()
    log = err.out + err.err + "".join(p.read_text(errors="replace") for p in own_tmp.rglob("worker-*.err"))
    assert "resume point" in log and "multi-random-fold0.pt" in log and "multi-random-fold1.pt" in log


def test_validation_every_k_epochs_checkpoints_there_and_a_retry_resumes_from_it(tiny_pipeline, tmp_path,
                                                                                 monkeypatch):
    """val_every=2 over 3 epochs: validation (and Tune checkpoints) after epochs 1 and 2 only; a
    SIGKILL during epoch 2 resumes from the epoch-1 checkpoint, and no epoch is logged twice."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    marker = tmp_path / "fault.done"
    inject_fault(monkeypatch, f"sigkill:multi-random:1:1:{marker}")
    cfg = sweep_cfg(tiny_pipeline, tmp_path, variants=("multi-random",), epochs=3, val_every=2)
    run_sweep(cfg)
    assert marker.read_text() == "sigkill"
    c, runs = check_tree(cfg.tracking.uri, ["multi-random"], 2)
    for r in runs["fold"]:
        assert [m.step for m in c.get_metric_history(r.info.run_id, "val_bone_dice")] == [1, 2]
        assert [m.step for m in c.get_metric_history(r.info.run_id, "train_loss")] == [0, 1, 2]
    run = next(r for r in runs["fold"] if r.data.tags["fold"] == "1")
    assert run.data.tags["resumed_from_epoch"] == "2"  # epoch 2 re-trained from the epoch-1 checkpoint
    hist = json.loads((tmp_path / "trials" / "multi-random" / "fold1" / "history.json").read_text())
    assert [("val_bone_dice" in h) for h in hist] == [False, True, True]
    # Tune's only checkpoint of each trial is its final result: an epoch checkpoint would be
    # deleted when the next replaced it, while a killed driver's saved state may still name it
    (exp,) = [d for d in (tmp_path / "ray").iterdir() if d.is_dir()]
    ckpts = sorted(c.relative_to(exp).as_posix() for c in exp.glob("*/checkpoint_*"))
    assert len(ckpts) == 2 and all(c.endswith("/checkpoint_000000") for c in ckpts), ckpts
    assert all((exp / c / "final.json").is_file() for c in ckpts)
    assert not list(exp.glob("resume/*"))  # each trial's resume point went with its final result


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sweep_against_an_mlflow_server(tiny_pipeline, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path}/srv.db",
                               "--artifacts-destination", str(tmp_path / "art"), "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                mlflow.MlflowClient(uri).search_experiments(max_results=1)
                break
            except Exception:
                time.sleep(1)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        cfg = sweep_cfg(tiny_pipeline, tmp_path, variants=("multi-random",), uri=uri)
        run_sweep(cfg)
        check_tree(uri, ["multi-random"], 2)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


def boneseg_cmd(params, *args):
    return [str(BIN / "boneseg"), "--params", str(params), *args]


def test_killed_driver_is_resumed_by_the_same_command(tiny_pipeline, tmp_path, own_tmp):
    cfg = sweep_cfg(tiny_pipeline, tmp_path, epochs=2)
    params = tmp_path / "params.yaml"
    params.write_text(to_yaml(cfg))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env.update(TMPDIR=str(own_tmp), RAY_TMPDIR=str(own_tmp))
    first = subprocess.Popen(boneseg_cmd(params, "sweep"), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    done_lines = []
    for line in first.stdout:  # kill the driver (and its local Ray) once one trial has finished
        if line.startswith("sweep: done"):
            done_lines.append(line)
            break
    os.killpg(first.pid, signal.SIGKILL)
    rest = first.stdout.read()
    first.wait(30)
    assert done_lines, "no trial finished before the kill"
    assert_no_tune_errors(rest)
    left = list(own_tmp.glob(f"boneseg-scratch-{os.getuid()}/*"))
    assert left, "the killed trials left no scratch folder (nothing for the reaper to test)"
    second = subprocess.run(
        boneseg_cmd(params, "sweep"), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    resumed = [line for line in second.stdout.splitlines() if "resuming" in line]
    assert len(resumed) == 1 and re.search(r": [1-3] of 4 trials finished and kept; \d continue", resumed[0])
    # the trials that had not started have no results yet: Tune's complaint goes to the log only
    assert "Failed to fetch metrics" not in second.stdout + second.stderr
    assert "FileNotFoundError" not in second.stdout + second.stderr
    assert list(own_tmp.glob("**/logs/boneseg-driver.log"))  # where such warnings go instead
    assert_no_tune_errors(second.stdout + second.stderr)
    finished = done_lines[0].split()[2].rstrip(":")
    assert f"epoch   {finished} " not in second.stdout  # the finished trial trained nothing again
    check_tree(cfg.tracking.uri, cfg.sweep.variants, 2)  # still one tree, nothing duplicated
    # the new trials removed the killed ones' scratch
    assert not list(own_tmp.glob(f"boneseg-scratch-{os.getuid()}/*"))


def test_two_node_cluster_runs_trials_on_both_nodes(tiny_pipeline, tmp_path):
    port = free_port()
    tmp_ray = Path("/tmp") / f"bsray{port}"  # short: Ray's socket paths must stay under 108 chars
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    # token authentication (Ray 2.59+), with this test's own token: every node and the driver share it
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=os.urandom(16).hex())
    ray = str(BIN / "ray")
    try:
        subprocess.run(
            [
                ray,
                "start",
                "--head",
                "--port",
                str(port),
                "--num-cpus",
                "1",
                "--temp-dir",
                str(tmp_ray),
                "--include-dashboard",
                "false",
                "--disable-usage-stats",
            ],
            check=True,
            env=env,
            capture_output=True,
            timeout=120,
        )
        subprocess.run([ray, "start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1",
                        "--disable-usage-stats"], check=True, env=env, capture_output=True, timeout=120)
        cfg = sweep_cfg(tiny_pipeline, tmp_path, variants=("multi-random",))
        params = tmp_path / "params.yaml"
        params.write_text(to_yaml(cfg))
        r = subprocess.run(
            boneseg_cmd(params, "sweep", "--address", f"127.0.0.1:{port}"),
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        _, runs = check_tree(cfg.tracking.uri, ["multi-random"], 2)
        assert len({f.data.tags["ray_node_id"] for f in runs["fold"]}) == 2

        # the data stages' cases as Ray tasks on both nodes (the project on a shared filesystem:
        # here both nodes see tmp_path), byte-identical to the local run's outputs
        data = cfg.data.model_copy(update={"labels_dir": str(tmp_path / "labels"),
                                           "slices_dir": str(tmp_path / "slices")})
        params.write_text(to_yaml(cfg.model_copy(update={"data": data})))
        address = f"127.0.0.1:{port}"
        for cmd, extra in ((["labels"], {"RAY_ADDRESS": address}), (["slices", "--address", address], {})):
            r = subprocess.run(boneseg_cmd(params, *cmd), cwd=tmp_path, capture_output=True, text=True,
                               timeout=300, env={**env, **extra})
            assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
            assert "(Ray tasks on 2 nodes) ->" in r.stdout, r.stdout
        for ours, local in ((data.labels_dir, tiny_pipeline.data.labels_dir),
                            (data.slices_dir, tiny_pipeline.data.slices_dir)):
            files = sorted(p.relative_to(local) for p in Path(local).rglob("*") if p.is_file())
            assert files == sorted(p.relative_to(ours) for p in Path(ours).rglob("*") if p.is_file())
            assert all((Path(ours) / f).read_bytes() == (Path(local) / f).read_bytes() for f in files)
    finally:
        stop_processes_under(tmp_ray)


def test_a_worker_node_that_dies_mid_sweep_has_its_trial_retried_on_the_survivor(tiny_pipeline, tmp_path):
    """Two nodes on 127.0.0.1, one trial each; once the first epoch is reported, the worker
    node is SIGKILLed (its raylet and everything under it, as a lost machine). Its trial is
    retried on the head from its resume point: every fold FINISHED once, results complete."""
    import psutil

    port = free_port()
    tmp_ray = Path("/tmp") / f"bsdie{port}"
    worker = f"bsworker{port}"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=os.urandom(16).hex())
    ray = str(BIN / "ray")
    try:
        subprocess.run([ray, "start", "--head", "--port", str(port), "--num-cpus", "1", "--temp-dir",
                        str(tmp_ray), "--include-dashboard", "false", "--disable-usage-stats"],
                       check=True, env=env, capture_output=True, timeout=120)
        subprocess.run([ray, "start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1", "--node-name",
                        worker, "--disable-usage-stats"],
                       check=True, env=env, capture_output=True, timeout=120)
        (raylet,) = [p for p in psutil.process_iter(["cmdline"])
                     if "raylet" in " ".join(p.info["cmdline"] or [])[:200]
                     and f"--node-name={worker}" in (p.info["cmdline"] or [])]
        cfg = sweep_cfg(tiny_pipeline, tmp_path, variants=("multi-random",), epochs=3)
        params = tmp_path / "params.yaml"
        params.write_text(to_yaml(cfg))
        driver = subprocess.Popen(boneseg_cmd(params, "sweep", "--address", f"127.0.0.1:{port}"),
                                  cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
        out, killed_at = [], None
        for line in driver.stdout:
            out.append(line)
            if line.startswith("sweep: epoch") and killed_at is None:
                node = [raylet, *raylet.children(recursive=True)]
                for p in node:
                    p.kill()
                psutil.wait_procs(node, timeout=15)
                killed_at = time.monotonic()
        rc = driver.wait(600)
        text = "".join(out)
        assert killed_at is not None and not raylet.is_running()
        assert rc == 0, text[-4000:]
        print(f"\nworker node lost: the sweep finished {time.monotonic() - killed_at:.0f} s after the kill")
        c, runs = check_tree(cfg.tracking.uri, ["multi-random"], 2)  # each fold FINISHED once
        assert len({f.data.tags["ray_node_id"] for f in runs["fold"]}) == 1  # both ended on the survivor
        for r in runs["fold"]:
            assert [m.step for m in c.get_metric_history(r.info.run_id, "val_bone_dice")] == [0, 1, 2]
        assert json.loads((tmp_path / "metrics.json").read_text())["multi-random"]["n_folds"] == 2
        assert "retry   multi-random/fold" in text
        assert "Traceback" not in text and "tracebacks: " in text  # the traceback is in the log
    finally:
        stop_processes_under(tmp_ray)


def stop_processes_under(marker: Path) -> None:
    """Stop only the Ray processes this test started (their command lines name its temp dir)."""
    import psutil

    mine = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(str(marker) in part for part in (p.info["cmdline"] or [])):
                mine.append(p)
        except psutil.Error:
            pass
    for p in mine:
        p.terminate()
    psutil.wait_procs(mine, timeout=15)
    for p in mine:
        if p.is_running():
            p.kill()


def test_four_quarter_gpu_trials_share_one_logical_gpu_and_fall_back_to_cpu(tiny_pipeline, tmp_path):
    """sweep.gpus_per_trial 0.25 on a node with one (logical, CUDA-less) GPU: four trials at
    once, each on half a CPU thread share, each saying once that it runs on CPU."""
    port = free_port()
    tmp_ray = Path("/tmp") / f"bsgpu{port}"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=os.urandom(16).hex())
    try:
        head = [str(BIN / "ray"), "start", "--head", "--port", str(port), "--num-cpus", "2",
                "--num-gpus", "1",
                "--temp-dir", str(tmp_ray), "--include-dashboard", "false", "--disable-usage-stats"]
        subprocess.run(head, check=True, env=env, capture_output=True, timeout=120)
        cfg = sweep_cfg(tiny_pipeline, tmp_path, variants=("multi-random", "single-random"),
                        cpus_per_trial=0.5, gpus_per_trial=0.25)
        params = tmp_path / "params.yaml"
        params.write_text(to_yaml(cfg))
        r = subprocess.run(boneseg_cmd(params, "sweep", "--address", f"127.0.0.1:{port}"), cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "4 trials, 0.5 CPU / 0.25 GPU each" in r.stdout
        c, runs = check_tree(cfg.tracking.uri, list(cfg.sweep.variants), 2)
        folds = runs["fold"]
        assert {f.data.params["device"] for f in folds} == {"cpu"}
        notes = [ln for ln in r.stdout.splitlines() if "sees no CUDA device; it runs on CPU" in ln]
        assert len(notes) == 4 and len({ln.split()[2] for ln in notes}) == 4  # once per trial
        # all four ran at the same time: every trial started before the first one ended
        assert max(f.info.start_time for f in folds) < min(f.info.end_time for f in folds)
    finally:
        stop_processes_under(tmp_ray)
