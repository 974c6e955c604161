"""`boneseg propose`: the V-Net's abdominal bone proposals (`core.labelling.vnet`), logged as the
MLflow run `propose` (settings, validation Dice on held-out thigh CTs, times). It runs
no U-Net code; a trained U-Net's proposals are `boneseg assist`."""
from __future__ import annotations

import argparse
from pathlib import Path

from boneseg.core.config import Config
from boneseg.errors import ConfigError
from boneseg.stages.pool import add_pool_options, case_pool


def add_parser(sub) -> None:
    p = sub.add_parser("propose")
    add_pool_options(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace, cfg: Config) -> int:
    from boneseg.core.labelling.vnet import SUMMARY, propose
    from boneseg.tracking.runs import log_stage_run, unreachable

    problem = unreachable(cfg)  # before minutes of training, and before anything is written
    if problem:
        raise ConfigError(f"MLflow: {problem}")
    pool = case_pool(cfg, args.address)
    s = propose(cfg, pool=pool)
    if s.get("skipped"):
        print(f"propose: {s['skipped']} in {cfg.data.raw_dir}, so no V-Net and no proposals; the labels "
              "start from threshold + fill. Add a thigh cohort to data.sources for the V-Net.")
        return 0
    print(f"propose: V-Net on {s['train_cases']} thigh CTs, {s['steps']} steps in {s['train_s']:.0f} s; "
          f"validation Dice {s['val_dice_mean']:.4f} on {s['val_cases']} held-out thigh CTs; "
          f"{len(s['infer_s'])} abdominal proposals in {cfg.data.proposals_dir} "
          f"({s['infer_s_mean']} s per CT, {pool.where}); peak RSS {s['peak_rss_gib']} GiB")
    params = {"propose": cfg.propose.model_dump(), "experiment": cfg.experiment or "quick"}
    metrics = {k: s[k] for k in ("val_dice_mean", "train_s", "infer_s_mean", "peak_rss_gib")}
    rid = log_stage_run(cfg, "propose", params, metrics, Path(cfg.data.proposals_dir) / SUMMARY)
    print(f"propose: MLflow run {rid}")
    return 0

