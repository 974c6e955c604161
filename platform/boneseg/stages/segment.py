"""`boneseg segment`: label maps for new CTs from trained fold models, ensembled.

--model takes a checkpoint file or folder (results/model), `models:/boneseg/<version>`
(or `@alias`), or an MLflow run id; `boneseg.tracking.registry` resolves it to files.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from boneseg.core.config import Config
from boneseg.core.inference import plan_outputs, segment_files
from boneseg.errors import ConfigError


def parse_folds(text: str) -> list[int] | None:
    if text == "all":
        return None
    try:
        return sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ConfigError(f"--folds {text!r}: expected 'all' or fold numbers like 0,1") from None


def add_parser(sub) -> None:
    p = sub.add_parser("segment", help="label maps for new CTs with trained fold models (ensembled)")
    p.add_argument("--input", required=True, help="a CT .nii/.nii.gz or a folder of them")
    p.add_argument("--output", required=True, help="the label map file, or a folder (one file per input)")
    p.add_argument("--model", required=True,
                   help="models:/boneseg/<version>, an MLflow run id, or a model.pt / folder of fold models")
    p.add_argument("--folds", default="all", help="fold models to ensemble: all (default) or e.g. 0,1")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--classes", default="all", choices=["all", "bone"], help="bone: keep bone (1) only")
    p.set_defaults(func=main)


def main(args: argparse.Namespace, cfg: Config) -> int:
    from boneseg.tracking.registry import resolve_model
    from boneseg.tracking.runs import tracking_uri

    folds = parse_folds(args.folds)
    plan_outputs(Path(args.input), Path(args.output))  # bad paths fail before any model is fetched
    checkpoints = resolve_model(args.model, tracking_uri(cfg), cfg.tracking.registered_model or "boneseg")
    res = segment_files(
        cfg, Path(args.input), Path(args.output), checkpoints, folds, args.device, args.classes
    )
    for r in res:
        print(f"segment: {r['output']}  {'x'.join(map(str, r['shape']))}  bone {r['bone_ml']} ml  "
              f"({r['seconds']:.1f} s)")
    print(json.dumps({"volumes": len(res), "seconds": round(sum(r["seconds"] for r in res), 2)}))
    return 0
