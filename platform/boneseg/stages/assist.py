"""`boneseg assist --model REF [--input DIR] [--out DIR]`: a trained U-Net's four-class
proposals for new CTs (`core.labelling.assist`), to correct like the V-Net's
(`boneseg correct export CASE --proposal unet`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from boneseg.core.config import Config
from boneseg.stages.common import add_model_options, checkpoints
from boneseg.stages.pool import add_pool_options, case_pool


def add_parser(sub) -> None:
    p = sub.add_parser("assist")
    add_model_options(p, required=True)
    p.add_argument("--input", help="a data/raw-style folder, a CT .nii/.nii.gz or a folder of them "
                                   "(default: data.raw_dir)")
    p.add_argument("--out", help="the proposals' folder (default: data.unet_proposals_dir)")
    add_pool_options(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace, cfg: Config) -> int:
    from boneseg.core.inference.predict import ModelRequest
    from boneseg.core.labelling.assist import input_pairs, propose_cts

    inp = Path(args.input or cfg.data.raw_dir)
    out = Path(args.out or cfg.data.unet_proposals_dir)
    input_pairs(inp, out)  # bad paths fail before any model is fetched
    req = ModelRequest(checkpoints(args.model, cfg), args.folds, args.device, ref=args.model,
                       backend=args.backend, precision=args.precision, postprocess=args.postprocess)
    res = propose_cts(cfg, inp, out, req, case_pool(cfg, args.address))
    for r in res:
        print(f"assist: {r['output']}  {'x'.join(map(str, r['shape']))}  ({r['seconds']:.1f} s)")
    print(f"assist: {len(res)} U-Net proposals in {out}; hand one to an annotator with "
          "`boneseg correct export CASE --proposal unet`")
    return 0
