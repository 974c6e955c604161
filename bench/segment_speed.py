"""How fast `boneseg segment` labels a 512x512x100 CT on this machine.

Times the whole command path (read + validate the NIfTI, reorient, window, resample,
2.5-D inference, softmax averaging, resample back, argmax, write) for one fold model and
for the 4-fold ensemble, at the quick profile's slice size and at the study's 320, and,
side by side, a naive baseline of the same model: one slice per forward pass, no
channels_last. Weights are random (speed does not depend on them).

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
from boneseg.core.inference.predict import ModelRequest, find_checkpoints, segment_files
from boneseg.core.networks.models import build_model


def make_ct(path: Path, n_slices: int) -> None:
    rng = np.random.default_rng(0)
    x, y = np.meshgrid(np.arange(512), np.arange(512), indexing="ij")
    body = ((x - 256) / 200) ** 2 + ((y - 256) / 150) ** 2 < 1
    ct = np.where(body[..., None], 40.0, -1000.0) + rng.normal(0, 20, (512, 512, n_slices))
    ct[200:230, 300:330, :] = 900
    aff = np.diag([0.7, 0.7, 2.5, 1.0])
    save_volume(Volume(ct.astype(np.int16), aff), path)


def save_models(folder: Path, size: int, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        torch.manual_seed(k)
        net, _ = build_model(5, "none")
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="160,320")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--slices", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    cfg = Config.model_validate({"train": {"device": "cpu", "threads": args.threads}})
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_ct(tmp / "ct.nii.gz", args.slices)
        for size in (int(s) for s in args.sizes.split(",")):
            save_models(tmp / f"m{size}", size, args.folds)
            row = {"image_size": size, "slices": args.slices}
            for label, folds in (("one_model", [0]), ("ensemble", None)):
                t0 = time.perf_counter()
                req = ModelRequest(find_checkpoints(tmp / f"m{size}"), folds, "cpu")
                segment_files(cfg, tmp / "ct.nii.gz", tmp / f"seg{size}.nii.gz", req, progress=False)
                row[f"{label}_s"] = round(time.perf_counter() - t0, 2)
            row["naive_one_model_s"] = round(naive_seconds(tmp / "ct.nii.gz", size), 2)
            row["slices_per_s_one_model"] = round(args.slices / row["one_model_s"], 2)
            row["slices_per_s_ensemble"] = round(args.slices / row["ensemble_s"], 2)
            row["ensemble_vs_one"] = round(row["ensemble_s"] / row["one_model_s"], 2)
            row["naive_vs_segment"] = round(row["naive_one_model_s"] / row["one_model_s"], 2)
            print(
                f"{size}x{size}, 512x512x{args.slices} CT, {args.threads} threads: one fold model "
                f"{row['one_model_s']:.1f} s ({row['slices_per_s_one_model']:.1f} slices/s); "
                f"{args.folds}-fold "
                f"ensemble {row['ensemble_s']:.1f} s ({row['slices_per_s_ensemble']:.1f} slices/s, "
                f"x{row['ensemble_vs_one']:.2f}); naive one-slice loop {row['naive_one_model_s']:.1f} s "
                f"(x{row['naive_vs_segment']:.2f} of segment)",
                flush=True,
            )
            out.append(row)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
