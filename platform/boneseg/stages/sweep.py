"""`boneseg sweep`: the variants x folds grid on Ray Tune, tracked in MLflow; the final
scores flow back into DVC (results/metrics.json, results/folds.csv, results/model)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from boneseg.core.config import Config


def add_parser(sub) -> None:
    p = sub.add_parser("sweep")
    p.add_argument("--address", help="an existing Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="require resuming an unfinished sweep")
    g.add_argument("--restart", action="store_true", help="start a new sweep even if one can be resumed")
    p.set_defaults(func=main)


def main(args: argparse.Namespace, cfg: Config) -> int:
    from boneseg.core.project import exclusive
    from boneseg.sweep.driver import run_sweep

    t0 = time.perf_counter()
    name = f"sweep-{cfg.tracking.experiment}-{cfg.experiment or 'params'}"
    mode = "resume" if args.resume else "restart" if args.restart else "auto"
    with exclusive(Path(cfg.sweep.metrics_file), name, f"a sweep of {cfg.experiment or 'params.yaml'}"):
        table = run_sweep(cfg, args.address, mode)
    print(f"\nsweep finished in {(time.perf_counter() - t0) / 60:.1f} min; final bone Dice per variant "
          "(mean over folds, the study's score):")
    for variant, s in table.items():
        print(f"  {variant:<18} {s['bone_dice_mean']:.4f} +- {s['bone_dice_std']:.4f}  "
              f"pooled {s['bone_dice_pooled']:.4f}  test {s['test_bone_dice']:.4f}")
    print(f"  -> {cfg.sweep.metrics_file}, {cfg.sweep.folds_file}, {cfg.sweep.curves_file}")
    return 0
