"""`boneseg preview`: a PNG montage of a case or CT (axial + coronal, labels), HU histograms."""
from __future__ import annotations

import argparse
from pathlib import Path

from boneseg.core.config import Config
from boneseg.errors import DataError


def add_parser(sub) -> None:
    p = sub.add_parser("preview")
    p.add_argument("case", metavar="CASE_OR_FILE", help="a case id (e.g. abd000) or a CT .nii/.nii.gz")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--labels", help="label map to overlay (default: derived labels, else truth)")
    p.add_argument("--histogram", metavar="PNG", help="also write the HU histogram of each label class")
    p.set_defaults(func=main)


def main(args: argparse.Namespace, cfg: Config) -> int:
    from boneseg.core.imaging.nifti import load_ct, load_labels
    from boneseg.core.reporting.preview import histogram, preview_inputs, render

    ct_path, lab_path = preview_inputs(args.case, cfg)
    if args.labels:
        lab_path = Path(args.labels)
    ct = load_ct(ct_path)
    labels = load_labels(lab_path, ct, ct_path) if lab_path else None
    title = args.case if not Path(args.case).is_file() else Path(args.case).name
    render(ct, labels, Path(args.out), title)
    if args.histogram:
        if labels is None:
            raise DataError(f"{args.case}: --histogram needs a label map (none found; pass --labels).")
        histogram(ct, labels, Path(args.histogram), f"{title}: HU per class")
    print(f"preview: wrote {args.out}")
    return 0
