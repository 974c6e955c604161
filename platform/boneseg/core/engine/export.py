"""The registered fold models, exported for the ONNX Runtime backend and checked.

For each fold model (fold<k>.pt): an fp32 ONNX export (fold<k>.onnx) whose logits are
compared with PyTorch's on validation slices (the parity figures), then a static int8
model (fold<k>.int8.onnx: QDQ, per-channel weights) calibrated on slices of that fold's
own training cases only, never its validation or test cases. Both are scored on the fold's
validation cases; int8 is offered (and used by `infer.precision: auto`) only when the
fold mean bone Dice loses at most `infer.int8_max_dice_loss`, else its files are removed
and the manifest says why. The result is the manifest's "onnx" section.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from boneseg.core.config import Config
from boneseg.core.data.preprocess import stack_25d
from boneseg.core.engine.training import fold_cases
from boneseg.core.evaluation.validate import validate
from boneseg.core.inference.onnxrt import OPSET, OrtNet, export_onnx, ort_version, quantize_int8, sha256_of
from boneseg.core.inference.predict import predict_slices, read_model_file
from boneseg.core.labelmap import LabelSpec
from boneseg.core.layout import SLICE_IMAGE, load_index
from boneseg.core.networks.models import build_model
from boneseg.core.networks.runtime import Runtime
from boneseg.errors import DataError

CALIBRATION_BATCH = 8


def calibration_batches(slices_dir: str | Path, cases: list[str], n: int) -> Iterator[np.ndarray]:
    """`n` 2.5-D slices spread evenly over the cases' slices (in case order), in batches."""
    images = [np.load(Path(slices_dir) / c / SLICE_IMAGE, mmap_mode="r") for c in cases]
    sizes = np.array([im.shape[0] for im in images])
    total = int(sizes.sum())
    picks = np.unique(np.linspace(0, total - 1, min(n, total)).round().astype(int))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    which = np.searchsorted(starts, picks, side="right") - 1
    batch = []
    for case_i, z in zip(which, picks - starts[which]):
        batch.append(stack_25d(images[case_i], np.array([z]))[0])
        if len(batch) == CALIBRATION_BATCH:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def parity(net, ort_net: OrtNet, image: np.ndarray, rt: Runtime) -> dict:
    """fp32 ONNX Runtime vs PyTorch on one case's slices: max |logit difference|, and the
    share of pixels whose label differs."""
    a = predict_slices(net, image, rt, channels_last=False)
    b = predict_slices(ort_net, image, rt, channels_last=False)
    return {"max_abs_logit_diff": float((a - b).abs().max()),
            "labels_differing": float((a.argmax(1) != b.argmax(1)).float().mean())}


def _export_fold(cfg: Config, folder: Path, fold: int, rt: Runtime, index: dict, say) -> dict:
    state = read_model_file(folder / f"fold{fold}.pt")
    classes, channels = state["classes"], LabelSpec.of(state["classes"]).channels
    size = int(state["preprocessing"]["image_size"])
    net, _ = build_model(channels, "none")
    net.load_state_dict(state["model"])
    net.eval()
    train, val, _ = fold_cases(cfg, fold)
    fp32, int8 = folder / f"fold{fold}.onnx", folder / f"fold{fold}.int8.onnx"
    t0 = time.perf_counter()
    export_onnx(net, fp32, size, f"fold{fold}.pt ({state.get('variant', '?')})")
    threads = cfg.train.threads
    ort32 = OrtNet(fp32, None, threads, channels)
    row = {"fold": fold, "files": {"fp32": {"file": fp32.name, "sha256": sha256_of(fp32)}},
           "parity": parity(net, ort32, np.load(Path(cfg.data.slices_dir) / val[0] / SLICE_IMAGE), rt)}
    row["fp32_bone_dice"] = validate(ort32, val, cfg, classes, rt, index)[0]["bone_dice"]
    try:
        batches = calibration_batches(cfg.data.slices_dir, train, cfg.infer.calibration_slices)
        quantize_int8(fp32, int8, batches)
        row["int8_bone_dice"] = validate(OrtNet(int8, None, threads, channels), val, cfg, classes, rt,
                                         index)[0]["bone_dice"]
        row["files"]["int8"] = {"file": int8.name, "sha256": sha256_of(int8)}
    except Exception as exc:  # the int8 model is optional: fp32 stays usable
        int8.unlink(missing_ok=True)
        row["int8_error"] = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
    row["calibration"] = train  # the case ids (pseudonymous); never a validation or test case
    row["seconds"] = round(time.perf_counter() - t0, 1)
    say(f"fold{fold}: ONNX fp32 max |logit diff| {row['parity']['max_abs_logit_diff']:.2e}, bone Dice "
        f"{row['fp32_bone_dice']:.4f}; int8 {row.get('int8_bone_dice', float('nan')):.4f} "
        f"({row['seconds']} s)")
    return row


