"""The ONNX Runtime backend: export parity of trained fold models, the int8 check and its
calibration cases, and the fallbacks and refusals for missing, damaged or unrunnable
ONNX files."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from boneseg.cli import main as cli_main
from boneseg.core.data.preprocess import stack_25d
from boneseg.core.engine.export import calibration_batches, export_fold_models, int8_check
from boneseg.core.engine.training import fit, fold_cases
from boneseg.core.imaging.nifti import load_labels
from boneseg.core.inference.folder import segment_files
from boneseg.core.inference.onnxrt import OPSET, OnnxUnusable, OrtNet, quantize_int8, sha256_of
from boneseg.core.inference.predict import ModelRequest, find_checkpoints
from boneseg.core.layout import SLICE_IMAGE
from boneseg.errors import BonesegError, DataError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def exported(tiny_pipeline, tmp_path_factory):
    """The two fold models of a tiny trained variant, exported as the sweep does."""
    tc = tiny_pipeline.train.model_copy(update={"epochs": 12, "lr": 1e-2, "val_every": 12})
    cfg = tiny_pipeline.model_copy(update={"train": tc})  # long enough to find the bone
    folder = tmp_path_factory.mktemp("model")
    for k in range(2):
        res = fit(cfg, "multi-random", k, tmp_path_factory.mktemp(f"trial{k}"), resume=False)
        shutil.copy2(Path(res.out_dir) / "model.pt", folder / f"fold{k}.pt")
    lines = []
    onnx_section = export_fold_models(cfg, folder, [0, 1], lines.append)
    (folder / "boneseg.json").write_text(json.dumps({"folds": [0, 1], "onnx": onnx_section}))
    return cfg, folder, onnx_section, lines


def ct_of(cfg) -> Path:
    return sorted(Path(cfg.data.raw_dir).glob("abdomen/*/ct.nii.gz"))[0]


def seg(cfg, folder, out, **kw) -> np.ndarray:
    req = ModelRequest(find_checkpoints(folder), device="cpu", **kw)
    segment_files(cfg, ct_of(cfg), out, req, progress=False)
    return load_labels(out).data


def test_fp32_export_matches_pytorch_on_trained_models(exported, tmp_path):
    cfg, folder, section, lines = exported
    assert section["opset"] == OPSET and set(section["files"]) == {"0", "1"}
    for fold, p in section["parity"].items():
        assert p["max_abs_logit_diff"] <= 1e-4, (fold, p)
        assert p["labels_differing"] == 0.0, (fold, p)
        entry = section["files"][fold]["fp32"]
        assert sha256_of(folder / entry["file"]) == entry["sha256"]
    assert len(lines) == 2 and all("ONNX fp32 max |logit diff|" in line for line in lines)
    torch_map = seg(cfg, folder, tmp_path / "torch.nii.gz", backend="torch")
    ort_map = seg(cfg, folder, tmp_path / "ort.nii.gz", backend="onnxruntime", precision="fp32")
    assert torch_map.any() and np.array_equal(torch_map, ort_map)


def test_int8_is_calibrated_on_training_cases_and_checked_on_validation(exported):
    cfg, folder, section, _ = exported
    check = section["int8"]
    for fold in (0, 1):
        train, val, test = fold_cases(cfg, fold)
        row = check["folds"][str(fold)]
        assert row["diff"] == pytest.approx(row["int8_bone_dice"] - row["fp32_bone_dice"])
        assert section["calibration"][str(fold)] == train and not set(train) & set(val + test)
    loss = np.mean([r["fp32_bone_dice"] for r in check["folds"].values()]) - \
        np.mean([r["int8_bone_dice"] for r in check["folds"].values()])
    assert check["offered"] == (loss <= cfg.infer.int8_max_dice_loss)
    assert all(("int8" in f) == check["offered"] for f in section["files"].values())


def test_calibration_slices_come_from_the_given_cases_only(tiny_pipeline):
    cfg = tiny_pipeline
    train, val, _ = fold_cases(cfg, 0)
    batches = list(calibration_batches(cfg.data.slices_dir, train, 64))
    got = np.concatenate(batches)[:, 1]  # the centre slice of each 2.5-D stack
    own = np.concatenate([np.load(Path(cfg.data.slices_dir) / c / SLICE_IMAGE) for c in train])
    other = np.concatenate([np.load(Path(cfg.data.slices_dir) / c / SLICE_IMAGE) for c in val])
    assert len(got) == min(64, len(own))
    assert all(any(np.array_equal(g, o) for o in own) for g in got)
    assert not any(np.array_equal(g, o) for g in got for o in other)


def test_int8_gate_offers_only_within_the_dice_budget():
    rows = [{"fold": 0, "fp32_bone_dice": 0.90, "int8_bone_dice": 0.899},
            {"fold": 1, "fp32_bone_dice": 0.80, "int8_bone_dice": 0.800}]
    assert int8_check(rows, 0.002)["offered"] is True
    worse = [dict(r, int8_bone_dice=r["int8_bone_dice"] - 0.01) for r in rows]
    verdict = int8_check(worse, 0.002)
    assert verdict["offered"] is False and "0.0105" in verdict["why"]
    broken = [rows[0], {"fold": 1, "fp32_bone_dice": 0.8, "int8_error": "ValueError: boom"}]
    assert int8_check(broken, 0.002)["offered"] is False


def damaged_copy(folder: Path, tmp_path: Path, how: str) -> Path:
    d = tmp_path / how
    shutil.copytree(folder, d)
    f = d / "fold0.onnx"
    if how == "flipped":
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    elif how == "missing":
        f.unlink()
    elif how == "opset":  # an exporter from the future: an opset this ONNX Runtime does not know
        m = onnx.load(str(f))
        m.opset_import[0].version = 99
        onnx.save(m, str(f))
        man = json.loads((d / "boneseg.json").read_text())
        man["onnx"]["files"]["0"]["fp32"]["sha256"] = sha256_of(f)
        (d / "boneseg.json").write_text(json.dumps(man))
    elif how == "hostile":  # a manifest that points outside the model folder
        man = json.loads((d / "boneseg.json").read_text())
        man["onnx"]["files"]["0"]["fp32"]["file"] = "../../etc/passwd"
        (d / "boneseg.json").write_text(json.dumps(man))
    return d


@pytest.mark.parametrize("how,says", [("flipped", "SHA-256 differs"), ("missing", "missing"),
                                      ("opset", "cannot run it (opset 99"), ("hostile", "not a file name")])
def test_a_bad_export_falls_back_to_pytorch_with_one_line_or_is_refused_when_forced(
        exported, tmp_path, capsys, how, says):
    cfg, folder, _, _ = exported
    d = damaged_copy(folder, tmp_path, how)
    want = seg(cfg, folder, tmp_path / "want.nii.gz", backend="torch")
    capsys.readouterr()
    got = seg(cfg, d, tmp_path / "auto.nii.gz", backend="auto", precision="fp32")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0] and "PyTorch" in err[0], err
    assert np.array_equal(got, want)
    with pytest.raises(DataError, match=re.escape(says)) as forced:
        seg(cfg, d, tmp_path / "forced.nii.gz", backend="onnxruntime", precision="fp32")
    assert "--backend torch" in str(forced.value)
    assert not (tmp_path / "forced.nii.gz").exists()


def test_ort_net_refuses_a_file_of_the_wrong_size_before_reading_it(tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(OnnxUnusable, match="bytes"):
        OrtNet(empty, None, 1, 5)


def test_cli_forced_backend_on_models_without_export_is_one_line_exit_2(tiny_pipeline, exported, tmp_path,
                                                                       capsys):
    cfg, folder, _, _ = exported
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy2(folder / "fold0.pt", bare / "fold0.pt")
    rc = cli_main(["--params", str(ROOT / "params.yaml"), "segment", "--input", str(ct_of(cfg)),
                   "--output", str(tmp_path / "out.nii.gz"), "--model", str(bare), "--device", "cpu",
                   "--backend", "onnxruntime"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no fp32 ONNX export of fold 0" in err[0]
    assert not (tmp_path / "out.nii.gz").exists()
    with pytest.raises(BonesegError, match="not offered"):
        seg(cfg, bare, tmp_path / "i8.nii.gz", backend="auto", precision="int8")


def test_int8_model_runs_and_agrees_with_fp32_on_validation_slices(exported, tmp_path):
    """Whatever the gate decided for this tiny model, its int8 model is real and close."""
    cfg, folder, _, _ = exported
    train, val, _ = fold_cases(cfg, 0)
    int8 = tmp_path / "fold0.int8.onnx"
    quantize_int8(folder / "fold0.onnx", int8, calibration_batches(cfg.data.slices_dir, train, 16))
    image = np.load(Path(cfg.data.slices_dir) / val[0] / SLICE_IMAGE)
    x = torch.from_numpy(stack_25d(image))
    a = OrtNet(folder / "fold0.onnx", None, 1, 5)(x).argmax(1)
    b = OrtNet(int8, None, 1, 5)(x).argmax(1)
    assert int8.stat().st_size < (folder / "fold0.onnx").stat().st_size / 2  # int8 weights
    assert (a == b).float().mean() > 0.9


@pytest.mark.parametrize("size,offered,want", [(160, False, "torch"), (320, False, "onnxruntime"),
                                               (160, True, "onnxruntime"), (None, False, "onnxruntime")])
def test_auto_picks_the_backend_measured_faster_for_the_models_slice_size(tmp_path, size, offered, want):
    """auto without int8: fp32 ONNX Runtime from 256 px up, PyTorch below (docs/benchmarks.md#segment)."""
    from boneseg.core.inference.backend import choose

    (tmp_path / "fold0.pt").write_bytes(b"")
    man = {"onnx": {"files": {"0": {"fp32": {"file": "fold0.onnx", "sha256": "0"}}},
                    "int8": {"offered": offered}}}
    if size is not None:  # a manifest without preprocessing: as before, ONNX Runtime
        man["preprocessing"] = {"image_size": size, "window": [-200, 1500]}
    (tmp_path / "boneseg.json").write_text(json.dumps(man))
    nets = choose([tmp_path / "fold0.pt"], "auto", "auto", "cpu", 1)
    assert (nets is None) == (want == "torch")
    assert choose([tmp_path / "fold0.pt"], "auto", "fp32", "cpu", 1) is not None  # asked for fp32 ONNX
    assert choose([tmp_path / "fold0.pt"], "auto", "auto", "cuda", 1) is None
