"""`boneseg import`: real CT (NIfTI, TotalSegmentator or DICOM series) under pseudonymous ids."""
from __future__ import annotations

import argparse
from pathlib import Path

from boneseg.core.config import Config
from boneseg.core.importing import DEFAULT_ID_MAP, import_cohort


def add_parser(sub) -> None:
    p = sub.add_parser(
        "import", help="import real CT (nifti, TotalSegmentator or DICOM series) under pseudonymous ids"
    )
    p.add_argument("--source", required=True, help="folder to import from")
    p.add_argument("--out", help="output folder (default: data.raw_dir)")
    p.add_argument("--layout", choices=("nifti", "totalsegmentator", "dicom"), default="nifti")
    p.add_argument("--cohort", choices=("abdomen", "thigh"), default="abdomen")
    p.add_argument("--skip-invalid", action="store_true", help="import the valid cases, list the others")
    p.add_argument("--id-map", default=DEFAULT_ID_MAP, help="local, git-ignored pseudonym map")
    p.set_defaults(func=main)


def main(args: argparse.Namespace, cfg: Config) -> int:
    out = Path(args.out or cfg.data.raw_dir)
    dirs, skipped = import_cohort(Path(args.source), out, args.layout, args.cohort, args.skip_invalid,
                                  Path(args.id_map))
    for line in skipped:
        print(f"import: skipped {line}")
    print(f"import: wrote {len(dirs)} cases under {out / args.cohort}, skipped {len(skipped)}")
    return 0
