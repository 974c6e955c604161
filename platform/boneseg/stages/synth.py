"""`boneseg synth`: write the synthetic CT cohort (abdominal + thigh CTs with ground truth)."""
from __future__ import annotations

import argparse
from pathlib import Path

from boneseg.core.config import Config, SynthConfig, validated


def add_parser(sub) -> None:
    p = sub.add_parser("synth")
    p.add_argument("--out", help="output folder (default: data.raw_dir; in a DVC project the raw stage "
                                 "writes it: `dvc repro raw`)")
    p.add_argument("--seed", type=int, help="random seed of the cohort (default: data.synth.seed)")
    p.add_argument("--abdomen", type=int, help="number of abdominal CTs (default: data.synth.abdomen)")
    p.add_argument("--thigh", type=int, help="number of thigh CTs (default: data.synth.thigh)")
    p.add_argument("--matrix", type=int, help="in-plane voxels per side (default: data.synth.matrix)")
    p.add_argument("--slices", type=int, help="nominal slices per CT (default: data.synth.slices)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace, cfg: Config) -> int:
    from boneseg.core.data.synth import synthesize

    over = {k: getattr(args, k) for k in ("seed", "abdomen", "thigh", "matrix", "slices")
            if getattr(args, k) is not None}
    scfg = validated(SynthConfig, {**cfg.data.synth.model_dump(), **over},
                     "data.synth with the options given")
    out = Path(args.out or cfg.data.raw_dir)
    from boneseg.core.project import refuse_stage_output

    refuse_stage_output(out)
    dirs = synthesize(scfg, out)
    print(f"synth: wrote {len(dirs)} cases under {out} (seed {scfg.seed}, matrix {scfg.matrix})")
    return 0