def int8_check(rows: list[dict], max_loss: float) -> dict:
    """The int8 verdict over the folds: offered when every fold has an int8 model and the
    fold mean bone Dice loses at most `max_loss` against fp32."""
    errors = [f"fold{r['fold']}: {r['int8_error']}" for r in rows if "int8_error" in r]
    folds = {str(r["fold"]): {"fp32_bone_dice": r["fp32_bone_dice"],
                              "int8_bone_dice": r.get("int8_bone_dice"),
                              "diff": r["int8_bone_dice"] - r["fp32_bone_dice"] if "int8_error" not in r
                              else None} for r in rows}
    if errors:
        return {"offered": False, "folds": folds, "why": "int8 quantization failed: " + "; ".join(errors)}
    loss = float(np.mean([r["fp32_bone_dice"] for r in rows]) - np.mean([r["int8_bone_dice"] for r in rows]))
    out = {"folds": folds, "mean_bone_dice_loss": round(loss, 6), "max_loss": max_loss}
    if not np.isfinite(loss):
        return {**out, "offered": False,
                "why": "the validation bone Dice is undefined (no bone in the cases)"}
    if loss > max_loss:
        return {**out, "offered": False, "why": f"int8 loses {loss:.4f} fold-mean bone Dice against fp32, "
                                                f"more than infer.int8_max_dice_loss {max_loss}"}
    return {**out, "offered": True, "why": ""}


def export_fold_models(cfg: Config, folder: Path, folds: list[int],
                       say: Callable[[str], None] = print) -> dict:
    """fold<k>.pt in `folder` -> fold<k>.onnx (+ .int8.onnx when it passes) beside them;
    returns the manifest's "onnx" section ({"error": ...} when the export failed: then no
    ONNX file is left and segment uses PyTorch)."""
    rt = Runtime.on("cpu", cfg.train.model_copy(update={"amp": "off"}), training=False)
    index = load_index(cfg.data.slices_dir)
    try:
        rows = [_export_fold(cfg, folder, k, rt, index, say) for k in folds]
    except DataError as exc:
        for p in folder.glob("fold*.onnx"):
            p.unlink()
        say(f"{exc}")
        return {"error": str(exc), "opset": OPSET}
    check = int8_check(rows, cfg.infer.int8_max_dice_loss)
    if not check["offered"]:
        for r in rows:
            (folder / f"fold{r['fold']}.int8.onnx").unlink(missing_ok=True)
            r["files"].pop("int8", None)
        say(f"int8 not offered: {check['why']}")
    return {"opset": OPSET, "onnxruntime": ort_version(), "int8": check,
            "files": {str(r["fold"]): r["files"] for r in rows},
            "parity": {str(r["fold"]): r["parity"] for r in rows},
            "calibration": {str(r["fold"]): r["calibration"] for r in rows},
            "seconds": round(sum(r["seconds"] for r in rows), 1)}
