"""`boneseg sweep`: the variants x folds grid on Ray Tune, tracked in MLflow; the final
scores flow back into DVC (results/metrics.json, results/folds.csv, results/model)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from boneseg.core.config import Config
from boneseg.stages.common import add_ray_options


def add_parser(sub) -> None:
    p = sub.add_parser("sweep")
    add_ray_options(p, "sweep")
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
