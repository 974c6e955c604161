"""How fast `boneseg segment` labels a 512x512x100 CT on this machine, per backend.

Times the whole command path (read + validate the NIfTI, reorient, window, resample,
2.5-D inference, softmax averaging, resample back, argmax, write) for one fold model and
for the 4-fold ensemble, at the quick profile's slice size and at the study's 320, side by
side on three backends: PyTorch fp32 (the baseline), ONNX Runtime fp32 and ONNX Runtime
int8 (static QDQ, calibrated here on the CT's own slices: speed only). A second ensemble
order is timed too: every batch through all fold models before the next batch
(batch-major) against segment's model-major order. Weights are random (speed does not
depend on them; the int8 Dice cost comes from the sweep's check on trained models).

    python bench/segment_speed.py [--sizes 160,320] [--folds 4] [--slices 100] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from boneseg.core.config import Config
from boneseg.core.data.preprocess import stack_25d, window_planes
from boneseg.core.imaging.nifti import Volume, save_volume
from boneseg.core.inference.folder import segment_files
from boneseg.core.inference.onnxrt import export_onnx, quantize_int8, sha256_of
from boneseg.core.inference.predict import (
    ModelRequest,
    find_checkpoints,
    inference_setup,
    predict_slices,
)
from boneseg.core.networks.models import build_model


def make_ct(path: Path, n_slices: int) -> None:
    rng = np.random.default_rng(0)
    x, y = np.meshgrid(np.arange(512), np.arange(512), indexing="ij")
    body = ((x - 256) / 200) ** 2 + ((y - 256) / 150) ** 2 < 1
    ct = np.where(body[..., None], 40.0, -1000.0) + rng.normal(0, 20, (512, 512, n_slices))
    ct[200:230, 300:330, :] = 900
    aff = np.diag([0.7, 0.7, 2.5, 1.0])
    save_volume(Volume(ct.astype(np.int16), aff), path)


def save_models(folder: Path, size: int, n: int, ct_path: Path) -> None:
    """n random fold models, each exported to ONNX fp32 and int8 beside it, with the
    manifest segment reads (int8 marked as checked: this bench measures speed only)."""
    from boneseg.core.imaging.nifti import load_ct

    folder.mkdir(parents=True, exist_ok=True)
    planes = window_planes(load_ct(ct_path).data.astype(np.float32), size, (-200.0, 1500.0))
    calib = stack_25d(planes, np.arange(0, planes.shape[0], max(1, planes.shape[0] // 32)))
    files = {}
    for k in range(n):
        torch.manual_seed(k)
        net, _ = build_model(5, "none")
        export_onnx(net, folder / f"fold{k}.onnx", size, f"fold{k}")
        quantize_int8(folder / f"fold{k}.onnx", folder / f"fold{k}.int8.onnx",
                      (calib[i:i + 8] for i in range(0, len(calib), 8)))
        files[str(k)] = {p: {"file": f.name, "sha256": sha256_of(f)} for p, f in
                         (("fp32", folder / f"fold{k}.onnx"), ("int8", folder / f"fold{k}.int8.onnx"))}
        torch.save(
            {
                "model": net.state_dict(),
                "classes": "multi",
                "variant": "multi-random",
                "fold": k,
                "preprocessing": {"image_size": size, "window": [-200.0, 1500.0]},
                "weights": {"source": "none"},
            },
            folder / f"fold{k}.pt",
        )
    manifest = {"onnx": {"files": files, "int8": {"offered": True}}}
    (folder / "boneseg.json").write_text(json.dumps(manifest))


@torch.no_grad()
def order_seconds(cfg: Config, req: ModelRequest, planes: np.ndarray) -> dict:
    """The ensemble's forward passes in segment's model-major order against batch-major
    (each batch of slices through every fold model before the next batch)."""
    s = inference_setup(cfg, req)
    rt, models, batch = s.rt, s.models, s.tc.eval_batch_size
    x_all = stack_25d(planes)
    for m in models:  # each model's first pass (its memory allocation) outside both timings
        m.net(torch.from_numpy(x_all[:batch]))
    t0 = time.perf_counter()
    for m in models:
        predict_slices(m.net, planes, rt, batch, channels_last=False).softmax(1)
    model_major = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(0, len(x_all), batch):
        x = torch.from_numpy(x_all[i:i + batch])
        sum(m.net(x).softmax(1) for m in models)
    return {"model_major_s": round(model_major, 2), "batch_major_s": round(time.perf_counter() - t0, 2)}


@torch.no_grad()
def naive_seconds(ct_path: Path, size: int) -> float:
    """Baseline: the same model, one slice per forward pass, default memory format."""
    from boneseg.core.imaging.nifti import load_ct

    torch.manual_seed(0)
    net = build_model(5, "none")[0].eval()
    t0 = time.perf_counter()
    ct = load_ct(ct_path)
    planes = window_planes(ct.data.astype(np.float32), size, (-200.0, 1500.0))
    x = torch.from_numpy(stack_25d(planes))
    probs = torch.cat([net(x[i:i + 1]).softmax(1) for i in range(x.shape[0])])
    up = torch.nn.functional.interpolate(probs, size=ct.shape[:2], mode="bilinear", align_corners=False)
    up.argmax(1)
    return time.perf_counter() - t0


# (backend, precision, slices per forward pass); the first row is the baseline: PyTorch with
# the batch of 32 that segment used before infer.batch_size
BACKENDS = (("torch", "fp32", 32), ("torch", "fp32", 8), ("onnxruntime", "fp32", 8),
            ("onnxruntime", "int8", 8))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="160,320")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--slices", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_ct(tmp / "ct.nii.gz", args.slices)
        for size in (int(s) for s in args.sizes.split(",")):
            save_models(tmp / f"m{size}", size, args.folds, tmp / "ct.nii.gz")
            base = None
            for backend, precision, batch in BACKENDS:
                row = {"image_size": size, "slices": args.slices, "backend": backend, "precision": precision,
                       "batch": batch}
                cfg = Config.model_validate({"train": {"device": "cpu", "threads": args.threads},
                                             "infer": {"batch_size": batch}})
                for label, folds in (("one_model", [0]), ("ensemble", None)):
                    req = ModelRequest(find_checkpoints(tmp / f"m{size}"), folds, "cpu", backend=backend,
                                       precision=precision)
                    t0 = time.perf_counter()
                    segment_files(cfg, tmp / "ct.nii.gz", tmp / f"seg{size}.nii.gz", req, progress=False)
                    row[f"{label}_s"] = round(time.perf_counter() - t0, 2)
                base = base or row
                row["ensemble_vs_one"] = round(row["ensemble_s"] / row["one_model_s"], 2)
                row["speedup_one"] = round(base["one_model_s"] / row["one_model_s"], 2)
                row["speedup_ensemble"] = round(base["ensemble_s"] / row["ensemble_s"], 2)
                print(f"{size}x{size}, 512x512x{args.slices} CT, {args.threads} threads, {backend} "
                      f"{precision} batch {batch}: one fold model {row['one_model_s']:.1f} s "
                      f"(x{row['speedup_one']:.2f}), {args.folds}-fold ensemble {row['ensemble_s']:.1f} s "
                      f"(x{row['speedup_ensemble']:.2f} of baseline; x{row['ensemble_vs_one']:.2f} of one)",
                      flush=True)
                out.append(row)
            from boneseg.core.imaging.nifti import load_ct

            planes = window_planes(load_ct(tmp / "ct.nii.gz").data.astype(np.float32), size, (-200.0, 1500.0))
            req = ModelRequest(find_checkpoints(tmp / f"m{size}"), None, "cpu", backend="onnxruntime",
                               precision="fp32")
            order = {"image_size": size, "order": "onnxruntime fp32 ensemble forward passes",
                     **order_seconds(cfg, req, planes)}
            print(f"{size}x{size}: ensemble order, ONNX Runtime fp32 forward passes: model-major "
                  f"{order['model_major_s']:.1f} s, batch-major {order['batch_major_s']:.1f} s", flush=True)
            out.append(order)
            naive = round(naive_seconds(tmp / "ct.nii.gz", size), 2)
            print(f"{size}x{size}: naive one-slice PyTorch loop {naive:.1f} s "
                  f"(x{naive / base['one_model_s']:.2f} of segment's torch one model)", flush=True)
            out.append({"image_size": size, "naive_one_model_s": naive})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
