"""`boneseg correct`: the hand-correction round trip (`core.labelling.correct`).

    boneseg correct export CASE [--out DIR] [--proposal threshold|filled|vnet|unet]
    boneseg correct import CASE FILE
"""
from __future__ import annotations

import argparse

from boneseg.core.config import Config
from boneseg.core.vocabulary import ProposalSource


def add_parser(sub) -> None:
    p = sub.add_parser("correct")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    e = actions.add_parser("export", help="write a workspace (CT, starting labels, label files, README)")
    e.add_argument("case", help="a case id, e.g. abd000")
    e.add_argument("--out", help="the workspaces' folder (default: data.annotate_dir)")
    e.add_argument("--proposal", choices=[m.value for m in ProposalSource],
                   help="the starting map (default: labels.proposal; unet: `boneseg assist --model`)")
    e.add_argument("--force", action="store_true", help="replace an existing workspace (and any edits in it)")
    i = actions.add_parser("import", help="check an edited label map and store it as the case's correction")
    i.add_argument("case", help="a case id, e.g. abd000")
    i.add_argument("file", help="the edited label map (.nii.gz)")
    i.add_argument("--force", action="store_true", help="replace the case's existing correction")
    p.set_defaults(func=main)


def main(args: argparse.Namespace, cfg: Config) -> int:
    from boneseg.core.labelling.correct import export_case, import_correction

    if args.action == "export":
        folder, command = export_case(cfg, args.case, args.out, args.proposal, args.force)
        print(f"correct: workspace for {args.case} in {folder} (see its README.md); open it with")
        print(f"  {command}")
        print(f"then: boneseg correct import {args.case} <the saved segmentation>")
        return 0
    record = import_correction(cfg, args.case, args.file, args.force)
    e = record["effort"]
    print(f"correct: {args.case} stored in {cfg.data.corrections_dir} "
          f"(started from {record['started_from']}); effort: {e['voxels']} voxels, "
          f"{e['components']} regions, {e['slices']} axial slices")
    print("then: dvc repro (labels prefer the correction), and commit data/corrections")
    return 0
