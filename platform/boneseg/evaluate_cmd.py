"""`boneseg evaluate`: score label maps against ground truth, like nnU-Net's evaluate_folder.

Per case and per class: Dice (the DESIGN.md policy: both empty NaN, left out of means
and counted), TP/FP/FN voxels and volumes in ml, then means over cases. The metric code
is `boneseg.evaluate.case_metrics`, the same the training and the sweep use.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from boneseg.config import Config
from boneseg.errors import DataError
from boneseg.evaluate import case_metrics
from boneseg.metrics import nanmean
from boneseg.nifti import LABEL_IDS, atomic_write_text, check_pair, load_labels


def _strip(name: str) -> str:
    return name.removesuffix(".gz").removesuffix(".nii")


def pair_files(pred: Path, truth: Path) -> list[tuple[str, Path, Path]]:
    """FILE + FILE, or DIR + DIR matched by file name (every prediction needs its truth)."""
    if pred.is_file() and truth.is_file():
        return [(_strip(pred.name), pred, truth)]
    if not (pred.is_dir() and truth.is_dir()):
        raise DataError(f"--pred {pred} / --truth {truth}: give two files or two folders that exist.")
    truths = {_strip(p.name): p for p in sorted(truth.glob("*.nii*"))}
    pairs = []
    for p in sorted(pred.glob("*.nii*")):
        key = _strip(p.name)
        if key not in truths:
            raise DataError(f"{p}: no ground truth {truth}/{key}.nii.gz. Add it or remove the prediction.")
        pairs.append((key, p, truths[key]))
    if not pairs:
        raise DataError(f"{pred}: no .nii/.nii.gz predictions found.")
    return pairs


def evaluate_folder(pred: Path, truth: Path, classes: str = "all") -> dict:
    """classes="bone": score bone only (for single-class predictions; ids 2-4 count as background)."""
    n = 2 if classes == "bone" else len(LABEL_IDS)
    rows = []
    for case, p, t in pair_files(Path(pred), Path(truth)):
        tv = load_labels(t)
        pv = load_labels(p)
        check_pair(tv, pv, t, p)
        rows.append({"case": case, **case_metrics(pv.data, tv.data, tv.spacing, n)})
    classes = [LABEL_IDS[k] for k in range(1, n)]
    mean = {c: {"dice": nanmean([r["dice"][c] for r in rows]),
                "n_nan": sum(r["dice"][c] != r["dice"][c] for r in rows)} for c in classes}
    return {"metric_per_case": rows, "mean": mean, "bone_dice": mean["bone"]["dice"], "n_cases": len(rows)}


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="Dice/TP/FP/FN/volumes of label maps vs ground truth (file or folder)")
    p.add_argument("--pred", required=True, help="a label map or a folder of them")
    p.add_argument("--truth", required=True, help="the ground truth file or folder (matched by file name)")
    p.add_argument("--classes", default="all", choices=["all", "bone"],
                   help="bone: score bone only (single-class models' outputs)")
    p.add_argument("--json", help="write the full result here")
    p.set_defaults(func=main)


def main(args: argparse.Namespace, cfg: Config) -> int:
    res = evaluate_folder(Path(args.pred), Path(args.truth), args.classes)
    for r in res["metric_per_case"]:
        print(f"{r['case']:<16} " + "  ".join(f"{k} {v:.4f}" for k, v in r["dice"].items()))
    print(f"{'mean':<16} " + "  ".join(f"{k} {v['dice']:.4f}" for k, v in res["mean"].items()))
    if args.json:
        atomic_write_text(args.json, json.dumps(res, indent=1, default=float) + "\n")
    return 0
