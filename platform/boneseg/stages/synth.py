"""`boneseg synth`: write the synthetic CT cohort (abdominal + thigh CTs with ground truth)."""
from __future__ import annotations

import argparse
from pathlib import Path

from boneseg.core.config import Config, SynthConfig
from boneseg.core.synth import synthesize


def add_parser(sub) -> None:
    p = sub.add_parser("synth", help="write the synthetic CT cohort (abdominal + thigh CTs with truth)")
    p.add_argument("--out", help="output folder (default: data.raw_dir; in a DVC project the raw stage "
                                 "writes it: `dvc repro raw`)")
    p.add_argument("--seed", type=int)
    p.add_argument("--abdomen", type=int, help="number of abdominal CTs")
    p.add_argument("--thigh", type=int, help="number of thigh CTs")
    p.add_argument("--matrix", type=int, help="in-plane voxels per side")
    p.add_argument("--slices", type=int, help="nominal slices per CT")
    p.set_defaults(func=main)


def main(args: argparse.Namespace, cfg: Config) -> int:
    over = {k: getattr(args, k) for k in ("seed", "abdomen", "thigh", "matrix", "slices")
            if getattr(args, k) is not None}
    scfg = cfg.data.synth.model_copy(update=over)
    scfg = SynthConfig.model_validate(scfg.model_dump())  # re-validate CLI values
    out = Path(args.out or cfg.data.raw_dir)
    from boneseg.core.project import refuse_stage_output

    refuse_stage_output(out)
    dirs = synthesize(scfg, out)
    print(f"synth: wrote {len(dirs)} cases under {out} (seed {scfg.seed}, matrix {scfg.matrix})")
    return 0
