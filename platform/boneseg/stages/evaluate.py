"""`boneseg evaluate`: score label maps against ground truth, like nnU-Net's evaluate_folder.

Per case and per class: Dice (both empty: NaN, left out of means and counted), TP/FP/FN
voxels and volumes in ml, then means over cases; the same metric code as training.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from boneseg.core.config import Config
from boneseg.core.io import write_json


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate")
    p.add_argument("--pred", required=True, help="a label map or a folder of them")
    p.add_argument("--truth", required=True, help="the ground truth file or folder (matched by file name)")
    p.add_argument("--classes", default="all", choices=["all", "bone"],
                   help="bone: score bone only (single-class models' outputs)")
    p.add_argument("--json", help="also write the full result to this JSON file (default: none)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace, cfg: Config) -> int:
    from boneseg.core.evaluation.validate import evaluate_folder

    res = evaluate_folder(Path(args.pred), Path(args.truth), args.classes)
    for r in res["metric_per_case"]:
        print(f"{r['case']:<16} " + "  ".join(f"{k} {v:.4f}" for k, v in r["dice"].items()))
    print(f"{'mean':<16} " + "  ".join(f"{k} {v['dice']:.4f}" for k, v in res["mean"].items()))
    if args.json:
        write_json(args.json, res)
    return 0
