"""Overhead of the sweep, measured side by side in one run (printed ratios, not asserted).

1. Training throughput of a trial inside the Ray Tune sweep vs a bare PyTorch loop over
   the same model, data, batch size, threads and number of steps. The bare loops run as
   many processes at once as the sweep packs trials, so both see the same contention.
   Goal: ratio >= 0.95.
2. The sweep's wall time vs the ideal packing of its trials on the available slots:
   ideal = max(longest trial, sum of trial times / slots). Goal: ratio <= 1.15.

    python bench/sweep_overhead.py --variants multi-random,single-random --folds 0,1 --epochs 2
Runs against the repository's data (dvc repro slices first), in a temporary MLflow store.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time

BARE = r"""
import json, sys, time, torch
from boneseg.core.config import load_config
from boneseg.core.engine.augment import random_crop
from boneseg.core.data.dataset import SliceDataset
from boneseg.core.networks.losses import segmentation_loss
from boneseg.core.networks.models import build_model
from boneseg.core.networks.runtime import seed_everything
from boneseg.core.data.dataset import make_loader
from boneseg.core.networks.optim import make_optim
cfg = load_config("params.yaml", overrides=json.loads(sys.argv[1]))
steps, threads = int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
seed_everything(0)
splits = json.load(open(cfg.data.splits_file))
ds = SliceDataset(cfg.data.slices_dir, splits["folds"][0]["train"], "multi")
model, _ = build_model(5, "none")
model = model.to(memory_format=torch.channels_last)
tc = cfg.train
opt, sched = make_optim(model, tc, len(make_loader(ds, tc, 0, 0)), tc.epochs)
model.train()
n, t0, done = 0, time.perf_counter(), 0
while done < steps:
    for x, y in make_loader(ds, tc, done, 0):
        if tc.patch_size:  # the same input size as the trials train on
            x, y = random_crop(x, y, tc.patch_size)
        x = x.contiguous(memory_format=torch.channels_last)
        loss = segmentation_loss(model(x), y, tc.loss, tc.ce_weight)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step(); sched.step()
        n += x.shape[0]; done += 1
        if done >= steps:
            break
print(json.dumps({"images_per_s": n / (time.perf_counter() - t0)}))
"""


def bare_loops(overrides: list[str], steps: int, threads: int, parallel: int) -> list[float]:
    import subprocess

    procs = [subprocess.Popen([sys.executable, "-c", BARE, json.dumps(overrides), str(steps), str(threads)],
                              stdout=subprocess.PIPE, text=True) for _ in range(parallel)]
    return [json.loads(p.communicate()[0].strip().splitlines()[-1])["images_per_s"] for p in procs]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="multi-random,single-random")
    ap.add_argument("--folds", default="0,1")
    ap.add_argument("--epochs", type=int, default=2)
    a = ap.parse_args()
    from boneseg.core.config import load_config
    from boneseg.sweep.driver import run_sweep

    slots = max(1, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [
            f"train.epochs={a.epochs}",
            f"sweep.variants=[{a.variants}]",
            f"sweep.folds=[{a.folds}]",
            f"sweep.storage_path={tmp}/ray",
            f"tracking.uri=sqlite:///{tmp}/m.db",
            "sweep.log_model=false",
            f"sweep.metrics_file={tmp}/metrics.json",
            f"sweep.folds_file={tmp}/folds.csv",
            f"sweep.curves_file={tmp}/curves.json",
            f"sweep.model_dir={tmp}/model",
            f"sweep.trials_dir={tmp}/trials",
        ]  # never the DVC outputs
        cfg = load_config("params.yaml", overrides=overrides)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        t0 = time.perf_counter()
        run_sweep(cfg)
        wall = time.perf_counter() - t0
        import mlflow

        c = mlflow.MlflowClient(cfg.tracking.uri)
        runs = c.search_runs([c.get_experiment_by_name("boneseg").experiment_id], "tags.level = 'fold'")
        durations = [(r.info.end_time - r.info.start_time) / 1000 for r in runs]
        sweep_ips = [m.value for r in runs for m in c.get_metric_history(r.info.run_id, "images_per_s")]
    # the same number of optimiser steps as one trial: epochs x batches per epoch
    from boneseg.core.data.dataset import SliceDataset

    splits = json.load(open(cfg.data.splits_file))
    n_batches = len(SliceDataset(cfg.data.slices_dir, splits["folds"][0]["train"])) // cfg.train.batch_size
    steps = a.epochs * n_batches
    threads = max(1, int(cfg.sweep.cpus_per_trial))
    parallel = max(1, int(slots // cfg.sweep.cpus_per_trial))
    bare = bare_loops([f"train.epochs={a.epochs}"], steps, threads, parallel)
    ideal = max(max(durations), sum(durations) / parallel)
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    print(
        f"sweep: {len(runs)} trials on {parallel} slots ({threads} thread(s) each), {steps} steps per trial"
    )
    print(f"  training throughput in the sweep: {mean(sweep_ips):.2f} img/s per trial (mean over epochs)")
    print(f"  bare PyTorch loop, {parallel} at once: {mean(bare):.2f} img/s per loop")
    print(f"  throughput ratio sweep / bare: {mean(sweep_ips) / mean(bare):.3f} (goal >= 0.95)")
    print(
        f"  sweep wall time {wall:.1f} s; trials {sum(durations):.1f} s in all, "
        f"longest {max(durations):.1f} s"
    )
    print(f"  wall time / ideal packing ({ideal:.1f} s): {wall / ideal:.3f} (goal <= 1.15)")


if __name__ == "__main__":
    mp.set_start_method("spawn", force=True)
    main()
