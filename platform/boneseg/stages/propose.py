"""`boneseg propose`: the V-Net's abdominal bone proposals (`core.propose`), logged as the
MLflow run `propose` (settings, validation Dice on held-out thigh CTs, times).

`boneseg propose --model REF --input DIR [--out DIR]`: a trained U-Net's four-class
proposals for new CTs instead (`core.assist`; REF as `boneseg segment --model` takes it).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from boneseg.core.config import Config
from boneseg.errors import ConfigError


def add_parser(sub) -> None:
    p = sub.add_parser("propose",
                       help="train the V-Net on the thigh femur masks, propose abdominal bone masks; "
                            "with --model: a trained U-Net's four-class proposals for new CTs")
    p.add_argument("--model", help="model-assisted: models:/boneseg/<version>, an MLflow run id, or a "
                                   "model.pt / folder of fold models (results/model)")
    p.add_argument("--input", help="with --model: a data/raw-style folder (default data.raw_dir), a CT "
                                   ".nii/.nii.gz or a folder of them")
    p.add_argument("--out", help="with --model: the proposals' folder (default data.unet_proposals_dir)")
    p.add_argument("--folds", default="all", help="with --model: fold models to ensemble (all, or e.g. 0,1)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=main)


def main(args: argparse.Namespace, cfg: Config) -> int:
    if args.model:
        return assisted(args, cfg)
    if args.input or args.out:
        raise ConfigError("--input/--out go with --model (a trained U-Net's proposals). Without --model, "
                          "propose trains the V-Net on data.raw_dir and writes data.proposals_dir.")
    from boneseg.core.propose import SUMMARY, propose
    from boneseg.tracking.runs import log_stage_run, unreachable

    problem = unreachable(cfg)  # before minutes of training, and before anything is written
    if problem:
        raise ConfigError(f"MLflow: {problem}")
    s = propose(cfg)
    if s.get("skipped"):
        print(f"propose: {s['skipped']} in {cfg.data.raw_dir}, so no V-Net and no proposals; the labels "
              "start from threshold + fill. Add a thigh cohort to data.sources for the V-Net.")
        return 0
    print(f"propose: V-Net on {s['train_cases']} thigh CTs, {s['steps']} steps in {s['train_s']:.0f} s; "
          f"validation Dice {s['val_dice_mean']:.4f} on {s['val_cases']} held-out thigh CTs; "
          f"{len(s['infer_s'])} abdominal proposals in {cfg.data.proposals_dir} "
          f"({s['infer_s_mean']} s per CT); peak RSS {s['peak_rss_gib']} GiB")
    params = {"propose": cfg.propose.model_dump(), "experiment": cfg.experiment or "quick"}
    metrics = {k: s[k] for k in ("val_dice_mean", "train_s", "infer_s_mean", "peak_rss_gib")}
    rid = log_stage_run(cfg, "propose", params, metrics, Path(cfg.data.proposals_dir) / SUMMARY)
    print(f"propose: MLflow run {rid}")
    return 0


def assisted(args: argparse.Namespace, cfg: Config) -> int:
    from boneseg.core.assist import input_pairs, propose_cts
    from boneseg.core.inference import parse_folds
    from boneseg.tracking.registry import resolve_model
    from boneseg.tracking.runs import tracking_uri

    folds = parse_folds(args.folds)
    inp = Path(args.input or cfg.data.raw_dir)
    out = Path(args.out or cfg.data.unet_proposals_dir)
    input_pairs(inp, out)  # bad paths fail before any model is fetched
    checkpoints = resolve_model(args.model, tracking_uri(cfg), cfg.tracking.registered_model or "boneseg")
    res = propose_cts(cfg, inp, out, checkpoints, args.model, folds, args.device)
    for r in res:
        print(f"propose: {r['output']}  {'x'.join(map(str, r['shape']))}  ({r['seconds']:.1f} s)")
    print(f"propose: {len(res)} U-Net proposals in {out}; hand one to an annotator with "
          "`boneseg correct export CASE --proposal unet`")
    return 0
