"""ASHA against the same random search without early stopping (`boneseg tune`).

Builds the smoke profile's data (synthetic CT, 64 px slices; 8 abdominal CTs of ~16
slices instead of 6 of ~12, so that a few epochs learn something) in a temporary folder, then
runs the same seeded random search twice on a local Ray, side by side: with ASHA
(`tune.scheduler: asha`, rungs on validated epochs) and without (`none`: every setting
trains all its epochs). Same space, seed, samples and folds. Reports each one's best
mean validation bone Dice, the trial-epochs each spent and their ratio.

    python bench/tune_asha.py [--samples 8] [--epochs 8] [--grace 2] [--rf 4] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from boneseg.core.config import Config, load_config
from boneseg.core.data.slices import build_slices
from boneseg.core.data.splits import write_splits
from boneseg.core.data.synth import synthesize
from boneseg.core.labelling.labels import derive_labels
from boneseg.sweep.search import run_search

ROOT = Path(__file__).resolve().parents[1]
SPACE = {"train.lr": {"loguniform": [1e-4, 3e-2]}, "train.weight_decay": {"loguniform": [1e-5, 1e-1]}}


def smoke_project(root: Path, epochs: int) -> Config:
    """The smoke profile's data under `root`, and its settings for a search."""
    smoke = load_config(ROOT / "params.yaml", "smoke")
    d = smoke.model_dump(mode="json")
    d["data"].update(raw_dir=str(root / "raw"), labels_dir=str(root / "labels"),
                     corrections_dir=str(root / "c"), proposals_dir=str(root / "p"),
                     splits_file=str(root / "splits.json"),
                     slices_dir=str(root / "slices"))
    d["data"]["synth"].update(abdomen=8, slices=16)
    d["labels"]["proposal"] = "filled"  # no V-Net: the search needs labels, not the labelling half
    d["train"].update(epochs=epochs, val_every=1, out_dir=str(root / "train"))
    d["sweep"].update(storage_path=str(root / "ray"), metrics_file=str(root / "metrics.json"))
    d["tracking"]["uri"] = f"sqlite:///{root / 'mlflow.db'}"
    cfg = Config.model_validate(d)
    synthesize(cfg.data.synth, cfg.data.raw_dir, progress=False)
    derive_labels(cfg, progress=False)
    write_splits(cfg)
    build_slices(cfg, progress=False)
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--grace", type=int, default=2)
    ap.add_argument("--rf", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="boneseg-bench-tune-") as tmp:
        os.chdir(tmp)
        base = smoke_project(Path(tmp), args.epochs)
        for scheduler in ("none", "asha"):
            d = base.model_dump(mode="json")
            d["search"] = SPACE
            d["tune"].update(num_samples=args.samples, seed=args.seed, scheduler=scheduler, folds=[0],
                             grace_epochs=args.grace, reduction_factor=args.rf,
                             variant="multi-random", overrides_dir=str(Path(tmp) / "experiments"))
            t0 = time.perf_counter()
            out = run_search(Config.model_validate(d), mode="restart")
            rows[scheduler] = {"best_val_bone_dice": round(out["best"]["val_bone_dice"], 4),
                               "trial_epochs": out["trial_epochs"],
                               "seconds": round(time.perf_counter() - t0, 1),
                               "best_setting": out["best"]["setting"]}
    a, n = rows["asha"], rows["none"]
    ratio = a["trial_epochs"] / n["trial_epochs"]
    gap = n["best_val_bone_dice"] - a["best_val_bone_dice"]
    print(f"{args.samples} settings, {args.epochs} epochs each at most (ASHA grace {args.grace}, reduction "
          f"factor {args.rf}), seed {args.seed}: no early stopping "
          f"best {n['best_val_bone_dice']:.4f} in {n['trial_epochs']} trial-epochs ({n['seconds']:.0f} s); "
          f"ASHA best {a['best_val_bone_dice']:.4f} in {a['trial_epochs']} ({a['seconds']:.0f} s): "
          f"x{ratio:.2f} of the epochs, {gap:+.4f} Dice below")
    print(json.dumps({"none": n, "asha": a, "epoch_ratio": round(ratio, 3), "dice_gap": round(gap, 4)}))


if __name__ == "__main__":
    main()
