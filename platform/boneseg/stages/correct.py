"""`boneseg correct`: the hand-correction round trip (`core.labelling.correct`).

    boneseg correct next [--n K] [--model REF]
    boneseg correct export [CASE] [--out DIR] [--proposal threshold|filled|vnet|unet]
    boneseg correct import CASE FILE
"""
from __future__ import annotations

import argparse

from boneseg.core.config import Config
from boneseg.core.vocabulary import ProposalSource
from boneseg.stages.common import add_model_options, checkpoints


def add_parser(sub) -> None:
    p = sub.add_parser("correct")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    n = actions.add_parser("next", help="rank the cases still to label by the fold models' disagreement")
    n.add_argument("--n", type=int, default=5, help="how many of the ranked cases to print")
    add_model_options(n, required=False)
    e = actions.add_parser("export", help="write a workspace (CT, starting labels, label files, README)")
    e.add_argument("case", nargs="?", help="a case id, e.g. abd000 (default: the top of the worklist that "
                                           "`boneseg correct next` wrote)")
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

    if args.action == "next":
        return rank_next(args, cfg)
    if args.action == "export":
        if args.case is None:
            from boneseg.core.labelling.worklist import next_case

            args.case = next_case(cfg)
            print(f"correct: the next case on the worklist is {args.case}")
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


def rank_next(args: argparse.Namespace, cfg: Config) -> int:
    from tqdm import tqdm

    from boneseg.core.inference.predict import ModelRequest
    from boneseg.core.labelling.ranking import rank
    from boneseg.core.labelling.worklist import to_label, write_worklist

    ref = args.model or cfg.sweep.model_dir
    req = ModelRequest(checkpoints(ref, cfg), args.folds, args.device, ref=ref, backend=args.backend,
                       precision=args.precision)  # a bad --model fails before the cases are scanned
    cases = to_label(cfg)
    if not cases:
        print(f"correct: every abdominal case in {cfg.data.raw_dir} has truth or a correction; nothing to "
              "rank")
        return 0
    with tqdm(total=len(cases), desc="ranking", unit="case") as bar:
        rows = rank(cfg, req, cases, bar)
    path = write_worklist(cfg, rows, ref)
    print(f"correct: {len(rows)} cases to label, most uncertain first (1 - mean pairwise Dice of the fold "
          f"models); worklist: {path}")
    for i, r in enumerate(rows[:max(args.n, 1)], start=1):
        print(f"  {i:>3}  {r['case']:<16} disagreement {r['disagreement']:.4f}  bone {r['bone_ml']} ml")
    print(f"then: boneseg correct export   (takes {rows[0]['case']}, the top one)")
    return 0
